"""Crash-safe training checkpoints: `output_dir/checkpoint-STEP`, rotation, and finding the one to resume.

A checkpoint is written by `accelerator.save_state` into `checkpoint-STEP.partial` and renamed when complete, so a
crash mid-save leaves only a `.partial` folder, which is never picked as "latest" and is removed by the next save.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_PARTIAL_SUFFIX = ".partial"


class CheckpointError(ValueError):
    """A checkpoint that was asked for cannot be resumed from."""


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [path for _, path in sorted(found)]


def checkpoint_step(path: str | Path) -> int:
    match = _CHECKPOINT.match(Path(path).name)
    if not match:
        raise CheckpointError(f"{path} is not a checkpoint folder; expected a name like checkpoint-500")
    return int(match.group(1))


def resolve_resume_checkpoint(resume_from: str, output_dir: str | Path) -> Path | None:
    """`latest` -> newest complete checkpoint in output_dir (None when there is none); else the given folder."""
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from)
    if not path.is_dir():
        available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise CheckpointError(
            f"--resume_from_checkpoint {resume_from}: no such folder; use 'latest' or one of: {available}"
        )
    checkpoint_step(path)
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int | None) -> Path:
    """Saves the full training state (call on every process; only the main one writes files)."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f"checkpoint-{step}{_PARTIAL_SUFFIX}"
    if accelerator.is_main_process:
        for stale in output_dir.glob(f"checkpoint-*{_PARTIAL_SUFFIX}"):
            shutil.rmtree(stale)
        if total_limit is not None:
            # Make room before writing, so that at most `total_limit` exist afterwards.
            existing = [p for p in list_checkpoints(output_dir) if p != final]
            for old in existing[: max(0, len(existing) - total_limit + 1)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final

"""Crash-safe training checkpoints: `output_dir/checkpoint-STEP`, rotation, and choosing the one to resume.

A save never leaves fewer complete checkpoints than there were before it, wherever it is killed:
  1. `accelerator.save_state` (with the EMA hook) writes into `checkpoint-STEP.partial`; checkpoint.json, written
     last and atomically, marks the folder complete;
  2. the folder is renamed to `checkpoint-STEP` (a same-named older one is first renamed aside);
  3. only then are the oldest checkpoints beyond `--checkpoints_total_limit` deleted, each renamed to `*.deleting`
     first, so a half-deleted folder never carries a checkpoint's name.
The next save or resume tidies what a kill left: a complete `.partial` is renamed into place, an incomplete one and
`*.deleting` folders are removed.

Resuming from "latest" takes the newest checkpoint whose every file reads back (training/checkpoint_files.py); one
that does not is skipped with the reason and the previous one is tried. A checkpoint of another run (model,
resolution, labels, EMA, prediction type) is refused, never skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from accelerate import Accelerator
from safetensors import SafetensorError

from training.checkpoint_files import (
    CHECKPOINT_INFO,
    CheckpointError,
    ForeignCheckpointError,
    load_weights_only,
    read_checkpoint_info,
    verify_checkpoint,
)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_PARTIAL_SUFFIX = ".partial"
_DELETING_SUFFIX = ".deleting"


def checkpoint_signature(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    """What checkpoint.json records about the run that writes it: the model config, resolution, labels, EMA and what
    the model predicts (weights trained for epsilon mean something else to a v-prediction run)."""
    config = {key: value for key, value in model.config.items() if not key.startswith("_") and key != "sample_size"}
    return {
        "model": str(args.model_config_name_or_path),
        "model_config": json.loads(json.dumps(config)),  # tuples as lists, as they read back
        "resolution": args.resolution,
        "num_labels": model.config.num_labels,
        "use_ema": bool(args.use_ema),
        "prediction_type": args.prediction_type,
    }


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders in `output_dir` (complete by name), oldest first."""
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


def tidy_checkpoints(output_dir: str | Path) -> None:
    """Finishes what a killed save left behind (call on the main process only; see the module docstring)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for leftover in sorted(output_dir.glob(f"checkpoint-*{_DELETING_SUFFIX}")):
        shutil.rmtree(leftover)
    for partial in sorted(output_dir.glob(f"checkpoint-*{_PARTIAL_SUFFIX}")):
        final = partial.with_name(partial.name.removesuffix(_PARTIAL_SUFFIX))
        if _is_complete(partial) and _CHECKPOINT.match(final.name):
            _swap_in(partial, final)
        else:
            shutil.rmtree(partial)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    total_limit: int | None,
    signature: Mapping[str, Any],
    *,
    max_train_steps: int | None = None,
) -> Path:
    """Saves the full training state as checkpoint-STEP (call on every process; only the main one writes files).
    checkpoint.json records the step, the run's `signature` and its `max_train_steps`, which a resumed
    --max_train_minutes run keeps."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = final.with_name(final.name + _PARTIAL_SUFFIX)
    try:
        if accelerator.is_main_process:
            tidy_checkpoints(output_dir)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            info = {"step": step, **signature, **({"max_train_steps": max_train_steps} if max_train_steps else {})}
            _write_json_atomically(partial / CHECKPOINT_INFO, info)
            _swap_in(partial, final)
    except (OSError, RuntimeError, SafetensorError) as error:  # torch.save reports a full disk as a RuntimeError
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        kept = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"saving {final} failed ({reason}); nothing of it was kept and the earlier checkpoints "
            f"are intact ({kept}): free disk space or fix the folder, then resume with --resume_from_checkpoint latest"
        ) from None
    if accelerator.is_main_process and total_limit is not None:
        _rotate(output_dir, total_limit, step)
    accelerator.wait_for_everyone()
    return final


def resolve_resume_checkpoint(
    resume_from: str,
    output_dir: str | Path,
    signature: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    process_index: int = 0,
    warn: Callable[[str], None] = print,
) -> Path | None:
    """The checkpoint to resume from, every file checked (`verify_checkpoint`); None for "latest" when output_dir
    holds no checkpoint. "latest" skips, with a warning, checkpoints that do not read back; raises
    `CheckpointError` when none does, or for a given folder that does not."""
    if resume_from != "latest":
        path = Path(resume_from)
        if not path.is_dir():
            available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
            raise CheckpointError(
                f"--resume_from_checkpoint {resume_from}: no such folder; use 'latest' or one of: {available}"
            )
        checkpoint_step(path)
        verify_checkpoint(path, signature, shapes, process_index)
        return path
    candidates = list_checkpoints(output_dir)[::-1]
    skipped = []
    for path in candidates:
        try:
            verify_checkpoint(path, signature, shapes, process_index)
        except ForeignCheckpointError:
            raise
        except CheckpointError as error:
            skipped.append((path, error))
            continue
        for newer, error in skipped:
            warn(f"warning: skipping {newer.name}, it cannot be resumed from: {error}")
        return path
    if candidates:
        reasons = " | ".join(str(error) for _, error in skipped)
        raise CheckpointError(f"no checkpoint in {output_dir} can be resumed from: {reasons}")
    return None


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> None:
    """Loads a checkpoint that `resolve_resume_checkpoint` chose: model, optimiser, LR schedule, RNG, EMA."""
    # Accelerate skips a random-state file it cannot read with a log line; here that is an error.
    load_weights_only(checkpoint / f"random_states_{accelerator.process_index}.pkl")
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - whatever a reader raises, this checkpoint cannot be resumed
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{checkpoint} could not be loaded: {first_line}") from None


def _is_complete(folder: Path) -> bool:
    try:
        return read_checkpoint_info(folder)["step"] == checkpoint_step(folder.name.removesuffix(_PARTIAL_SUFFIX))
    except CheckpointError:
        return False


def _swap_in(partial: Path, final: Path) -> None:
    """Renames a complete partial folder to its checkpoint name; a same-named folder is renamed aside first."""
    if final.exists():
        aside = final.with_name(final.name + _DELETING_SUFFIX)
        final.rename(aside)
        partial.rename(final)
        shutil.rmtree(aside)
    else:
        partial.rename(final)


def _rotate(output_dir: Path, total_limit: int, step: int) -> None:
    """Deletes the oldest checkpoints before `step` until at most `total_limit` remain (newer ones, from a run
    that was resumed earlier, are not deleted: they are overwritten when the run reaches their step)."""
    checkpoints = list_checkpoints(output_dir)
    older = [path for path in checkpoints if checkpoint_step(path) < step]
    for old in older[: max(0, len(checkpoints) - total_limit)]:
        aside = old.with_name(old.name + _DELETING_SUFFIX)
        old.rename(aside)
        shutil.rmtree(aside)


def _write_json_atomically(path: Path, value: Mapping[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)

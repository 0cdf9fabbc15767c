"""Running `accelerate launch train_conditional.py` from tests, and reading back what it logged to TensorBoard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO_ROOT


def launch_training(
    *args: str, mixed_precision: str = "no", dynamo_backend: str = "no", check: bool = True
) -> subprocess.CompletedProcess:
    """One single-process training launch; with `check`, a failure shows the end of its stderr."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--dynamo_backend", dynamo_backend, "--mixed_precision", mixed_precision,
               str(REPO_ROOT / "train_conditional.py"), *args]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def logged_scalars(output_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of one scalar from the run's TensorBoard event file."""
    (events,) = (output_dir / "logs" / "iclevr-ddpm").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}

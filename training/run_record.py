"""What a training run trained: steps, epochs, images seen and the data, recorded in training_args.json beside the
flags (the model card shows it: a flag such as --num_train_epochs 100 says little once --max_train_steps stops the
run), and the one summary line a run ends with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def trained_record(
    *, steps: int, updates_per_epoch: int, images_per_update: int, num_images: int, images_per_epoch: int,
    data: dict[str, Any],
) -> dict[str, Any]:
    """The run's optimiser steps, epochs and images seen (every epoch's last, short batch counted as it is) and its
    data (with its number of distinct images; an epoch shows `images_per_epoch`, more when some are repeated)."""
    full_epochs, steps_into_epoch = divmod(steps, updates_per_epoch)
    return {
        "steps": steps,
        "epochs": round(steps / updates_per_epoch, 2),
        "images_seen": full_epochs * images_per_epoch + steps_into_epoch * images_per_update,
        "data": {**data, "images": num_images},
    }


def duration(seconds: float) -> str:
    """`1 h 02 min`, `8 min 14 s` or `12.3 s`."""
    minutes, secs = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def summary_line(
    trained: dict[str, Any], *, launch_images: int, train_seconds: float, wall_seconds: float, output_dir: Path
) -> str:
    """One line for the end of a run; the throughput is this launch's, over its training steps (without validation
    and checkpoint saving), as the per-step `images_per_second` is."""
    rate = launch_images / train_seconds if train_seconds > 0 else 0.0
    return (
        f"Trained {trained['steps']} steps ({trained['epochs']:g} epochs, {trained['images_seen']:,} images) in "
        f"{duration(wall_seconds)} wall time, {rate:.1f} images/s while training; the pipeline is in {output_dir}"
    )

"""Experiment trackers (TensorBoard, W&B) behind Accelerate: run config and image logging with captions."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np
from accelerate import Accelerator
from PIL import Image


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """The full run config in the plain types every tracker accepts (TensorBoard's hparams refuse None and lists)."""
    config = {}
    for key, value in vars(args).items():
        if value is None:
            value = "none"
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        config[key] = value
    return config


def log_images(
    accelerator: Accelerator, key: str, images: Sequence[Image.Image], captions: Sequence[str], step: int
) -> None:
    """Sends images to every active tracker, each with its caption (e.g. its label list)."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({key: [wandb.Image(img, caption=cap) for img, cap in zip(images, captions)]}, step=step)
        elif tracker.name == "tensorboard":
            batch = np.stack([np.asarray(img.convert("RGB")) for img in images])
            tracker.writer.add_images(key, batch, step, dataformats="NHWC")
            tracker.writer.add_text(f"{key}/captions", "\n\n".join(f"{i}: {c}" for i, c in enumerate(captions)), step)
            tracker.writer.flush()

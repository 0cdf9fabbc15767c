"""Sampling during and after training: the pipeline built from the training model, EMA swaps, sample grids."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from pipeline import ICLEVRPipeline, LabelVocabulary
from training.samplers import default_scheduler

# Fixed label lists for the validation grid; the first is the course's denoising-process example.
VALIDATION_LABELS = (
    ("red sphere", "cyan cylinder", "cyan cube"),
    ("gray cube",),
    ("blue sphere",),
    ("yellow cylinder",),
    ("green cube", "purple sphere"),
    ("brown cylinder", "red cube"),
    ("cyan sphere", "blue cube", "yellow sphere"),
    ("purple cylinder", "gray sphere", "green cylinder"),
)


def validation_label_lists(vocabulary: LabelVocabulary) -> list[list[str]]:
    """The fixed validation lists, or (for a custom vocabulary that lacks them) its first labels one by one."""
    lists = [list(names) for names in VALIDATION_LABELS if all(name in vocabulary for name in names)]
    return lists or [[name] for name in vocabulary.labels[:8]]


def build_pipeline(
    model: torch.nn.Module, noise_scheduler: DDPMScheduler, vocabulary: LabelVocabulary
) -> ICLEVRPipeline:
    """The inference pipeline for a training model, saved with the default sampler (training/samplers.py)."""
    pipeline = ICLEVRPipeline(unet=model, scheduler=default_scheduler(noise_scheduler.config), labels=vocabulary.labels)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module) -> Iterator[None]:
    """Temporarily puts the EMA weights into `model` (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())

"""Guarding training against a run that has stopped learning: non-finite losses and gradients (skip the step,
warn, abort when it keeps happening), and a finite loss that jumps back up and stays there (abort).
"""

from __future__ import annotations

import math
from collections import deque

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from training.errors import UserError

logger = get_logger(__name__)

# fp16's GradScaler halves its scale at every overflow, so 10 skips in a row lower it 1024-fold: a run still
# overflowing after that (or any precision's run with a NaN loss that long) has diverged.
MAX_CONSECUTIVE_SKIPPED_STEPS = 10


# One step's loss swings several-fold with its drawn timesteps, so the guard watches the mean of this many steps.
LOSS_WINDOW = 100
# A healthy run's windowed loss never comes back to this many times its lowest; a collapsed one returns to its
# starting level, 20-50x its lowest (the README's --learning_rate 2e-3 run: 0.004 -> 0.2 within 10 steps).
COLLAPSE_RATIO = 10.0
# Steps in a row the windowed loss may stay that high before the run stops: a spike passes, a collapse does not.
COLLAPSE_PATIENCE = 200


class TrainingDivergedError(UserError, RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient."""


class TrainingCollapsedError(UserError, RuntimeError):
    """The loss went back up to many times its lowest and stayed there: the weights no longer fit the data."""


class NonFiniteGuard:
    """Skips optimiser steps whose gradient norm is not finite, warns, and aborts after too many in a row.

    A non-finite loss back-propagates into non-finite gradients, so the gradient norm covers both. The norm is
    taken from the all-reduced gradients, so every process makes the same decision. Under fp16 Accelerate's
    GradScaler skips such steps itself (and lowers its scale): the step is left to it and only counted here.
    A skipped step leaves the weights, the optimiser state, the LR schedule and the EMA as they were; it still
    counts as a step (its batches are consumed), so a resumed run stays aligned with the data.
    """

    def __init__(self, accelerator: Accelerator, limit: int = MAX_CONSECUTIVE_SKIPPED_STEPS):
        self.accelerator = accelerator
        self.limit = limit
        self.consecutive = 0

    def allows_step(self, grad_norm: torch.Tensor | None) -> bool:
        """Whether to call optimizer.step(): False only for a synchronised step with a non-finite gradient norm
        outside fp16 (None = a micro-batch whose gradients are still accumulating).
        """
        if grad_norm is None or self.accelerator.scaler is not None:
            return True
        return bool(torch.isfinite(grad_norm))

    def record(self, step: int, loss: float, grad_norm: torch.Tensor | None) -> bool:
        """After an optimiser step: whether it was skipped. Raises `TrainingDivergedError` at `limit` in a row."""
        norm = math.nan if grad_norm is None else float(grad_norm)
        skipped = self.accelerator.optimizer_step_was_skipped or (grad_norm is not None and not math.isfinite(norm))
        if not skipped:
            self.consecutive = 0
            return False
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise TrainingDivergedError(
                f"training diverged: {self.consecutive} optimiser steps in a row (up to step {step}) had a "
                f"non-finite loss or gradient (loss {loss}, gradient norm {norm}); lower --learning_rate (or, "
                "under fp16, switch to --mixed_precision bf16) and resume from an earlier checkpoint"
            )
        logger.warning(
            f"step {step}: non-finite loss or gradient (loss {loss}, gradient norm {norm}); skipped the optimiser "
            f"step ({self.consecutive} in a row, training stops at {self.limit})"
        )
        return True


class LossCollapseGuard:
    """Stops a run whose finite loss jumps back towards where training started and stays there.

    Such a run (a too-high learning rate can do it after thousands of good steps) never trips `NonFiniteGuard`,
    yet every later step is wasted. The guard keeps the mean loss of the last `window` steps and its lowest value;
    while the mean is `ratio` times that lowest or more the run is "collapsing": the training loop saves no
    checkpoint then (so `--resume_from_checkpoint latest` stays a good one), and after `patience` such steps in a
    row the guard raises `TrainingCollapsedError`. It reads the all-reduced loss, so every process decides alike;
    after a resume it starts afresh.
    """

    def __init__(self, window: int = LOSS_WINDOW, ratio: float = COLLAPSE_RATIO, patience: int = COLLAPSE_PATIENCE):
        self.window, self.ratio, self.patience = window, ratio, patience
        self.losses: deque[float] = deque(maxlen=window)
        self.lowest, self.lowest_step = math.inf, 0
        self.collapsing_since: int | None = None  # the first step of the current run of high windows

    def record(self, step: int, loss: float) -> bool:
        """After an optimiser step: whether the run is collapsing. Raises `TrainingCollapsedError` after
        `patience` collapsing steps in a row. Non-finite losses are `NonFiniteGuard`'s and are not counted."""
        if not math.isfinite(loss):
            return self.collapsing_since is not None
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return False
        mean = sum(self.losses) / self.window
        if mean < self.lowest:
            self.lowest, self.lowest_step = mean, step
        if mean < self.ratio * self.lowest:
            self.collapsing_since = None
            return False
        if self.collapsing_since is None:
            self.collapsing_since = step
            logger.warning(
                f"step {step}: the mean loss of the last {self.window} steps is {mean:.4g}, {mean / self.lowest:.0f}x "
                f"its lowest ({self.lowest:.4g} at step {self.lowest_step}); no checkpoint is saved until it comes "
                f"back down, and training stops if it stays up for {self.patience} steps"
            )
        if step - self.collapsing_since + 1 >= self.patience:
            # The loss went up at most a window before the windowed mean crossed the threshold.
            healthy_until = max(self.collapsing_since - self.window, 0)
            raise TrainingCollapsedError(
                f"training collapsed: the mean loss of the last {self.window} steps rose from {self.lowest:.4g} "
                f"(step {self.lowest_step}) to {mean:.4g} and stayed above {self.ratio:g}x that for {self.patience} "
                f"steps (steps {self.collapsing_since}-{step}; every loss finite); resume with a lower "
                f"--learning_rate from a checkpoint saved at or before step {healthy_until}"
            )
        return True

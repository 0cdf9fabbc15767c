"""Guarding training against non-finite losses and gradients: skip the step, warn, abort when it keeps happening."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from training.errors import UserError

logger = get_logger(__name__)

# fp16's GradScaler halves its scale at every overflow, so 10 skips in a row lower it 1024-fold: a run still
# overflowing after that (or any precision's run with a NaN loss that long) has diverged.
MAX_CONSECUTIVE_SKIPPED_STEPS = 10


class TrainingDivergedError(UserError, RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient."""


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

"""Generators derived from a position (seed, epoch, batch, rank, image index), never from a running global RNG."""

from __future__ import annotations

import numpy as np
import torch


def derived_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded from `keys` alone: the same keys give the same draws in any run or process."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))

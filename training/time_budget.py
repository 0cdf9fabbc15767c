"""`--max_train_minutes`: the optimiser steps that fit a training time on this machine, from timed steps.

The LR schedule needs its length before the first step, so a budgeted run times a few real optimiser steps first
(the model, optimiser, EMA, loss and every process's gradient exchange, as the loop runs them), then puts the whole
training state back as it was, with Accelerate's own checkpointing, RNG states included. The run that follows is
therefore the run `--max_train_steps N` would train, bit for bit on the same machine, with N recorded in
run_info.json and in every checkpoint (a resume keeps it instead of timing again).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

# The first steps run slower (kernel selection, allocator warm-up); they are run but not timed.
UNTIMED_STEPS = 5
TIMED_STEPS = 30
SNAPSHOT_FOLDER = "time-budget-snapshot"


def steps_for_minutes(minutes: float, steps_per_second: float) -> int:
    """How many optimiser steps fit `minutes` at `steps_per_second` (at least one)."""
    return max(1, math.floor(minutes * 60 * steps_per_second))


def timed_steps_per_second(
    accelerator: Accelerator, optimizer_step: Callable[[int], None], output_dir: str | Path
) -> float:
    """Optimiser steps per second of `optimizer_step(i)` (called UNTIMED_STEPS + TIMED_STEPS times on every
    process), with everything `accelerator.save_state` holds put back afterwards. Every process gets the main
    process's figure, so that all of them train the same number of steps."""
    snapshot = Path(output_dir) / SNAPSHOT_FOLDER
    if accelerator.is_main_process:
        shutil.rmtree(snapshot, ignore_errors=True)  # a killed run's leftover
    accelerator.wait_for_everyone()
    accelerator.save_state(str(snapshot))
    try:
        for index in tqdm(range(UNTIMED_STEPS + TIMED_STEPS), desc="timing steps for --max_train_minutes",
                          disable=not accelerator.is_local_main_process):  # fmt: skip
            if index == UNTIMED_STEPS:
                _finish_queued_work(accelerator.device)
                started = time.perf_counter()
            optimizer_step(index)
        _finish_queued_work(accelerator.device)
        measured = [TIMED_STEPS / (time.perf_counter() - started)]
        accelerator.wait_for_everyone()
        accelerator.load_state(str(snapshot))
        accelerator.wait_for_everyone()  # every process has read the snapshot before it goes
    finally:
        if accelerator.is_main_process:
            shutil.rmtree(snapshot, ignore_errors=True)
    return float(broadcast_object_list(measured)[0])


def _finish_queued_work(device: torch.device) -> None:
    """A GPU runs steps after Python has queued them; the clock must stop when they are done."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)

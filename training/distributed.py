"""Several processes: refusing a launch whose processes do not form one run, loading the data on the main process
first, and a cheap check that the processes trained as one run."""

from __future__ import annotations

import gc
import hashlib
import os
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from training.data import ICLEVRTrainingSet
from training.errors import UserError

CPU_LAUNCH = "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N train_conditional.py ..."


class LaunchError(UserError, RuntimeError):
    """The processes of a launch did not join one process group."""


def check_one_distributed_run(accelerator: Accelerator) -> None:
    """Raises `LaunchError` when the launcher started more processes than Accelerate sees.

    torchrun (and `accelerate launch --multi_gpu`) on a machine without GPUs starts N processes that Accelerate,
    unless told to use the CPU, treats as N single-process runs: each would train alone, call itself the main
    process and overwrite the others' checkpoints.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        raise LaunchError(
            f"{launched} processes were launched but Accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type.value}, device {accelerator.device.type}), so they would train as "
            f"separate runs; with no GPU, launch CPU processes that share one run with: {CPU_LAUNCH}"
        )


def main_process_first_with_revision(
    accelerator: Accelerator, load: Callable[[str | None], ICLEVRTrainingSet]
) -> ICLEVRTrainingSet:
    """`load(None)` on the main process first (it renders and caches; for a Hub data set it picks the commit), then
    `load(that commit)` on the others, so every process trains on the data the run records even if the data set's
    main branch moves meanwhile."""
    train_set = load(None) if accelerator.is_main_process else None
    # Also the barrier that keeps the others from reading the cache before the main process has written it.
    revision = broadcast_object_list([train_set.source.get("revision") if train_set is not None else None])[0]
    return train_set if train_set is not None else load(revision)


def end_distributed_run(accelerator: Accelerator) -> None:
    """Ends the trackers and the process group once no DDP wrapper is left (the caller drops its own references
    to the prepared model first).

    A DDP wrapper that outlives the group becomes the group's last owner, and its C++ teardown then ends the gloo
    group while holding the GIL: it waits for the group's worker threads, and a worker freeing a finished
    collective's tensors waits for the GIL, so the process hangs after its work is done (seen about once in ten
    two-process CPU runs; pytorch/pytorch#56297). Ended through torch.distributed, the group releases the GIL first.
    """
    accelerator.free_memory()
    gc.collect()  # a wrapper kept alive only by a reference cycle goes now, not at some later collection
    accelerator.end_training()


def parameter_checksum(model: torch.nn.Module) -> str:
    """A digest of the parameter values: equal on every process exactly when their weights are equal.

    Every process draws its own noise and timesteps, so after training their weights agree only if the
    gradients were averaged across them at every step.
    """
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

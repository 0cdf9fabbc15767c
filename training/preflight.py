"""What `train_conditional.py` checks before any heavy work (rendering, preprocessing, building the model, loading
data): every mistake that its flags alone reveal fails here, in one line, within seconds.

Read-only apart from tidying what a killed checkpoint save left in --output_dir (training/checkpointing.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from training.cli import FlagError, check_writable
from training.checkpointing import checkpoint_signature, resolve_resume_checkpoint, tidy_checkpoints
from training.data import load_condition_file, load_train_dataset, vocabulary_for
from training.ema_state import parameter_shapes
from training.evaluator import load_evaluator
from training.model_presets import create_model

REFERENCE_RESOLUTION = 64  # the course's resolution, which the presets are sized for
MAX_RESOLUTION = 320  # the i-CLEVR images are 320x240: a larger side only upsamples them
# Per parameter in a checkpoint: the weights, AdamW's two moments and, with --use_ema, the EMA copy (fp32).
BYTES_PER_PARAMETER = 4


def check_before_training(args: argparse.Namespace, accelerator: Accelerator) -> Path | None:
    """Runs every early check (call on every process); returns the checkpoint to resume from, already verified."""
    warn = _printer(accelerator.is_main_process)
    check_resolution(args.resolution, warn)
    vocabulary = vocabulary_for(args.train_data_dir)  # objects.json, if the folder has one
    with torch.device("meta"):  # the architecture and its size, without allocating the weights
        model = create_model(args.model_config_name_or_path, sample_size=args.resolution, num_labels=len(vocabulary),
                             label_embedding_norm=args.label_embedding_norm,
                             zero_init_residual=args.zero_init_residual)
    check_output_dir(Path(args.output_dir), _bytes_to_save(model, args.use_ema))
    if args.train_data_dir is not None:
        load_train_dataset(train_data_dir=args.train_data_dir)  # train.json, labels, every image present
    elif args.dataset_name is not None and Path(args.dataset_name).exists():  # a local folder: columns and labels
        load_train_dataset(dataset_name=args.dataset_name, image_column=args.image_column,
                           label_column=args.label_column)  # fmt: skip
    if args.evaluator_checkpoint is not None:
        load_evaluator(args.evaluator_checkpoint)
        for path in args.evaluation_conditions or ():
            load_condition_file(path, vocabulary)
    if not args.resume_from_checkpoint:
        return None
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        tidy_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    checkpoint = resolve_resume_checkpoint(
        args.resume_from_checkpoint, output_dir, checkpoint_signature(args, model), parameter_shapes(model),
        process_index=accelerator.process_index, warn=warn,
    )  # fmt: skip
    if checkpoint is None:
        warn(f"No checkpoint in {output_dir} to resume from; starting a new run.")
    return checkpoint


def check_resolution(resolution: int, warn) -> None:
    """Refuses sides beyond the i-CLEVR images; warns about the memory and time of sides above 64."""
    factor = (resolution / REFERENCE_RESOLUTION) ** 2
    if resolution > MAX_RESOLUTION:
        raise FlagError(
            f"--resolution {resolution} is larger than the i-CLEVR images (320x240), so it would only upsample them, "
            f"at {factor:.0f}x the memory and time per image of 64x64; use 64 (or 32 on a CPU)"
        )
    if resolution > REFERENCE_RESOLUTION:
        warn(f"warning: --resolution {resolution} costs about {factor:.0f}x the activation memory and time per image "
             f"of 64x64, the resolution the presets are sized for; lower --train_batch_size if memory runs out")


def check_output_dir(output_dir: Path, bytes_needed: int) -> None:
    """The folder must take a file and have room for a checkpoint and the final pipeline. Creates nothing."""
    existing = check_writable(output_dir, "--output_dir")
    free = shutil.disk_usage(existing).free
    if free < bytes_needed:
        raise FlagError(
            f"--output_dir {output_dir}: {existing} has {_size(free)} free, but a checkpoint and the final pipeline of "
            f"this model take about {_size(bytes_needed)}; free some space or choose another folder"
        )


def _bytes_to_save(model: torch.nn.Module, use_ema: bool) -> int:
    parameters = sum(parameter.numel() for parameter in model.parameters())
    checkpoint = parameters * BYTES_PER_PARAMETER * (3 + int(use_ema))
    return checkpoint + parameters * BYTES_PER_PARAMETER  # + the pipeline saved at the end


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def _printer(enabled: bool):
    def warn(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return warn

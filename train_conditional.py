#!/usr/bin/env python
"""Train a multi-label class-conditional DDPM on i-CLEVR with Accelerate.

    accelerate launch train_conditional.py --model_config_name_or_path cpu --use_ema --mixed_precision bf16
    accelerate launch --config_file accelerate_config.yaml train_conditional.py --model_config_name_or_path gpu ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train_conditional.py ...  # 2 CPU processes

Data (built-in synthetic i-CLEVR by default) -> conditional UNet -> the diffusion loss (v-prediction, Min-SNR
weighted, label dropout for guidance) -> EMA -> checkpoints, validation grids and evaluation -> an `ICLEVRPipeline`
saved to --output_dir. Read top to bottom: setup, the loop, the export; helpers live in training/.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.scheduler import AcceleratedScheduler
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from pipeline import ConditionalUNet2DModel
from training.args import parse_args
from training.checkpoint_files import read_checkpoint_info
from training.checkpointing import checkpoint_signature, checkpoint_step, load_checkpoint, save_checkpoint
from training.cpu_threads import CpuThreads
from training.data import ICLEVRTrainingSet, load_training_set
from training.distributed import (
    check_one_distributed_run,
    end_distributed_run,
    main_process_first_with_revision,
    parameter_checksum,
)
from training.ema_state import register_ema_checkpointing
from training.errors import one_line_errors
from training.figures import denoising_figure, image_grid
from training.hub import push_pipeline_to_hub
from training.model_presets import create_model
from training.objective import batch_generator, diffusion_loss, timestep_weights
from training.precision import (
    apply_memory_format,
    create_optimizer,
    enable_tf32,
    launch_device,
    training_mixed_precision,
)
from training.preflight import check_before_training
from training.run_record import summary_line, trained_record
from training.sampling import build_pipeline
from training.stability import LossCollapseGuard, NonFiniteGuard
from training.time_budget import TIMED_STEPS, steps_for_minutes, timed_steps_per_second
from training.tracking import init_trackers, log_images, log_pipeline_artifact, tracker_config
from training.training_evaluation import load_training_evaluation
from training.validation import Validation

logger = get_logger(__name__)


@dataclass
class TrainingRun:
    """What the setup builds for the loop and the export (the model, optimiser and loader as prepared)."""

    args: argparse.Namespace
    accelerator: Accelerator
    cpu_threads: CpuThreads
    train_set: ICLEVRTrainingSet
    train_dataloader: DataLoader
    model: torch.nn.Module
    noise_scheduler: DDPMScheduler
    timestep_probabilities: torch.Tensor | None
    ema: EMAModel | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: AcceleratedScheduler
    signature: dict[str, Any]  # recorded in every checkpoint; a resume must match it
    updates_per_epoch: int
    max_train_steps: int
    num_epochs: int
    images_per_update: int
    steps_per_second: float | None = None  # as timed for --max_train_minutes


def main(args: argparse.Namespace) -> None:
    accelerator, precision_warning = create_accelerator(args)
    check_one_distributed_run(accelerator)
    # Everything the flags alone reveal fails here, in one line, before any heavy work; and the checkpoint to resume.
    checkpoint = check_before_training(args, accelerator)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if precision_warning:
        logger.warning(precision_warning)
    set_seed(args.seed)
    tf32 = enable_tf32(accelerator.device)
    # On CPU: all cores while the machine is otherwise idle, fewer while other processes are busy.
    cpu_threads = CpuThreads(args.cpu_threads, device=accelerator.device)
    started = time.perf_counter()

    state = setup(args, accelerator, cpu_threads)
    if args.max_train_minutes is not None:
        fit_time_budget(state, checkpoint)
    global_step, first_epoch, skip_batches = resume(state, checkpoint)
    start_tracking(state, resumed_from=checkpoint, tf32=tf32)
    validation = Validation(
        accelerator, state.noise_scheduler, state.train_set.vocabulary, args.output_dir,
        num_inference_steps=args.validation_inference_steps, guidance_scale=args.validation_guidance_scale,
        seed=args.seed,
        # With --evaluator_checkpoint: the accuracy on the condition files, and the best pipeline in best/.
        evaluation=load_training_evaluation(args, state.train_set.vocabulary, accelerator),
    )  # fmt: skip
    launch_first_step = global_step
    global_step, train_seconds = train(state, validation, global_step, first_epoch, skip_batches)
    trained = export(state, validation, global_step)

    images_per_update = state.images_per_update
    # The DDP wrapper goes before the process group does (see end_distributed_run); nothing below needs it.
    del state
    end_distributed_run(accelerator)
    accelerator.print(summary_line(
        trained, launch_images=(global_step - launch_first_step) * images_per_update, train_seconds=train_seconds,
        wall_seconds=time.perf_counter() - started, output_dir=Path(args.output_dir),
    ))  # fmt: skip


# ---- setup --------------------------------------------------------------------------------------------------------


def create_accelerator(args: argparse.Namespace) -> tuple[Accelerator, str | None]:
    """The Accelerator, and the warning when the requested mixed precision cannot run on this device."""
    # Decided before the Accelerator exists: its mixed precision cannot change afterwards.
    mixed_precision, precision_warning = training_mixed_precision(args.mixed_precision, launch_device())
    if precision_warning:  # training_args.json and the model card then say what the run trained in
        args.mixed_precision = mixed_precision
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        # Per-epoch shuffles derived from the seed, so a resumed run sees the batches the first run would have.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Accelerate compiles the model last in prepare(), around the DDP wrapper; None keeps the launch config's.
        dynamo_backend="inductor" if args.torch_compile else None,
    )
    return accelerator, precision_warning


def setup(args: argparse.Namespace, accelerator: Accelerator, cpu_threads: CpuThreads) -> TrainingRun:
    """Data, model, noise schedule, EMA, optimiser and LR schedule, prepared for this launch."""
    train_set, train_dataloader = load_data(args, accelerator)
    model = create_model(
        args.model_config_name_or_path, sample_size=args.resolution, num_labels=len(train_set.vocabulary),
        label_embedding_norm=args.label_embedding_norm, zero_init_residual=args.zero_init_residual,
    )
    model = apply_memory_format(model, args.channels_last)
    signature = checkpoint_signature(args, model)
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
    )
    timestep_probabilities = timestep_weights(
        args.num_train_timesteps, args.timestep_bias_strategy, multiplier=args.timestep_bias_multiplier,
        portion=args.timestep_bias_portion, begin=args.timestep_bias_begin, end=args.timestep_bias_end,
    )
    ema = create_ema(args, model)
    optimizer = create_optimizer(model, args, accelerator.device)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)

    # The schedule's length, from the dataloader as sharded across processes (--max_train_minutes sets it later).
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    lr_scheduler = accelerator.prepare(create_lr_scheduler(args, accelerator, optimizer, max_train_steps))
    if ema is not None:
        ema.to(accelerator.device)
        register_ema_checkpointing(accelerator, ema)  # unet_ema/ in safetensors, never a pickle
    return TrainingRun(
        args=args, accelerator=accelerator, cpu_threads=cpu_threads, train_set=train_set,
        train_dataloader=train_dataloader, model=model, noise_scheduler=noise_scheduler,
        timestep_probabilities=timestep_probabilities, ema=ema, optimizer=optimizer, lr_scheduler=lr_scheduler,
        signature=signature, updates_per_epoch=updates_per_epoch, max_train_steps=max_train_steps,
        num_epochs=math.ceil(max_train_steps / updates_per_epoch),
        images_per_update=args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
    )  # fmt: skip


def load_data(args: argparse.Namespace, accelerator: Accelerator) -> tuple[ICLEVRTrainingSet, DataLoader]:
    """The training set and its (not yet prepared) loader."""
    # The main process renders / preprocesses into the cache first (and picks a Hub data set's commit), the others
    # then read the same data from the cache.
    train_set = main_process_first_with_revision(accelerator, lambda revision: load_training_set(
        train_data_dir=args.train_data_dir,
        dataset_name=args.dataset_name,
        image_column=args.image_column,
        label_column=args.label_column,
        resolution=args.resolution,
        random_flip=args.random_flip,
        flip_seed=args.seed,
        same_colour_repeats=args.same_colour_repeats,
        cache_dir=args.cache_dir,
        revision=revision,
    ))  # fmt: skip
    train_dataloader = DataLoader(
        train_set, batch_size=args.train_batch_size, shuffle=True, num_workers=args.dataloader_num_workers
    )
    return train_set, train_dataloader


def create_ema(args: argparse.Namespace, model: torch.nn.Module) -> EMAModel | None:
    """diffusers' EMA of the weights (with warm-up), or None without --use_ema."""
    if not args.use_ema:
        return None
    return EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=ConditionalUNet2DModel,
        model_config=model.config,
    )


def create_lr_scheduler(
    args: argparse.Namespace, accelerator: Accelerator, optimizer: torch.optim.Optimizer, max_train_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """diffusers' LR schedule over `max_train_steps` optimiser steps."""
    # A prepared LR scheduler is stepped once per process for every optimiser step, hence the factor.
    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )


def fit_time_budget(state: TrainingRun, checkpoint: Path | None) -> None:
    """--max_train_minutes: the step count the resumed checkpoint recorded, or the one that fits the minutes at the
    speed of timed steps (undone afterwards); the LR schedule and the loop are set to it."""
    args, accelerator = state.args, state.accelerator
    steps = read_checkpoint_info(checkpoint).get("max_train_steps") if checkpoint is not None else None
    if steps is None:
        batch = {name: value.to(accelerator.device) for name, value in
                 default_collate([state.train_set[i] for i in range(args.train_batch_size)]).items()}  # fmt: skip
        step_loss, guard = torch.zeros((), device=accelerator.device), NonFiniteGuard(accelerator)

        def optimizer_step(index: int) -> None:  # what one step of the loop runs, on one batch
            for micro_batch in range(args.gradient_accumulation_steps):
                accumulate(state, batch, 0, index * args.gradient_accumulation_steps + micro_batch, step_loss, guard)
            if state.ema is not None:
                state.ema.step(state.model.parameters())

        state.steps_per_second = timed_steps_per_second(accelerator, optimizer_step, args.output_dir)
        steps = steps_for_minutes(args.max_train_minutes, state.steps_per_second)
        logger.info(f"--max_train_minutes {args.max_train_minutes:g}: {state.steps_per_second:.2f} optimiser steps "
                    f"per second in {TIMED_STEPS} timed steps, so {steps} steps")
    state.max_train_steps = steps
    state.num_epochs = math.ceil(steps / state.updates_per_epoch)
    # Accelerate's checkpoints keep the prepared scheduler; only the schedule inside it changes.
    state.lr_scheduler.scheduler = create_lr_scheduler(args, accelerator, state.optimizer, steps)


def resume(state: TrainingRun, checkpoint: Path | None) -> tuple[int, int, int]:
    """Weights, optimiser, LR schedule, EMA and RNG from the checkpoint; returns (global step, its epoch, batches
    of that epoch already used), all zero without a checkpoint."""
    if checkpoint is None:
        return 0, 0, 0
    state.accelerator.print(f"Resuming from {checkpoint}")
    load_checkpoint(state.accelerator, checkpoint)
    global_step = checkpoint_step(checkpoint)
    first_epoch, updates_done = divmod(global_step, state.updates_per_epoch)
    return global_step, first_epoch, updates_done * state.args.gradient_accumulation_steps


def start_tracking(state: TrainingRun, *, resumed_from: Path | None, tf32: bool) -> None:
    """How this launch trains, as resolved from the flags and the launch: in output_dir/run_info.json, and over
    the flags of the same name in the tracker config."""
    args, accelerator = state.args, state.accelerator
    run_info = {
        "num_processes": accelerator.num_processes,
        "distributed_type": accelerator.distributed_type.value,
        "device": accelerator.device.type,
        "mixed_precision": accelerator.mixed_precision,
        "tf32": tf32,
        **state.cpu_threads.describe(),
        "fused_adamw": bool(state.optimizer.defaults["fused"]),
        "dynamo_backend": accelerator.state.dynamo_plugin.backend.value,
        "images_per_update": state.images_per_update,
        "updates_per_epoch": state.updates_per_epoch,
        "max_train_steps": state.max_train_steps,
        "num_train_epochs": state.num_epochs,
        **({"timed_steps_per_second": state.steps_per_second} if state.steps_per_second else {}),
    }
    init_trackers(accelerator, args, {**tracker_config(args), **run_info}, resumed_from=resumed_from)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "run_info.json").write_text(json.dumps(run_info, indent=2) + "\n")
    train_set = state.train_set
    logger.info(
        f"{train_set.num_images} images ({len(train_set)} per epoch), {len(train_set.vocabulary)} labels; "
        f"{state.max_train_steps} optimiser steps over {state.num_epochs} epochs; {state.images_per_update} images "
        f"per step ({accelerator.num_processes} process{'es' if accelerator.num_processes > 1 else ''} x "
        f"{args.train_batch_size} x {args.gradient_accumulation_steps} accumulation)"
    )


# ---- the loop -----------------------------------------------------------------------------------------------------


def train(
    state: TrainingRun, validation: Validation, global_step: int, first_epoch: int, skip_batches: int
) -> tuple[int, float]:
    """Optimiser steps from `global_step` to max_train_steps, with checkpoints and validation on their schedules;
    returns the last step and this launch's training seconds (without validation and checkpoint saving)."""
    args, accelerator = state.args, state.accelerator
    guard = NonFiniteGuard(accelerator)
    collapse_guard = LossCollapseGuard()
    progress = tqdm(
        total=state.max_train_steps, initial=global_step, desc="training", disable=not accelerator.is_local_main_process
    )
    step_loss = torch.zeros((), device=accelerator.device)
    train_seconds = 0.0
    tick = time.perf_counter()
    for epoch in range(first_epoch, state.num_epochs):
        if global_step >= state.max_train_steps:  # resumed from the last checkpoint
            break
        state.model.train()
        state.train_dataloader.set_epoch(epoch)
        state.train_set.set_epoch(epoch)
        skipped = skip_batches if epoch == first_epoch else 0
        batches = accelerator.skip_first_batches(state.train_dataloader, skipped) if skipped else state.train_dataloader
        for batch_index, batch in enumerate(batches, start=skipped):
            grad_norm = accumulate(state, batch, epoch, batch_index, step_loss, guard)
            if not accelerator.sync_gradients:
                continue

            # --- one optimiser step is done (or skipped: it warns, and aborts after too many in a row)
            global_step += 1
            threads = state.cpu_threads.update()
            mean_loss = accelerator.reduce(step_loss, "mean").item()
            step_loss.zero_()
            step_skipped = guard.record(global_step, mean_loss, grad_norm)
            if state.ema is not None and not step_skipped:
                state.ema.step(state.model.parameters())
            step_seconds = time.perf_counter() - tick
            train_seconds += step_seconds
            logs = {
                "loss": mean_loss, "lr": state.lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                "images_per_second": state.images_per_update / step_seconds, "train_minutes": train_seconds / 60,
                "epoch": epoch, "cpu_threads": threads,
            }  # fmt: skip
            accelerator.log(logs, step=global_step)
            collapsing = collapse_guard.record(global_step, mean_loss)  # stops the run if it stays collapsed
            progress.update(1)
            progress.set_postfix(
                loss=f"{mean_loss:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['images_per_second']:.0f}"
            )

            # Not while steps are skipped or the loss is collapsing: the weights may be broken, and the checkpoint
            # would become "latest".
            if global_step % args.checkpointing_steps == 0 and not (step_skipped or collapsing):
                save_checkpoint(
                    accelerator, args.output_dir, global_step, args.checkpoints_total_limit, state.signature,
                    max_train_steps=state.max_train_steps,
                )
            if global_step % args.validation_steps == 0 or global_step == state.max_train_steps:
                validation(state.model, state.ema, global_step)  # and at the end: the final weights are scored too
            tick = time.perf_counter()  # saving and validation are not training time
            if global_step >= state.max_train_steps:
                break
    progress.close()
    return global_step, train_seconds


def accumulate(
    state: TrainingRun, batch: dict[str, torch.Tensor], epoch: int, batch_index: int, step_loss: torch.Tensor,
    guard: NonFiniteGuard,
) -> torch.Tensor | None:
    """One batch's loss and backward pass into `step_loss`; on the batch that completes an accumulation, the clipped
    optimiser step (skipped if the loss or gradient is not finite). Returns the gradient norm on that batch."""
    args, accelerator = state.args, state.accelerator
    generator = batch_generator(args.seed, epoch, batch_index, accelerator.process_index, accelerator.device)
    with accelerator.accumulate(state.model):
        loss = diffusion_loss(
            state.model,
            state.noise_scheduler,
            batch["pixel_values"],
            batch["class_labels"],
            label_dropout=args.label_dropout,
            generator=generator,
            snr_gamma=args.snr_gamma,
            snr_offset=args.snr_offset,
            timestep_probabilities=state.timestep_probabilities,
        )
        step_loss += loss.detach() / args.gradient_accumulation_steps
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(state.model.parameters(), args.max_grad_norm)
        if guard.allows_step(grad_norm):  # not with a non-finite loss or gradient
            state.optimizer.step()
            state.lr_scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    return grad_norm


# ---- export -------------------------------------------------------------------------------------------------------


def export(state: TrainingRun, validation: Validation, global_step: int) -> dict[str, Any]:
    """The pipeline with the EMA weights, training_args.json, a final sample grid and the denoising process in
    output_dir (then the W&B artifact and the Hub push when asked); returns what the run trained."""
    args, accelerator = state.args, state.accelerator
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()
    final_model = accelerator.unwrap_model(state.model, keep_torch_compile=False)
    # Equal on every process only if the gradients were averaged across them: one distributed state.
    logger.info(
        f"process {accelerator.process_index} of {accelerator.num_processes}: parameter checksum "
        f"{parameter_checksum(final_model)}",
        main_process_only=False,
    )
    if state.ema is not None:
        state.ema.copy_to(final_model.parameters())
    pipeline = build_pipeline(final_model.eval(), state.noise_scheduler, state.train_set.vocabulary)
    trained = trained_record(steps=global_step, updates_per_epoch=state.updates_per_epoch,
                             images_per_update=state.images_per_update, num_images=state.train_set.num_images,
                             images_per_epoch=len(state.train_set), data=state.train_set.source)  # fmt: skip
    with accelerator.autocast():
        final_images = validation.images_at(global_step, pipeline)  # the final validation's grid, not drawn again
    if not accelerator.is_main_process:
        return trained
    pipeline.save_pretrained(output_dir)
    # The model card of a Hub push shows these settings, and what they trained.
    training_args = {**vars(args), "trained": trained}
    (output_dir / "training_args.json").write_text(json.dumps(training_args, indent=2, sort_keys=True))
    image_grid(final_images).save(output_dir / "samples.png")
    with accelerator.autocast():
        figure = denoising_figure(
            pipeline, validation.label_lists[0], num_inference_steps=args.validation_inference_steps,
            guidance_scale=args.validation_guidance_scale, seed=args.seed,
        )
    figure.save(output_dir / "denoising_process.png")
    log_images(accelerator, "denoising_process", [figure], [validation.captions[0]], global_step)
    logger.info(f"Saved the pipeline, samples.png and denoising_process.png to {output_dir}")
    if args.log_pipeline_artifact:
        log_pipeline_artifact(accelerator, output_dir, global_step)
    if args.push_to_hub:
        commit = push_pipeline_to_hub(
            output_dir, args.hub_model_id, private=args.hub_private_repo, revision=args.hub_revision
        )
        logger.info(f"Pushed to the Hub: {commit.commit_url}")
    return trained


def run(argv: Sequence[str] | None = None) -> None:
    """The command line: every mistake ends in one `error: ...` line and exit status 1, checked early if it can be."""
    with one_line_errors():
        main(parse_args(argv))


if __name__ == "__main__":
    run()

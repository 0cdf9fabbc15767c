"""Command-line flags of `train_conditional.py`, named after diffusers' training examples."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from diffusers.optimization import SchedulerType

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS
from training.cli import (
    ArgumentParser,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_float_or_none,
    positive_int,
    probability,
)
from training.cpu_threads import add_cpu_threads_argument
from training.hub import HubError, check_repo_id
from training.objective import DEFAULT_LABEL_DROPOUT, PREDICTION_TYPES, TIMESTEP_BIAS_STRATEGIES
from training.tracking import uses_wandb

REPORT_TO_CHOICES = ("tensorboard", "wandb", "all", "none")



def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Train a multi-label class-conditional DDPM on i-CLEVR with Accelerate.")

    data = parser.add_argument_group("data (default: the built-in synthetic i-CLEVR)")
    data.add_argument("--train_data_dir", type=str, default=None,
                      help="An i-CLEVR folder: train.json, objects.json and the images in iclevr/ or beside them.")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="A data set on the Hub or saved with `save_to_disk`, with an image and a label-list column.")
    data.add_argument("--image_column", type=str, default="image")
    data.add_argument("--label_column", type=str, default="labels")
    data.add_argument("--cache_dir", type=str, default=None,
                      help="Where renders and preprocessed data are cached (default: $ICLEVR_CACHE or ~/.cache).")
    data.add_argument("--resolution", type=int, default=64, help="Training image size (square; 64 or 32).")
    data.add_argument("--random_flip", action="store_true", help="Flip training images horizontally at random.")
    # 3: binding one colour to two shapes is what i-CLEVR models learn last; showing those ~11 % of images 3 times
    # raised new_test.json by ~5 points at every point of an hour-long run (benchmarks/bench_recipe.py).
    data.add_argument("--same_colour_repeats", type=positive_int, default=3,
                      help="Show each image with two objects of one colour this many times per epoch (1: once, like "
                           "every other image); a colour is a label's first word when it is one of i-CLEVR's eight.")
    data.add_argument("--train_batch_size", type=positive_int, default=32, help="Batch size per device.")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)

    model = parser.add_argument_group("model and diffusion")
    model.add_argument("--model_config_name_or_path", type=str, default="cpu",
                       help="A size preset (tiny, cpu, gpu) or a path to a model config JSON.")
    # A ten-minute run learns counting and labels sooner with 8, an hour-long one scores higher without (README).
    model.add_argument("--label_embedding_norm", type=positive_float, default=None,
                       help="Start each label's embedding (a column of the linear label projection) at this norm "
                            "instead of the model config's (the presets keep nn.Linear's, ~2.7 at the cpu preset).")
    model.add_argument("--zero_init_residual", action="store_true",
                       help="Start every ResNet block's last convolution, every attention output and the output "
                            "convolution at zero, as ADM does (or set the model config's zero_init_residual).")
    model.add_argument("--label_dropout", type=probability, default=DEFAULT_LABEL_DROPOUT,
                       help="Probability of training on the all-zero (unconditional) label vector, for guidance.")
    model.add_argument("--num_train_timesteps", type=positive_int, default=1000)
    model.add_argument("--beta_schedule", choices=("linear", "squaredcos_cap_v2"), default="squaredcos_cap_v2")
    # v-prediction with Min-SNR 5 learned the labels fastest of the objectives measured (benchmarks/bench_recipe.py).
    model.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="v_prediction",
                       help="What the UNet predicts: the noise (epsilon), the velocity v = alpha*noise - sigma*x0 "
                            "(v_prediction) or the image (sample); saved in the scheduler config for every sampler.")
    model.add_argument("--snr_gamma", type=positive_float_or_none, default=5.0,
                       help="Min-SNR loss weighting with this gamma (5.0, as in the paper); 'none': plain MSE.")
    # What offsets 0.1 (the README quick start passes it), 0.25, 0.5 and 1 do to a ten-minute run:
    # docs/object_counts.md, "Min-SNR with an offset" and "Offset 0.1 becomes the quick start's".
    model.add_argument("--snr_offset", type=non_negative_float, default=0.0,
                       help="Min-SNR weighs each timestep's x0 error min(SNR + this, gamma): 0 as in the paper, where "
                            "the noisiest steps weigh almost nothing; k gives them k times the plain v-prediction "
                            "loss's weight.")
    model.add_argument("--timestep_bias_strategy", choices=TIMESTEP_BIAS_STRATEGIES, default="none",
                       help="Draw some timesteps more often: 'later' the noisiest --timestep_bias_portion, "
                            "'earlier' the least noisy, 'range' [--timestep_bias_begin, --timestep_bias_end).")
    model.add_argument("--timestep_bias_multiplier", type=positive_float, default=1.0,
                       help="How much more often the biased timesteps are drawn (1.0: no bias).")
    model.add_argument("--timestep_bias_portion", type=fraction, default=0.25)
    model.add_argument("--timestep_bias_begin", type=non_negative_int, default=0)
    model.add_argument("--timestep_bias_end", type=positive_int, default=1000)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--max_train_steps", type=positive_int, default=None,
                       help="Total optimiser steps; overrides --num_train_epochs.")
    optim.add_argument("--max_train_minutes", type=positive_float, default=None,
                       help="Train for about this many minutes instead (validation and checkpoints not counted): the "
                            "step count that fits, from the speed of 30 timed steps on this machine (undone before "
                            "training), is in run_info.json; --max_train_steps with it trains the same weights.")
    optim.add_argument("--num_train_epochs", type=positive_int, default=100)
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    optim.add_argument("--learning_rate", type=positive_float, default=2e-4)
    optim.add_argument("--lr_scheduler", choices=[t.value for t in SchedulerType], default="cosine")
    optim.add_argument("--lr_warmup_steps", type=non_negative_int, default=500)
    optim.add_argument("--adam_beta1", type=probability, default=0.9)
    optim.add_argument("--adam_beta2", type=probability, default=0.999)
    optim.add_argument("--adam_weight_decay", type=non_negative_float, default=1e-2)
    optim.add_argument("--adam_epsilon", type=non_negative_float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=positive_float, default=1.0)
    optim.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                       help="Defaults to the Accelerate config's value. bf16 on Ampere+ GPUs and on CPUs with native "
                            "bfloat16 (AVX512-BF16 or AMX on x86, BF16 on Arm; elsewhere it would be 2-28x slower, "
                            "so it trains in fp32 with a warning); fp16 on older GPUs (with loss scaling; overflowing "
                            "steps are skipped).")
    optim.add_argument("--use_ema", action="store_true",
                       help="Keep an EMA of the weights; it is used for validation and the saved pipeline.")
    optim.add_argument("--ema_max_decay", type=probability, default=0.9999)
    optim.add_argument("--ema_inv_gamma", type=positive_float, default=1.0)
    optim.add_argument("--ema_power", type=positive_float, default=3 / 4)

    speed = parser.add_argument_group("speed (TF32 and fused AdamW are on by themselves on CUDA)")
    # Replaces accelerate's --num_cpu_threads_per_process, whose OMP_NUM_THREADS this script overrides.
    add_cpu_threads_argument(speed)
    speed.add_argument("--channels_last", action="store_true",
                       help="Keep conv weights in the channels_last (NHWC) layout, which tensor-core kernels prefer "
                            "under bf16/fp16 on CUDA; measure it with benchmarks/bench_training.py.")
    speed.add_argument("--torch_compile", action="store_true",
                       help="torch.compile the model (Accelerate's inductor dynamo backend, as with `accelerate "
                            "launch --dynamo_backend inductor`); the first steps are slow while it compiles.")

    run = parser.add_argument_group("checkpoints, validation, logging")
    run.add_argument("--output_dir", type=str, default="iclevr-ddpm",
                     help="Where the pipeline, checkpoints (checkpoint-STEP), grids and logs are written.")
    run.add_argument("--seed", type=non_negative_int, default=0)
    run.add_argument("--checkpointing_steps", type=positive_int, default=500)
    run.add_argument("--checkpoints_total_limit", type=positive_int, default=None,
                     help="Keep at most this many checkpoints; the oldest are deleted.")
    run.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help='"latest" or a path to a checkpoint-STEP folder.')
    run.add_argument("--validation_steps", type=positive_int, default=500,
                     help="Sample a grid of fixed label lists with the EMA weights every this many steps.")
    run.add_argument("--validation_inference_steps", type=positive_int, default=DEFAULT_INFERENCE_STEPS)
    run.add_argument("--validation_guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    run.add_argument("--evaluator_checkpoint", type=str, default=None,
                     help="An evaluator checkpoint (checkpoint.pth): at every validation, score the EMA model on the "
                          "evaluation conditions, log the accuracy and keep the best pipeline in output_dir/best.")
    run.add_argument("--evaluation_seeds", type=non_negative_int, nargs="+", default=None, metavar="SEED",
                     help="Seeds of the evaluation (one image per condition per seed; default: --seed).")
    run.add_argument("--evaluation_conditions", type=str, nargs="+", default=None, metavar="FILE",
                     help="Condition files to score (default: test.json and new_test.json of the training folder, "
                          "else of the built-in synthetic render).")
    run.add_argument("--report_to", choices=REPORT_TO_CHOICES, default="tensorboard",
                     help="W&B works offline too (WANDB_MODE=offline; upload later with `wandb sync`).")
    run.add_argument("--logging_dir", type=str, default="logs",
                     help="Tracker folder (TensorBoard events, W&B run files), relative to --output_dir.")
    run.add_argument("--tracker_project_name", type=str, default="iclevr-ddpm",
                     help="The W&B project, and the TensorBoard subfolder of --logging_dir.")
    run.add_argument("--tracker_run_name", type=str, default=None,
                     help="The W&B run's display name (default: one W&B makes up). A run resumed from a checkpoint "
                          "continues the W&B run that wrote it.")
    run.add_argument("--log_pipeline_artifact", action="store_true",
                     help="At the end, log the saved pipeline folder as a W&B artifact of type model.")

    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push_to_hub", action="store_true",
                     help="At the end, push the pipeline as a self-describing repo (code, weights, model card).")
    hub.add_argument("--hub_model_id", type=str, default=None, help="namespace/name of the model repo.")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the repo as private.")
    hub.add_argument("--hub_revision", type=str, default=None, help="Push to this branch instead of main.")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_train_steps and args.max_train_minutes:
        parser.error(f"give either --max_train_steps ({args.max_train_steps}) or --max_train_minutes "
                     f"({args.max_train_minutes:g}), not both: the minutes set the step count")
    if args.max_train_minutes is not None and math.isinf(args.max_train_minutes):
        parser.error("--max_train_minutes inf would never end; give a finite number of minutes, e.g. 60")
    if args.train_data_dir and args.dataset_name:
        parser.error("give either --train_data_dir or --dataset_name, not both")
    if args.resolution < 8 or args.resolution % 8:
        parser.error(f"--resolution must be a multiple of 8 and at least 8 (e.g. 64 or 32), got {args.resolution}")
    if args.push_to_hub:
        if not args.hub_model_id:
            parser.error("--push_to_hub needs --hub_model_id namespace/name, e.g. your-name/iclevr-ddpm")
        try:
            check_repo_id(args.hub_model_id)
        except HubError as error:
            parser.error(str(error))
    elif args.hub_model_id or args.hub_private_repo or args.hub_revision:
        parser.error("--hub_model_id, --hub_private_repo and --hub_revision take effect with --push_to_hub")
    if not uses_wandb(args.report_to):
        wandb_only = [flag for flag, value in (("--tracker_run_name", args.tracker_run_name),
                                               ("--log_pipeline_artifact", args.log_pipeline_artifact)) if value]
        if wandb_only:
            parser.error(f"{' and '.join(wandb_only)}: W&B only; add --report_to wandb (or all), "
                         f"not {args.report_to}")
    if args.snr_offset and args.snr_gamma is None:
        parser.error(f"--snr_offset {args.snr_offset} takes effect with a Min-SNR --snr_gamma (e.g. 5), not 'none'")
    if args.snr_offset and args.prediction_type == "epsilon":
        parser.error(f"--snr_offset {args.snr_offset} needs --prediction_type v_prediction or sample: with epsilon "
                     f"the noisiest steps would weigh up to offset/SNR (~4e8 x the offset at the last timestep)")
    if math.isinf(args.timestep_bias_multiplier):
        parser.error("--timestep_bias_multiplier inf would draw only the biased timesteps; give a finite number")
    if args.timestep_bias_strategy == "range" and not (
        0 <= args.timestep_bias_begin < args.timestep_bias_end <= args.num_train_timesteps
    ):
        parser.error(f"--timestep_bias_begin/--timestep_bias_end must satisfy 0 <= begin < end <= "
                     f"--num_train_timesteps ({args.num_train_timesteps}), got {args.timestep_bias_begin}, "
                     f"{args.timestep_bias_end}")
    if args.evaluation_seeds and not args.evaluator_checkpoint:
        parser.error("--evaluation_seeds needs --evaluator_checkpoint, the classifier that scores the images")
    if args.evaluation_conditions and not args.evaluator_checkpoint:
        parser.error("--evaluation_conditions needs --evaluator_checkpoint, the classifier that scores the images")
    return args

"""Training recipes compared at the same wall-clock budget: accuracy against training minutes, per variant.

    python benchmarks/bench_recipe.py --work_dir bench-recipe --evaluator_checkpoint evaluator/checkpoint.pth \
        --minutes 10 --variants epsilon v-prediction v-min-snr [--points 5] [--seeds 0 1 2]

Each variant is a set of `train_conditional.py` flags over a shared base (the `cpu` preset at 32x32, batch 32, bf16,
EMA; see BASE and VARIANTS). Its step budget is its own measured speed times --minutes: a short in-process
calibration of the variant's training step on this machine (so a slower architecture gets fewer steps, not more
time). The training runs through `accelerate launch` and scores its EMA weights --points times with the evaluator
(the in-training evaluation: the pipeline's default sampler, --seeds, ../shared/iclevr's test.json and
new_test.json), logging the accuracy against the minutes spent training (validation excluded). The last point is
the final weights. Variants run one after another, never two at once; each stage is cached under WORK/ (a finished
variant is read back, an interrupted one resumes from its latest checkpoint). Writes WORK/results.md (the table),
WORK/results.json and WORK/curves.png (accuracy against minutes).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.cli import positive_int

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ICLEVR = REPO_ROOT.parent / "shared" / "iclevr"
# Every setting a variant may change is explicit here, so the variants do not move when the script's defaults do.
BASE = {
    "model_config_name_or_path": "cpu", "resolution": 32, "train_batch_size": 32, "learning_rate": 5e-4,
    "lr_warmup_steps": 100, "mixed_precision": "bf16", "use_ema": True, "prediction_type": "v_prediction",
    "snr_gamma": 5.0, "timestep_bias_strategy": "none", "ema_max_decay": 0.9999, "same_colour_repeats": 1,
}  # fmt: skip
# Model config over the preset, also explicit: the study's starting point has plain additive time embeddings and
# nn.Linear's own initialisation of the label projection.
BASE_MODEL = {"resnet_time_scale_shift": "default", "label_embedding_norm": None}
# name -> flags over BASE (a value of True is a switch, None is "none"; "model" holds preset config overrides)
VARIANTS: dict[str, dict] = {
    "epsilon": {"prediction_type": "epsilon", "snr_gamma": None},
    "v-prediction": {"snr_gamma": None},
    "v-min-snr": {},
    "v-min-snr-adagn": {"model": {"resnet_time_scale_shift": "scale_shift"}},
    "v-min-snr-later": {"timestep_bias_strategy": "later", "timestep_bias_multiplier": 2.0},
    "v-min-snr-lr1e-3": {"learning_rate": 1e-3},
    "v-min-snr-adagn-lr1e-3": {"model": {"resnet_time_scale_shift": "scale_shift"}, "learning_rate": 1e-3},
    "v-min-snr-batch16": {"train_batch_size": 16},
    "v-min-snr-ema999": {"ema_max_decay": 0.999},
    # self-attention at 8x8 as well as 4x4: objects at 32x32 span a few 8x8 cells, so colour and shape of one object
    # can be bound across them there (new_test's weak point: two objects of one colour, different shapes)
    "v-min-snr-adagn-lr1e-3-attn8": {
        "model": {"resnet_time_scale_shift": "scale_shift",
                  "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
                  "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]},
        "learning_rate": 1e-3,
    },
    # the cpu preset with ~2.6x the parameters (5.8 M -> 14.9 M) where they are cheap, at 8x8 and 4x4: capacity for
    # binding colour to shape, at ~65 % of the base's step rate on 2 cores
    "v-min-snr-adagn-lr1e-3-wide": {
        "model": {"resnet_time_scale_shift": "scale_shift", "block_out_channels": [32, 64, 192, 256]},
        "learning_rate": 1e-3,
    },
    # each label's embedding starts at norm 8 instead of ~1.3, beside a timestep embedding that grows to 4-10:
    # the labels steer from the first step (README: Object counts)
    "v-min-snr-adagn-lr1e-3-labelnorm8": {
        "model": {"resnet_time_scale_shift": "scale_shift", "label_embedding_norm": 8.0}, "learning_rate": 1e-3,
    },
    # images with two objects of one colour (~11 % of i-CLEVR's) shown 3 times an epoch: binding one colour to two
    # shapes is what the hour-long base still gets wrong most (new_test's weakest labels)
    "v-min-snr-adagn-lr1e-3-samecolour3": {
        "model": {"resnet_time_scale_shift": "scale_shift"}, "learning_rate": 1e-3, "same_colour_repeats": 3,
    },
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True)
    parser.add_argument("--evaluator_checkpoint", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                        help=f"Variants to run, in order (default all: {', '.join(VARIANTS)}).")
    parser.add_argument("--minutes", type=float, default=10.0, help="Training minutes per variant.")
    parser.add_argument("--points", type=positive_int, default=5, help="Evaluations per run (the last at the end).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--validation_inference_steps", type=positive_int, default=25)
    parser.add_argument("--validation_guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--calibration_seconds", type=float, default=20.0)
    parser.add_argument("--cache_dir", default=None, help="The data cache (default: $ICLEVR_CACHE or ~/.cache).")
    parser.add_argument("--train_data_dir", default=None, help="Train on this i-CLEVR folder (default: built-in).")
    parser.add_argument("--model_config_name_or_path", default=None,
                        help=f"Over BASE's {BASE['model_config_name_or_path']!r}.")
    parser.add_argument("--resolution", type=positive_int, default=None, help=f"Over BASE's {BASE['resolution']}.")
    return parser


# ------------------------------------------------------------------------------------------------ variants


def base_flags(args: argparse.Namespace) -> dict:
    """BASE with the command line's overrides."""
    overrides = {key: getattr(args, key) for key in ("model_config_name_or_path", "resolution", "train_data_dir")}
    return {**BASE, **{key: value for key, value in overrides.items() if value is not None}}


def variant_flags(name: str, args: argparse.Namespace) -> dict:
    return {**base_flags(args), **{k: v for k, v in VARIANTS[name].items() if k != "model"}}


def model_config(name: str, args: argparse.Namespace) -> str:
    """The variant's --model_config_name_or_path: a JSON of the preset with BASE_MODEL and the variant's overrides."""
    from training.model_presets import PRESETS

    preset = base_flags(args)["model_config_name_or_path"]
    path = args.work_dir / "models" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**PRESETS[preset], **BASE_MODEL, **VARIANTS[name].get("model", {})}, indent=2) + "\n")
    return str(path)


def calibrate(name: str, args: argparse.Namespace) -> float:
    """Images/s of the variant's training step on this machine (model, objective, AdamW, precision as trained)."""
    from diffusers import DDPMScheduler

    from training.cpu_threads import CpuThreads
    from training.model_presets import create_model
    from training.objective import DEFAULT_LABEL_DROPOUT, diffusion_loss, timestep_weights
    from training.precision import training_mixed_precision

    flags = variant_flags(name, args)
    # as the variant's training will run: bf16 becomes fp32 on a CPU without native bfloat16
    bf16 = training_mixed_precision(flags["mixed_precision"], torch.device("cpu"))[0] == "bf16"
    policy = CpuThreads()
    model = create_model(model_config(name, args), sample_size=flags["resolution"])
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=flags["prediction_type"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch, size = flags["train_batch_size"], flags["resolution"]
    images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    labels = (torch.rand(batch, 24, generator=generator) < 0.1).float()
    probabilities = timestep_weights(1000, flags["timestep_bias_strategy"],
                                     multiplier=flags.get("timestep_bias_multiplier", 1.0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, scheduler, images, labels, label_dropout=DEFAULT_LABEL_DROPOUT,
                                  generator=generator, snr_gamma=flags["snr_gamma"],
                                  timestep_probabilities=probabilities)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        policy.update()

    for _ in range(3):
        step()
    # The median step: a burst of other work on the machine during calibration must not shrink the budget.
    durations, start = [], time.perf_counter()
    while time.perf_counter() - start < args.calibration_seconds:
        tick = time.perf_counter()
        step()
        durations.append(time.perf_counter() - tick)
    return batch / statistics.median(durations)


# ---------------------------------------------------------------------------------------------------- stages


def train(name: str, args: argparse.Namespace) -> Path:
    """The variant's training run (cached: a finished run is reused; an interrupted one resumes)."""
    output_dir = args.work_dir / "runs" / name
    plan_file = output_dir / "plan.json"
    if (output_dir / "model_index.json").is_file():
        return output_dir
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
    else:
        images_per_second = calibrate(name, args)
        flags = variant_flags(name, args)
        every = max(1, round(args.minutes * 60 * images_per_second / flags["train_batch_size"] / args.points))
        plan = {"variant": name, "images_per_second": images_per_second, "max_train_steps": every * args.points,
                "every": every, "minutes": args.minutes}  # fmt: skip
        output_dir.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(json.dumps(plan, indent=2) + "\n")
    print(f"[{name}] {plan['max_train_steps']} steps ({plan['images_per_second']:.1f} images/s calibrated)",
          file=sys.stderr, flush=True)
    flags = {**variant_flags(name, args), "model_config_name_or_path": model_config(name, args),
             "max_train_steps": plan["max_train_steps"], "validation_steps": plan["every"],
             "checkpointing_steps": plan["every"], "checkpoints_total_limit": 1, "output_dir": output_dir,
             "evaluator_checkpoint": args.evaluator_checkpoint, "evaluation_seeds": args.seeds,
             "evaluation_conditions": [SHARED_ICLEVR / "test.json", SHARED_ICLEVR / "new_test.json"],
             "validation_inference_steps": args.validation_inference_steps,
             "validation_guidance_scale": args.validation_guidance_scale}  # fmt: skip
    if args.cache_dir:
        flags["cache_dir"] = args.cache_dir
    if any(output_dir.glob("checkpoint-*")):
        flags["resume_from_checkpoint"] = "latest"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "train_conditional.py")]
    for key, value in flags.items():
        if value is True:
            command.append(f"--{key}")
        elif value is None:
            command += [f"--{key}", "none"]
        elif isinstance(value, list):
            command += [f"--{key}", *map(str, value)]
        else:
            command += [f"--{key}", str(value)]
    log = output_dir / "train.log"
    with log.open("a") as stream:
        if subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO_ROOT).returncode:
            raise SystemExit(f"error: the {name} run failed; see {log} (rerun the same command to resume)")
    return output_dir


def curve(output_dir: Path) -> list[dict]:
    """[{step, minutes, accuracy per condition file ("test", "new_test"), "mean"}] from the run's TensorBoard log."""
    from training.tracking import logged_scalars

    minutes = logged_scalars(output_dir, "train_minutes")
    series = {"mean": logged_scalars(output_dir, "evaluation/mean_accuracy")}
    for name in ("test", "new_test"):
        series[name] = logged_scalars(output_dir, f"evaluation/{name}/accuracy")
    return [{"step": step, "minutes": minutes.get(step), **{name: values[step] for name, values in series.items()}}
            for step in sorted(series["mean"])]


# ---------------------------------------------------------------------------------------------------- report


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    lines = [
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; budget "
        f"{args.minutes:g} training minutes per variant; accuracy of the EMA weights, {len(args.seeds)} seeds, the "
        f"pipeline's default sampler {args.validation_inference_steps} steps, "
        f"guidance {args.validation_guidance_scale:g}",
        "",
        "| variant | flags over the base | steps | minutes | test % | new_test % | mean % "
        "| curve (mean % at minutes) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, points in results.items():
        if not points:
            continue
        last = points[-1]
        flags = " ".join(f"--{k} {v}" if k != "model" else f"model {v}" for k, v in VARIANTS[name].items()) or "(base)"
        trail = ", ".join(f"{100 * p['mean']:.0f}@{p['minutes']:.1f}" for p in points if p.get("minutes") is not None)
        lines.append(f"| {name} | {flags} | {last['step']} | {last['minutes']:.1f} | {100 * last.get('test', 0):.1f} | "
                     f"{100 * last.get('new_test', 0):.1f} | {100 * last['mean']:.1f} | {trail} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, points in results.items():
        points = [p for p in points if p.get("minutes") is not None]
        if points:
            axis.plot([p["minutes"] for p in points], [100 * p["mean"] for p in points], marker="o", label=name)
    axis.set_xlabel("training minutes (2-core CPU)")
    axis.set_ylabel("accuracy, mean of test / new_test (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.evaluator_checkpoint.is_file():
        raise SystemExit(f"error: --evaluator_checkpoint {args.evaluator_checkpoint} does not exist; train one with "
                         "scripts/train_evaluator.py")
    if not (SHARED_ICLEVR / "test.json").is_file():
        raise SystemExit(f"error: {SHARED_ICLEVR}/test.json is missing; the benchmark scores the real label lists")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = {name: curve(train(name, args)) for name in args.variants}
    text = report(results, args)
    (args.work_dir / "results.md").write_text(text + "\n")
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.work_dir / "curves.png")
    print(text)
    print(f"\ncurves: {args.work_dir / 'curves.png'}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The synthetic i-CLEVR benchmark: render -> train the evaluator -> train the diffusion model -> score its samplers.

    python benchmarks/bench_iclevr.py --work_dir benchmarks/results        # the CPU quick-start budget, 2 cores

Every stage runs the repo's own scripts as subprocesses, so the numbers are what a user gets from those commands:
  1. render     the built-in synthetic i-CLEVR (seed 0, --num_scenes scenes) in the shared data cache
                ($ICLEVR_CACHE or ~/.cache/iclevr-diffusion, or --cache_dir), the one train_conditional.py uses
  2. evaluator  scripts/train_evaluator.py -> WORK/evaluator/checkpoint.pth (+ checkpoint_metrics.json)
  3. model      accelerate launch train_conditional.py ... -> WORK/model (resumed from its latest checkpoint)
  4. evaluate   scripts/evaluate.py per sampler x guidance weight -> WORK/eval/<sampler>-<steps>-g<guidance>/report.json
  5. table      WORK/results.md and WORK/results.json

The condition files are ../shared/iclevr/{test,new_test}.json beside the repo (the real label lists; the renderer's
own test.json stands in when they are absent) and the renderer's new_test.json, copied to
WORK/conditions/synthetic_new_test.json. A stage whose output is complete is skipped, so the benchmark can be
stopped and started again at will; subprocess logs go to WORK/logs/<stage>.log (`tail -f` them to follow).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import time
from typing import Any

import torch

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.checkpointing import list_checkpoints
from training.cli import non_negative_float, positive_float_or_none, positive_int, probability
from training.data import DEFAULT_SYNTHETIC_SCENES, builtin_synthetic_dir, default_cache_dir
from training.evaluator import EVALUATOR_EPOCHS, EVALUATOR_SYNTHETIC_SCENES, EVALUATOR_VALIDATION_SCENES
from training.inference import resolve_device, resolve_dtype
from training.model_presets import PRESETS, load_model_config
from training.objective import DEFAULT_LABEL_DROPOUT
from training.precision import training_mixed_precision
from training.samplers import DEFAULT_SAMPLER, SamplerError, parse_sampler

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CONDITIONS_DIR = REPO_ROOT.parent / "shared" / "iclevr"
DEFAULT_SAMPLERS = ("ddpm:1000", f"{DEFAULT_SAMPLER}:25", "dpmsolver++:25", "ddim:50")
SETTINGS_FILE = "settings.json"  # the flags each cached stage was made with
TIMINGS_FILE = "timings.json"
LOG_TAIL_LINES = 15
ERROR_LINE = re.compile(r"^(error: |[\w.]*(Error|Exception): )")
# The diffusion-model flags a cached model must have been trained with (names as in train_conditional.py).
MODEL_FLAGS = ("model_config_name_or_path", "label_embedding_norm", "zero_init_residual", "label_dropout", "snr_offset",
               "resolution", "train_batch_size", "max_train_steps", "learning_rate", "lr_warmup_steps",
               "mixed_precision", "use_ema", "seed")


class StageError(RuntimeError):
    """A stage cannot run or its subprocess failed; the message says what to do."""


# ------------------------------------------------------------------------------------------------ flags


def sampler_and_steps(text: str) -> tuple[str, int]:
    """The SAMPLER:STEPS flag type: "ddim:50" -> ("ddim", 50); "ddim,eta=1:50" -> ("ddim,eta=1", 50)."""
    name, _, steps = text.rpartition(":")
    try:
        name = parse_sampler(name).spec
    except SamplerError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    if not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SAMPLER:STEPS with STEPS >= 1, like ddim:50")
    return name, int(steps)


def guidance_weight(text: str) -> float:
    """The --guidance_scales flag type: a number >= 1 (1 = no guidance; below 1 the pipeline would not guide either)."""
    try:
        weight = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; guidance weights are >= 1, like 1 or 4") from None
    if not weight >= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: guidance weights are >= 1 (1 = no guidance), like 1 or 4")
    return weight


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True, help="Where every stage writes (and is cached).")
    parser.add_argument("--cache_dir", type=str, default=None,
                        help="Data cache shared with normal runs "
                             "(default: $ICLEVR_CACHE or ~/.cache/iclevr-diffusion).")
    parser.add_argument("--real_conditions_dir", type=Path, default=REAL_CONDITIONS_DIR,
                        help="Folder with the real test.json and new_test.json.")

    data = parser.add_argument_group("render")
    data.add_argument("--num_scenes", type=positive_int, default=DEFAULT_SYNTHETIC_SCENES,
                      help="Scenes of the diffusion model's synthetic training set (3 images each; seed 0).")

    evaluator = parser.add_argument_group("evaluator (scripts/train_evaluator.py; defaults: that script's)")
    evaluator.add_argument("--evaluator_epochs", type=positive_int, default=EVALUATOR_EPOCHS)
    evaluator.add_argument("--evaluator_scenes", type=positive_int, default=EVALUATOR_SYNTHETIC_SCENES,
                           help="Its synthetic training scenes (seeds the diffusion model never sees).")
    evaluator.add_argument("--evaluator_validation_scenes", type=positive_int, default=EVALUATOR_VALIDATION_SCENES)

    model = parser.add_argument_group("diffusion model budget (train_conditional.py; defaults: the CPU quick-start)")
    model.add_argument("--model_config_name_or_path", default="cpu")
    model.add_argument("--label_embedding_norm", type=positive_float_or_none, default=8.0,
                       help="As train_conditional.py's flag (8: the quick start's); 'none' keeps the model config's.")
    model.add_argument("--zero_init_residual", action=argparse.BooleanOptionalAction, default=True,
                       help="As train_conditional.py's flag (on: the quick start's); --no-zero_init_residual leaves "
                            "diffusers' initialisation.")
    model.add_argument("--label_dropout", type=probability, default=DEFAULT_LABEL_DROPOUT,
                       help=f"As train_conditional.py's flag (its default {DEFAULT_LABEL_DROPOUT:g}).")
    model.add_argument("--snr_offset", type=non_negative_float, default=0.1,
                       help="As train_conditional.py's flag (0.1: the quick start's; 0: Min-SNR as in the paper).")
    model.add_argument("--resolution", type=positive_int, default=32)
    model.add_argument("--train_batch_size", type=positive_int, default=32)
    model.add_argument("--max_train_steps", type=positive_int, default=2200)  # the README quick start's
    model.add_argument("--learning_rate", type=float, default=1e-3)
    model.add_argument("--lr_warmup_steps", type=int, default=100)
    model.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="bf16")
    model.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    model.add_argument("--seed", type=int, default=0, help="Training seed.")
    model.add_argument("--checkpointing_steps", type=positive_int, default=250,
                       help="A stopped training run resumes from its last checkpoint, so this bounds the work lost.")

    sampling = parser.add_argument_group("evaluation (scripts/evaluate.py)")
    sampling.add_argument("--samplers", type=sampler_and_steps, nargs="+",
                          default=[sampler_and_steps(s) for s in DEFAULT_SAMPLERS],
                          metavar="SAMPLER:STEPS", help=f"Default: {' '.join(DEFAULT_SAMPLERS)}.")
    sampling.add_argument("--guidance_scales", type=guidance_weight, nargs="+", default=[1.0, DEFAULT_GUIDANCE_SCALE],
                          metavar="W", help="Each sampler runs at each of these classifier-free guidance weights "
                          f"(1 = none). Default: 1 {DEFAULT_GUIDANCE_SCALE:g} (none, and the pipeline's default).")
    sampling.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    sampling.add_argument("--eval_dtype", choices=("fp32", "bf16", "fp16"), default="bf16",
                          help="The UNet's precision while sampling (evaluate.py --dtype); bf16 samples faster on CPU.")
    return parser


# ------------------------------------------------------------------------------------------- bookkeeping


class Bench:
    """Paths, the elapsed-time clock, the timings file and the subprocess runner of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work_dir = args.work_dir.resolve()
        self.logs = self.work_dir / "logs"
        self.start = time.perf_counter()
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def say(self, stage: str, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:8.1f} s] {stage:<9} {message}", flush=True)

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.work_dir / name
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_json(self, path: Path, data: Any) -> None:
        """Atomic: a stop mid-write leaves the previous file."""
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(temp, path)

    def record_time(self, key: str, seconds: float, *, accumulate: bool = False, **extra: Any) -> None:
        timings = self.read_json(TIMINGS_FILE)
        previous = timings.get(key, {})
        entry = {"seconds": round(seconds + (previous.get("seconds", 0.0) if accumulate else 0.0), 1),
                 "runs": (previous.get("runs", 0) if accumulate else 0) + 1, **extra}
        timings[key] = entry
        self.write_json(self.work_dir / TIMINGS_FILE, timings)

    def check_settings(self, stage: str, settings: dict[str, Any], has_output: bool) -> None:
        """Reusing a stage's output (or a run's checkpoints) made with other flags would silently mix budgets."""
        recorded = self.read_json(SETTINGS_FILE)
        if has_output and stage in recorded and recorded[stage] != settings:
            changed = sorted(k for k in settings.keys() | recorded[stage].keys()
                             if settings.get(k) != recorded[stage].get(k))
            raise StageError(
                f"{self.work_dir} holds a {stage} stage made with other flags ({', '.join(changed)}: "
                f"{[recorded[stage].get(k) for k in changed]} there, {[settings.get(k) for k in changed]} now); "
                f"pass the same flags, a new --work_dir, or delete {self.work_dir / stage}"
            )
        recorded[stage] = settings
        self.write_json(self.work_dir / SETTINGS_FILE, recorded)

    def run(self, stage: str, log_name: str, argv: list[str], display: list[str]) -> float:
        """Runs one stage's subprocess from the repo root, output to logs/<log_name>.log; returns its wall time.

        `display` is the command as a user would type it (`python ...`, `accelerate launch ...`).
        """
        self.logs.mkdir(exist_ok=True)
        log = self.logs / f"{log_name}.log"
        command = shlex.join(display)
        self.say(stage, f"$ {command}")
        self.say(stage, f"  (output: {log})")
        tick = time.perf_counter()
        with log.open("a") as output:  # appended: a resumed stage keeps the log of the runs before it
            output.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {command}\n")
            output.flush()
            returncode = subprocess.run(argv, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - tick
        if returncode != 0:
            raise StageError(
                f"stage {stage} failed (exit {returncode}) after {seconds:.0f} s{log_cause(log)}; last lines of "
                f"{log}:\n{log_tail(log)}\nfix the cause and re-run this benchmark (it resumes here), or run by hand "
                f"from {REPO_ROOT}:\n  {command}"
            )
        return seconds


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, progress-bar redraws (carriage returns) collapsed to their final state."""
    text = log.read_bytes().decode(errors="replace")  # bytes: read_text() would turn every \r into a newline
    rows = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join("  | " + row for row in [row for row in rows if row.strip()][-lines:])


def log_cause(log: Path) -> str:
    """The script's own error line; `accelerate launch` buries it under the launcher's traceback."""
    causes = [line.strip() for line in log.read_text(errors="replace").splitlines()
              if ERROR_LINE.match(line) and "CalledProcessError" not in line]
    return f": {causes[-1]}" if causes else ""


def python(script: str, *flags: str) -> tuple[list[str], list[str]]:
    return [sys.executable, script, *flags], ["python", script, *flags]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ------------------------------------------------------------------------------------------------ stages


def render_stage(bench: Bench) -> Path:
    """The diffusion model's training data: the data layer's built-in render, in the shared cache."""
    args = bench.args
    tick = time.time()
    folder = builtin_synthetic_dir(args.cache_dir, args.num_scenes)  # renders atomically when missing
    # The renderer writes train.json into a fresh folder, so a recent mtime means it rendered just now.
    if (folder / "train.json").stat().st_mtime >= tick:
        seconds = time.time() - tick
        bench.record_time("render", seconds, images=3 * args.num_scenes)
        bench.say("render", f"rendered {3 * args.num_scenes} images in {seconds:.1f} s -> {folder}")
    else:
        bench.say("render", f"cached: {folder}")
    return folder


def evaluator_stage(bench: Bench) -> tuple[Path, dict[str, Any]]:
    args = bench.args
    checkpoint = bench.work_dir / "evaluator" / "checkpoint.pth"
    metrics_path = checkpoint.with_name(f"{checkpoint.stem}_metrics.json")
    bench.check_settings("evaluator", {"epochs": args.evaluator_epochs, "synthetic_scenes": args.evaluator_scenes,
                                       "validation_scenes": args.evaluator_validation_scenes},
                         has_output=checkpoint.is_file())
    # The script writes the checkpoint (atomically) and then the metrics: the metrics file marks completion.
    if not (checkpoint.is_file() and _parses(metrics_path)):
        flags = ["--output_path", str(checkpoint), "--epochs", str(args.evaluator_epochs),
                 "--synthetic_scenes", str(args.evaluator_scenes),
                 "--validation_scenes", str(args.evaluator_validation_scenes)]
        flags += ["--cache_dir", args.cache_dir] if args.cache_dir else []
        seconds = bench.run("evaluator", "evaluator", *python("scripts/train_evaluator.py", *flags))
        bench.record_time("evaluator", seconds)
    metrics = json.loads(metrics_path.read_text())
    verdict = "reached" if metrics["reached_target"] else "DID NOT REACH"
    bench.say("evaluator", f"held-out top-k accuracy {metrics['accuracy']:.2%} ({verdict} the "
                           f"{metrics['target_accuracy']:.1%} target) -> {checkpoint}")
    return checkpoint, metrics


def model_stage(bench: Bench, train_data_dir: Path) -> Path:
    args = bench.args
    model_dir = bench.work_dir / "model"
    budget = {flag: getattr(args, flag) for flag in MODEL_FLAGS}
    bench.check_settings("model", {**budget, "num_scenes": args.num_scenes},
                         has_output=bool(list_checkpoints(model_dir)) or (model_dir / "training_args.json").exists())
    # train_conditional.py writes training_args.json right after the pipeline: it marks a finished run.
    if not _parses(model_dir / "training_args.json"):
        flags = [
            "--model_config_name_or_path", args.model_config_name_or_path,
            *(["--label_embedding_norm", str(args.label_embedding_norm)] if args.label_embedding_norm else []),
            *(["--zero_init_residual"] if args.zero_init_residual else []),
            "--label_dropout", str(args.label_dropout),
            "--snr_offset", str(args.snr_offset),
            "--resolution", str(args.resolution),
            "--train_batch_size", str(args.train_batch_size),
            "--max_train_steps", str(args.max_train_steps),
            "--learning_rate", str(args.learning_rate),
            "--lr_warmup_steps", str(args.lr_warmup_steps),
            "--mixed_precision", args.mixed_precision,
            *(["--use_ema"] if args.use_ema else []),
            "--seed", str(args.seed),
            "--checkpointing_steps", str(args.checkpointing_steps),
            "--checkpoints_total_limit", "2",
            "--validation_steps", str(args.max_train_steps),  # no sample grids mid-run: they would cost budget time
            "--report_to", "none",
            "--output_dir", str(model_dir),
        ]
        # The default data is exactly the built-in render; other scene counts are passed as a folder.
        if args.num_scenes != DEFAULT_SYNTHETIC_SCENES:
            flags += ["--train_data_dir", str(train_data_dir)]
        if args.cache_dir:
            flags += ["--cache_dir", args.cache_dir]
        checkpoints = list_checkpoints(model_dir)
        if checkpoints:
            flags += ["--resume_from_checkpoint", "latest"]
            bench.say("model", f"resuming from {checkpoints[-1].name}")
        # accelerate launch would otherwise set OMP_NUM_THREADS=1 and leave the other cores idle on a CPU.
        launcher = ["--num_processes", "1"]
        launch = ["-m", "accelerate.commands.launch", *launcher, "train_conditional.py", *flags]
        display = ["accelerate", "launch", *launcher, "train_conditional.py", *flags]
        tick = time.perf_counter()
        try:
            bench.run("model", "model", [sys.executable, *launch], display)
        finally:  # a stopped or failed run still spent its time: a resumed run's total covers every run since step 0
            bench.record_time("model", time.perf_counter() - tick, accumulate=bool(checkpoints))
    timing = bench.read_json(TIMINGS_FILE).get("model")
    spent = f"{timing['seconds']:.0f} s over {timing['runs']} run(s)" if timing else "time not recorded"
    bench.say("model", f"trained ({args.max_train_steps} steps, {spent}) -> {model_dir}")
    return model_dir


def condition_files(bench: Bench, render_dir: Path) -> tuple[list[Path], str]:
    """The real test.json and new_test.json (or the renderer's test.json) and the renderer's new_test.json."""
    folder = bench.work_dir / "conditions"
    folder.mkdir(exist_ok=True)
    real = [bench.args.real_conditions_dir / name for name in ("test.json", "new_test.json")]
    if all(path.is_file() for path in real):
        files, source = real, f"real label lists from {bench.args.real_conditions_dir}"
    else:
        shutil.copyfile(render_dir / "test.json", folder / "synthetic_test.json")
        files = [folder / "synthetic_test.json"]
        source = f"no real label lists in {bench.args.real_conditions_dir}: the renderer's test.json instead"
    # A distinct stem: evaluate.py keys results by file name, and the real new_test.json is also "new_test".
    shutil.copyfile(render_dir / "new_test.json", folder / "synthetic_new_test.json")
    return [*files, folder / "synthetic_new_test.json"], source


def evaluation_configs(args: argparse.Namespace) -> list[tuple[str, int, float]]:
    guidances = list(dict.fromkeys(args.guidance_scales))  # a weight given twice is one row
    return [(name, steps, guidance) for name, steps in args.samplers for guidance in guidances]


def config_name(scheduler: str, steps: int, guidance: float) -> str:
    return f"{scheduler}-{steps}-g{guidance:g}"


def evaluate_stage(bench: Bench, model_dir: Path, evaluator: Path, conditions: list[Path]) -> dict[str, dict]:
    args = bench.args
    batch_size = max(len(json.loads(path.read_text())) for path in conditions)  # one file's conditions per batch
    reports = {}
    for scheduler, steps, guidance in evaluation_configs(args):
        name = config_name(scheduler, steps, guidance)
        output_dir = bench.work_dir / "eval" / name
        report_path = output_dir / "report.json"
        # A report older than the model (retrained after a deleted model/) is stale.
        if _parses(report_path) and report_path.stat().st_mtime > (model_dir / "training_args.json").stat().st_mtime:
            report = json.loads(report_path.read_text())
            made_with = report["settings"]
            if made_with["seeds"] != args.seeds or made_with["dtype"] != args.eval_dtype:
                raise StageError(f"{report_path} was made with --seeds {' '.join(map(str, made_with['seeds']))} "
                                 f"--eval_dtype {made_with['dtype']}; pass those, or delete {output_dir} to re-run it")
            bench.say("evaluate", f"{name}: cached")
        else:
            flags = ["--pipeline", str(model_dir), "--conditions", *map(str, conditions),
                     "--evaluator_checkpoint", str(evaluator), "--scheduler", scheduler,
                     "--num_inference_steps", str(steps), "--guidance_scale", f"{guidance:g}",
                     "--seeds", *map(str, args.seeds), "--dtype", args.eval_dtype, "--batch_size", str(batch_size),
                     "--output_dir", str(output_dir)]
            shutil.rmtree(output_dir, ignore_errors=True)  # leftovers of a stopped run
            seconds = bench.run("evaluate", f"eval-{name}", *python("scripts/evaluate.py", *flags))
            bench.record_time(f"eval/{name}", seconds)
            report = json.loads(report_path.read_text())
            bench.say("evaluate", f"{name}: mean accuracy {report['mean_accuracy']:.2%}, "
                                  f"{report['seconds_per_image']:.3f} s/image, stage {seconds:.0f} s")
        reports[name] = report
    return reports


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, json.JSONDecodeError):
        return False


# ------------------------------------------------------------------------------------------------- table


def results_table(bench: Bench, reports: dict[str, dict], evaluator_metrics: dict, condition_source: str,
                  command: str) -> tuple[str, dict]:
    args = bench.args
    timings = bench.read_json(TIMINGS_FILE)
    info = machine()
    model_time = timings.get("model")
    budget = {flag: getattr(args, flag) for flag in MODEL_FLAGS} | {
        "num_scenes": args.num_scenes, "images": 3 * args.num_scenes,
        "model_stage_seconds": model_time["seconds"] if model_time else None,
        "model_stage_runs": model_time["runs"] if model_time else None,
    }
    sets = list(next(iter(reports.values()))["condition_sets"])
    rows = []
    for scheduler, steps, guidance in evaluation_configs(args):
        report = reports[config_name(scheduler, steps, guidance)]
        rows.append({
            "sampler": scheduler, "steps": steps, "guidance_scale": guidance,
            "accuracy": {s: [report["condition_sets"][s]["accuracy_mean"], report["condition_sets"][s]["accuracy_std"]]
                         for s in sets},
            "exact_match": report["mean_exact_match"],
            "generation_seconds": report["generation_seconds"],
            "seconds_per_image": report["seconds_per_image"],
            "num_images": report["num_images"],
            "device": report["settings"]["device"],
            "dtype": report["settings"]["dtype"],
        })

    hardware = f"{info['cpu']}, {info['cpu_cores']} cores, torch {info['torch']} ({info['torch_threads']} threads)"
    hardware += f", GPU {info['gpu']}" if "gpu" in info else ""
    spent = (f"{model_time['seconds'] / 60:.1f} min wall time" + (f" over {model_time['runs']} runs (resumed)"
             if model_time["runs"] > 1 else "")) if model_time else "wall time not recorded"
    norm = args.label_embedding_norm
    model_settings = f" with label embeddings starting at norm {norm:g}" if norm else ""
    model_settings += ", residual branches starting at zero" if args.zero_init_residual else ""
    model_settings += f", label dropout {args.label_dropout:g}"
    model_settings += f", Min-SNR offset {args.snr_offset:g}" if args.snr_offset else ""
    lines = [
        "## Synthetic i-CLEVR benchmark",
        "",
        f"- Command: `{command}`",
        f"- Machine: {hardware}",
        f"- Diffusion model: preset `{args.model_config_name_or_path}`{model_settings}, "
        f"{args.resolution}x{args.resolution}, "
        f"{args.max_train_steps} steps x batch {args.train_batch_size} (lr {args.learning_rate:g}, warm-up "
        f"{args.lr_warmup_steps}, {args.mixed_precision}{', EMA' if args.use_ema else ''}) on {3 * args.num_scenes} "
        f"synthetic images; {spent}",
        f"- Evaluator: held-out top-k accuracy {evaluator_metrics['accuracy']:.2%} "
        f"({'reached' if evaluator_metrics['reached_target'] else 'below'} the "
        f"{evaluator_metrics['target_accuracy']:.1%} target), {evaluator_metrics['epochs']} epoch(s)",
        f"- Conditions: {condition_source}; synthetic_new_test = the renderer's unusual same-colour lists",
        f"- Accuracy: mean ± std over seeds {' '.join(map(str, args.seeds))}, in %; exact match: mean over files; "
        f"generation: seconds for all {rows[0]['num_images']} images of a row, on {rows[0]['device']}, UNet in "
        f"{rows[0]['dtype']}",
        "",
        "| sampler | steps | guidance | " + " | ".join(f"{s} acc." for s in sets)
        + " | exact match | generation (s) | s / image |",
        "|---|---:|---:|" + "---:|" * len(sets) + "---:|---:|---:|",
    ]
    for row in rows:
        accuracy = " | ".join(f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in row["accuracy"].values())
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['guidance_scale']:g} | {accuracy} | "
                     f"{100 * row['exact_match']:.1f} | {row['generation_seconds']:.1f} | "
                     f"{row['seconds_per_image']:.3f} |")
    results = {"command": command, "machine": info, "budget": budget, "evaluator": evaluator_metrics,
               "conditions": condition_source, "timings": timings, "rows": rows}
    return "\n".join(lines) + "\n", results


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # a typo here should fail now, not after the hour the evaluator stage takes
        load_model_config(args.model_config_name_or_path, sample_size=args.resolution)
    except ValueError as error:
        parser.error(f"--model_config_name_or_path: {error}")
    # The subprocesses run from the repo root: relative paths must not change meaning.
    if args.model_config_name_or_path not in PRESETS:
        args.model_config_name_or_path = str(Path(args.model_config_name_or_path).resolve())
    if args.cache_dir:
        args.cache_dir = str(Path(args.cache_dir).resolve())
    # bf16 on a CPU without native bfloat16 runs as fp32 in the stages (it would be 2-28x slower): record that.
    device = resolve_device(None)
    args.mixed_precision, warning = training_mixed_precision(args.mixed_precision, device)
    if warning:
        print(f"WARNING: {warning}")
    args.eval_dtype = resolve_dtype(args.eval_dtype, device)
    command = shlex.join(["python", "benchmarks/bench_iclevr.py", *(sys.argv[1:] if argv is None else argv)])
    bench = Bench(args)
    bench.say("start", f"work dir {bench.work_dir}, data cache {args.cache_dir or default_cache_dir()}")
    try:
        render_dir = render_stage(bench)
        evaluator, evaluator_metrics = evaluator_stage(bench)
        model_dir = model_stage(bench, render_dir)
        conditions, condition_source = condition_files(bench, render_dir)
        reports = evaluate_stage(bench, model_dir, evaluator, conditions)
    except StageError as error:
        sys.exit(f"error: {error}")
    table, results = results_table(bench, reports, evaluator_metrics, condition_source, command)
    (bench.work_dir / "results.md").write_text(table)
    bench.write_json(bench.work_dir / "results.json", results)
    print("\n" + table)
    bench.say("done", f"table -> {bench.work_dir / 'results.md'}, all numbers -> {bench.work_dir / 'results.json'}")


if __name__ == "__main__":
    main()

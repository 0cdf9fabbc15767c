#!/usr/bin/env python
"""The GPU path, measured in one call of at most --budget_seconds (9 minutes) on one GPU, every result and picture in
one flat folder. Run it through gpu_check.sh, which first installs the wheels carried in .whl/:

    bash benchmarks/gpu_check.sh OUT --evaluator_checkpoint .gpu-carry/checkpoint.pth \\
        --conditions .gpu-carry/test.json .gpu-carry/new_test.json          # on the GPU machine
    bash benchmarks/gpu_check.sh OUT --smoke   # every stage on this CPU, tiny settings (tests/test_gpu_check.py)

Stages, in this order (planned seconds in GPU.plan; each prints its wall time; one that cannot finish inside the
budget is skipped, and the quality run is shortened to the time left):
  environment  the versions that run (carried or the image's), unmet requirements, the machine
  data         the built-in synthetic i-CLEVR rendered on all cores and resized once
               (--smoke: a 12-scene render, and an untrained evaluator saved in the course format)
  tests        pytest on TEST_FILES, the GPU path's tests, CUDA-only ones included
  throughput   benchmarks/bench_training.py: the recipe's model and batch in bf16 / fp16 (grad scaler) / fp32 (TF32
               on CUDA), with and without channels_last and torch.compile, and the largest batch that fits
  sampling     benchmarks/bench_training.py: seconds for 32 images, the default sampler and DDPM 1000, bf16 and fp16
  fp16_resume  `accelerate launch train_conditional.py` in fp16 (one process), then a resume from its mid-run
               checkpoint: finite losses and an identical continuation
  quality      the RECIPE trained for --quality_minutes, its loop images/s against the bare step's (throughput),
               scripts/evaluate.py on both condition files with 3 seeds, the sample grids
Writes to --output_dir (flat, under the GPU tool's 8 returned files): results.md, results.json, stages.log (every
subprocess's output), samples.png, eval_grid.png, denoising_process.png; gpu_check.sh adds gpu_check.log.
--stages reruns a subset (environment and data always run; the data is cached in --work_dir).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from gpu_check_report import render_markdown

# ======================= THE RECIPE OF THE QUALITY RUN: the one place to change it =======================
# train_conditional.py flags of the quality run and of the fp16 resume check; the throughput stage times the bare
# step with the same model, resolution, batch, precision, channels_last and compilation. The check adds only run
# control (--max_train_minutes from --quality_minutes, so the run times its own steps; output, logging, checkpoint
# and validation steps) and, with --smoke, Settings.recipe_overrides after these (the last value of a flag wins).
RECIPE = [
    "--model_config_name_or_path", "gpu", "--resolution", "64", "--train_batch_size", "128",
    "--learning_rate", "3e-4", "--lr_warmup_steps", "200", "--use_ema", "--mixed_precision", "bf16",
    "--channels_last",
]  # fmt: skip
QUALITY_MINUTES = 2.25  # training time of the quality run on the GPU (--max_train_minutes)
# scripts/evaluate.py flags of the quality run (besides pipeline, conditions, evaluator and output).
# training.samplers.DEFAULT_SAMPLER, spelled out: this file imports nothing that the install stage may still lack.
DEFAULT_SAMPLER = "sde-dpmsolver++,timestep_spacing=trailing"
# The sampler and guidance scale are the saved pipeline's defaults, as a user gets them.
EVALUATION = ["--num_inference_steps", "25", "--seeds", "0", "1", "2", "--dtype", "bf16"]
# ==========================================================================================================

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/test_gpu_path.py"]
OPTIONAL_STAGES = ("tests", "throughput", "sampling", "fp16_resume", "quality")
TIME_BOXED = ("throughput",)  # stopped at their plan; they keep every figure measured until then
OUTPUT_FILES = ("results.md", "results.json", "stages.log", "samples.png", "eval_grid.png", "denoising_process.png")
PACKAGES = ("torch", "accelerate", "diffusers", "datasets", "huggingface_hub", "safetensors", "tensorboard", "numpy",
            "pyarrow", "fsspec", "pillow", "pytest")  # fmt: skip
IMPORTS = ("torch", "accelerate", "diffusers", "datasets", "huggingface_hub", "tensorboard")


@dataclass(frozen=True)
class Settings:
    """Everything that differs between the GPU run and the CPU smoke run."""

    budget_seconds: float
    plan: dict[str, float]  # planned seconds per stage; "quality" is its overhead besides the training minutes
    quality_minutes: float
    render_scenes: int | None  # None: the built-in render (6003 scenes)
    recipe_overrides: list[str] = field(default_factory=list)
    bench_flags: list[str] = field(default_factory=list)  # bench_training.py: timed steps, warm-up, backend
    max_batch: int = 8192
    samplers: list[str] = field(default_factory=lambda: [f"{DEFAULT_SAMPLER}:25", "ddpm:1000"])
    num_images: int = 32
    resume_steps: int = 10  # steps before the checkpoint the fp16 run resumes from; as many after it
    test_selection: list[str] = field(default_factory=list)
    evaluation_overrides: list[str] = field(default_factory=list)


# Planned on one H200 with 16 cores: 15 s for gpu_check.sh's install + 320 s of stages + 2.25 min of training + 65 s
# around it (its 35 timed steps and their snapshot included) = 535 s of the 540 s budget (tests/test_gpu_check.py
# checks the sum), which leaves the 15-minute device window room for the machine's start and a short rerun
# (--stages ... --budget_seconds ...). The throughput stage stops at its plan (its compiled modes come last); the
# others may take 1.5 times theirs, and the quality run's training is shortened by what they overran.
GPU = Settings(
    budget_seconds=540,
    plan={"install": 15, "environment": 5, "data": 30, "tests": 90, "throughput": 110, "sampling": 40,
          "fp16_resume": 45, "quality": 65},
    quality_minutes=QUALITY_MINUTES,
    render_scenes=None,
    bench_flags=["--steps", "20", "--warmup", "5"],
)  # fmt: skip
# The smoke run's throughput stage (time-boxed, its compiled modes last) is planned for a 2-core CPU beside another
# busy process. Idle on a 2-core CPU without native bf16 or fp16 (where those modes crawl) the whole smoke run takes
# 73 s (138 s at 32x32 with 25-step validation grids).
SMOKE = Settings(
    budget_seconds=600,
    plan={"install": 0, "environment": 10, "data": 20, "tests": 60, "throughput": 180, "sampling": 60,
          "fp16_resume": 120, "quality": 120},
    quality_minutes=0.05,
    render_scenes=12,
    # 16x16 and 2-step validation grids: the smoke checks that each stage runs, and its launches draw the grids twice
    recipe_overrides=["--model_config_name_or_path", "tiny", "--resolution", "16", "--train_batch_size", "4",
                      "--lr_warmup_steps", "0", "--validation_inference_steps", "2"],
    bench_flags=["--steps", "1", "--warmup", "1", "--compile_backend", "eager"],
    max_batch=8,
    samplers=[f"{DEFAULT_SAMPLER}:2", "ddpm:2"],  # fp16 and bf16 sampling crawl on a CPU without native support
    num_images=2,
    resume_steps=2,
    # The unit tests and the CUDA-only ones (which skip here); the launches would take minutes on 2 cores.
    test_selection=["-k", "cuda or guard"],
    evaluation_overrides=["--num_inference_steps", "2"],
)  # fmt: skip


class StageError(RuntimeError):
    """A stage's subprocess failed; the message names it and its log."""


@dataclass
class Run:
    returncode: int | None  # None: stopped at its timeout
    seconds: float
    output: str


# ------------------------------------------------------------------------------------------------- the check


class Check:
    """Paths, the budget clock, the subprocess runner and the results of one call."""

    def __init__(self, args: argparse.Namespace, settings: Settings):
        self.args, self.settings = args, settings
        self.out, self.work = args.output_dir.resolve(), args.work_dir.resolve()
        self.start = float(os.environ.get("GPU_CHECK_START") or time.time())  # gpu_check.sh's start: install included
        self.deadline = self.start + args.budget_seconds
        self.log = self.out / "stages.log"
        self.recipe_flags = [*RECIPE, *settings.recipe_overrides]
        self.data: dict[str, Any] = {}
        self.results: dict[str, Any] = {
            "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "budget_seconds": args.budget_seconds,
            "command": os.environ.get("GPU_CHECK_COMMAND") or shlex.join(["python", *sys.argv]), "stages": {},
        }  # fmt: skip

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.deadline - time.time()

    def say(self, stage: str, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {stage:<12} {message}", flush=True)

    def recipe(self) -> argparse.Namespace:
        from training.args import parse_args

        return parse_args(self.recipe_flags)

    def run(self, stage: str, argv: list[str], display: list[str], timeout: float) -> Run:
        """Runs a command from the repo root, output appended to stages.log; stops it (and its children) after
        `timeout` seconds.
        """
        command = shlex.join(display)
        self.say(stage, f"$ {command}")
        with self.log.open("a") as log:
            log.write(f"\n===== [{self.elapsed():.0f} s] {stage}: {command}\n")
            log.flush()
            offset = log.tell()
            tick = time.time()
            process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
            try:
                returncode = process.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                returncode = None
        seconds = time.time() - tick
        with self.log.open("rb") as log:
            log.seek(offset)
            output = log.read().decode(errors="replace")
        if returncode is None:
            self.say(stage, f"  stopped at its {timeout:.0f} s limit")
        return Run(returncode, seconds, output)

    def launch(self, stage: str, flags: list[str], mixed_precision: str, timeout: float) -> Run:
        """One single-process `accelerate launch train_conditional.py`."""
        launcher = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", mixed_precision,
                    "--dynamo_backend", "no", "train_conditional.py", *flags]  # fmt: skip
        return self.run(stage, [sys.executable, "-m", "accelerate.commands.launch", *launcher],
                        ["accelerate", "launch", *launcher], timeout)

    def save(self) -> None:
        self.results["wall_seconds"] = round(self.elapsed(), 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        (self.out / "results.md").write_text(render_markdown(self.results))


def required(run: Run, what: str) -> None:
    """Raises with the cause and the end of the output when a subprocess failed or was stopped."""
    if run.returncode == 0:
        return
    how = "was stopped at its time limit" if run.returncode is None else f"failed (exit {run.returncode})"
    causes = [line.strip() for line in run.output.splitlines()
              if re.match(r"^(error: |[\w.]*(Error|Exception): )", line)]  # fmt: skip
    cause = f": {causes[-1]}" if causes else ""
    raise StageError(f"{what} {how}{cause} (see stages.log)")


# ------------------------------------------------------------------------------------------------- stages


def environment_stage(check: Check, timeout: float) -> dict[str, Any]:
    import torch

    imported_from = {}
    for module in IMPORTS:
        try:
            imported_from[module] = str(Path(importlib.import_module(module).__file__).parent.parent)
        except Exception as error:  # a broken carried wheel shows here, with what broke
            imported_from[module] = f"FAILED: {type(error).__name__}: {error}"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").is_file() else "unknown CPU"
    found = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        found |= {"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
                  "compute_capability": f"{properties.major}.{properties.minor}", "cuda": torch.version.cuda}
    failed = [module for module, where in imported_from.items() if where.startswith("FAILED")]
    return {
        "status": "failed" if failed else "ok",
        "note": f"cannot import {', '.join(failed)}" if failed else "",
        "machine": found,
        "versions": {name: _version(name) for name in PACKAGES},
        "imported_from": imported_from,
        "unmet_requirements": unmet_requirements(("diffusers", "datasets", "huggingface_hub", "accelerate")),
        "carried_wheels": os.environ.get("GPU_CHECK_WHEELS", "").split(),
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_requirements(distributions: tuple[str, ...]) -> list[str]:
    """Each requirement (without extras) of `distributions` that the installed packages do not satisfy."""
    from packaging.requirements import Requirement

    problems = []
    for distribution in distributions:
        for text in importlib.metadata.requires(distribution) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            found = _version(requirement.name)
            if found is None or not requirement.specifier.contains(found, prereleases=True):
                problems.append(f"{distribution} needs {requirement}, found {found or 'nothing'}")
    return problems


def data_stage(check: Check, timeout: float) -> dict[str, Any]:
    from training.data import builtin_synthetic_dir, load_training_set
    from training.evaluation import default_condition_files
    from training.evaluator import build_evaluator, save_evaluator
    from training.synthetic_iclevr import render_dataset

    recipe, settings = check.recipe(), check.settings
    tick = time.time()
    if settings.render_scenes:
        train_data_dir = folder = check.work / "data"
        if not (train_data_dir / "train.json").is_file():
            render_dataset(train_data_dir, num_scenes=settings.render_scenes, seed=0, progress=False, overwrite=True)
    else:
        train_data_dir, folder = None, builtin_synthetic_dir()  # the built-in synthetic i-CLEVR, as users get it
    render_seconds = time.time() - tick
    train_set = load_training_set(train_data_dir, resolution=recipe.resolution)  # resized once, cached
    conditions = check.args.conditions or default_condition_files(folder)
    evaluator = check.args.evaluator_checkpoint
    if evaluator is None and check.args.smoke:
        evaluator = save_evaluator(build_evaluator(), check.work / "evaluator" / "checkpoint.pth")
    check.data = {"flags": ["--train_data_dir", str(train_data_dir)] if train_data_dir else [],
                  "conditions": [str(Path(c).resolve()) for c in conditions],
                  "evaluator": str(Path(evaluator).resolve()) if evaluator else None}
    return {
        "folder": str(folder), "images": len(train_set), "resolution": recipe.resolution,
        "render_seconds": round(render_seconds, 1), "resize_seconds": round(time.time() - tick - render_seconds, 1),
        "conditions": check.data["conditions"], "evaluator": check.data["evaluator"],
        "note": "" if check.args.evaluator_checkpoint else "an untrained evaluator, made on the fly (smoke)",
    }  # fmt: skip


def tests_stage(check: Check, timeout: float) -> dict[str, Any]:
    import torch

    flags = ["-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES, *check.settings.test_selection]
    run = check.run("tests", [sys.executable, *flags], ["python", *flags], timeout)
    lines = [line for line in run.output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    summary = lines[-1].strip("= ") if lines else "no pytest summary line"
    counts = {word.rstrip("s"): int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                                summary)}  # fmt: skip
    return {"status": "ok" if run.returncode == 0 else "failed", "note": summary, "counts": counts,
            "cuda": torch.cuda.is_available(), "files": TEST_FILES, "command": shlex.join(["python", *flags])}


def recipe_mode(recipe: argparse.Namespace) -> str:
    """bench_training.py's name for the recipe's training mode, e.g. bf16+channels_last."""
    precision = {"no": "fp32", None: "fp32"}.get(recipe.mixed_precision, recipe.mixed_precision)
    return "+".join([precision] + ["channels_last"] * recipe.channels_last + ["compile"] * recipe.torch_compile)


def throughput_modes(recipe: argparse.Namespace) -> list[str]:
    """The recipe's mode first (the largest batch is searched in it), then every precision with and without
    channels_last, then the compiled modes, the recipe's precision first: compilation is the slowest to measure.
    """
    first = recipe_mode(recipe).split("+")[0]
    precisions = [first] + [p for p in ("bf16", "fp16", "fp32") if p != first]
    eager = [p + layout for p in precisions for layout in ("", "+channels_last")]
    compiled = [p + "+channels_last+compile" for p in precisions]
    return list(dict.fromkeys([recipe_mode(recipe), *eager, *compiled]))


def bench(check: Check, stage: str, flags: list[str], timeout: float) -> tuple[Run, dict[str, Any]]:
    """benchmarks/bench_training.py with the recipe's model, resolution and batch; returns what it measured, also
    when it was stopped at its time limit.
    """
    recipe = check.recipe()
    path = check.work / f"{stage}.json"
    path.unlink(missing_ok=True)
    argv = ["benchmarks/bench_training.py", "--model_config_name_or_path", recipe.model_config_name_or_path,
            "--resolution", str(recipe.resolution), "--batch_size", str(recipe.train_batch_size),
            *check.data["flags"], *flags, "--json", str(path)]  # fmt: skip
    run = check.run(stage, [sys.executable, *argv], ["python", *argv], timeout)
    return run, json.loads(path.read_text()) if path.is_file() else {}


def bench_status(run: Run, measured: list) -> str:
    return "ok" if run.returncode == 0 else "partial" if run.returncode is None and measured else "failed"


def throughput_stage(check: Check, timeout: float) -> dict[str, Any]:
    modes = throughput_modes(check.recipe())
    flags = ["--sections", "training", "--modes", *modes, "--max_batch", str(check.settings.max_batch),
             *check.settings.bench_flags]  # fmt: skip
    run, measured = bench(check, "throughput", flags, timeout)
    rows = measured.get("training", [])
    missing = [mode for mode in modes if mode not in {row["mode"] for row in rows}]
    return {"status": bench_status(run, rows), "recipe_mode": recipe_mode(check.recipe()), "rows": rows,
            "largest_batch": measured.get("largest_batch"), "not_measured": missing,
            "note": f"{len(missing)} mode(s) not measured within the stage's time" if missing else "",
            "header": {k: v for k, v in measured.items() if k not in ("training", "largest_batch", "data_path",
                                                                      "sampling")}}  # fmt: skip


def sampling_stage(check: Check, timeout: float) -> dict[str, Any]:
    flags = ["--sections", "sampling", "--samplers", *check.settings.samplers, "--sampling_precisions", "bf16",
             "fp16", "--num_images", str(check.settings.num_images)]  # fmt: skip
    run, measured = bench(check, "sampling", flags, timeout)
    rows = measured.get("sampling", [])
    return {"status": bench_status(run, rows), "rows": rows}


def fp16_resume_stage(check: Check, timeout: float) -> dict[str, Any]:
    """An fp16 run of 2k steps with a checkpoint at k, and a second run resumed from that checkpoint."""
    from training.tracking import logged_scalars

    end = time.time() + timeout
    k = check.settings.resume_steps
    first, resumed = check.work / "fp16", check.work / "fp16-resumed"
    for folder in (first, resumed):
        shutil.rmtree(folder, ignore_errors=True)
    flags = [*check.recipe_flags, *check.data["flags"], "--mixed_precision", "fp16", "--max_train_steps", str(2 * k),
             "--checkpointing_steps", str(k), "--validation_steps", str(2 * k + 1), "--report_to", "tensorboard",
             "--seed", "0",
             # on CPU (--smoke) a fixed thread count: `auto` follows the load, and another count sums floats in
             # another order, which would break the identical continuation; on a GPU the flag changes nothing
             "--cpu_threads", "1"]  # fmt: skip
    run = check.launch("fp16_resume", [*flags, "--output_dir", str(first)], "fp16", end - time.time())
    required(run, "the fp16 run")
    shutil.copytree(first / f"checkpoint-{k}", resumed / f"checkpoint-{k}")
    second = check.launch("fp16_resume", [*flags, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"],
                          "fp16", end - time.time())  # fmt: skip
    required(second, "the resumed fp16 run")
    losses, continued = logged_scalars(first, "loss"), logged_scalars(resumed, "loss")
    steps = list(range(k + 1, 2 * k + 1))
    pairs = [(step, losses.get(step), continued.get(step)) for step in steps]
    finite = all(math.isfinite(v) for v in [*losses.values(), *continued.values()]) and len(losses) == 2 * k
    identical = sorted(continued) == steps and all(a == b for _, a, b in pairs)
    differences = [abs(a - b) / max(abs(a), 1e-12) for _, a, b in pairs if a is not None and b is not None]
    info = json.loads((first / "run_info.json").read_text())
    ok = finite and identical and info["mixed_precision"] == "fp16"
    return {
        "status": "ok" if ok else "failed",
        "note": "" if ok else f"finite losses: {finite}, identical continuation: {identical}",
        "finite_losses": finite, "identical_continuation": identical,
        "max_relative_difference": max(differences, default=None), "resumed_from_step": k,
        "losses": {str(step): [a, b] for step, a, b in pairs},
        "grad_scaler_state_saved": (first / f"checkpoint-{k}" / "scaler.pt").is_file(),
        "skipped_steps": run.output.count("skipped the optimiser step"),
        "run_info": info, "launch_seconds": [round(run.seconds, 1), round(second.seconds, 1)],
    }  # fmt: skip


def bare_images_per_second(check: Check) -> tuple[float | None, str]:
    """The throughput stage's images/s for the recipe's mode and batch (also from an earlier call's work dir)."""
    path = check.work / "throughput.json"
    if not path.is_file():
        return None, "no throughput measurement"
    measured = json.loads(path.read_text())
    mode, batch = recipe_mode(check.recipe()), check.recipe().train_batch_size
    rates = [row["images_per_second"] for row in measured.get("training", [])
             if row["mode"] == mode and row["batch_size"] == batch]  # fmt: skip
    return (rates[0], f"{mode}, batch {batch}") if rates else (None, f"{mode} at batch {batch} not measured")


def loop_throughput(rates: dict[int, float], batch_size: int) -> dict[str, float]:
    """The training loop's images/s from its logged per-step rates, after the first 5 % of steps (at least 2:
    the first steps include cuDNN's algorithm search and the allocator's growth).
    """
    steps = sorted(rates)
    steady = steps[max(2, len(steps) // 20):] or steps
    seconds = [batch_size / rates[step] for step in steady]
    ordered = sorted(rates[step] for step in steady)
    return {"images_per_second": len(steady) * batch_size / sum(seconds), "median_images_per_second":
            ordered[len(ordered) // 2], "loop_seconds": sum(batch_size / rates[step] for step in steps),
            "steady_steps": len(steady)}  # fmt: skip


def quality_stage(check: Check, timeout: float) -> dict[str, Any]:
    from training.tracking import logged_scalars

    recipe = check.recipe()
    end = time.time() + timeout
    planned = check.args.quality_minutes * 60
    train_seconds = min(planned, timeout - check.settings.plan["quality"])
    if train_seconds < 0.2 * planned:  # shortened, but not to nothing
        return {"status": "skipped", "note": f"only {timeout:.0f} s of the budget left"}
    bare, bare_source = bare_images_per_second(check)
    output = check.work / "quality"
    shutil.rmtree(output, ignore_errors=True)
    once = str(10**9)  # no checkpoint or validation before the last step, whatever the step count
    flags = [*check.recipe_flags, *check.data["flags"], "--max_train_minutes", f"{train_seconds / 60:.4g}",
             "--checkpointing_steps", once, "--validation_steps", once, "--report_to", "tensorboard", "--seed", "0",
             "--output_dir", str(output)]  # fmt: skip
    run = check.launch("quality", flags, recipe.mixed_precision or "no", end - time.time() - 20)
    required(run, "the quality run")
    run_info = json.loads((output / "run_info.json").read_text())
    steps = run_info["max_train_steps"]
    losses = logged_scalars(output, "loss")
    loop = loop_throughput(logged_scalars(output, "images_per_second"), recipe.train_batch_size)
    result = {
        "command": shlex.join(["accelerate", "launch", "train_conditional.py", *flags]),
        "planned_training_seconds": round(train_seconds, 1), "steps": steps, "batch_size": recipe.train_batch_size,
        "images_seen": steps * recipe.train_batch_size, "launch_seconds": round(run.seconds, 1), **loop,
        "timed_steps_per_second": run_info["timed_steps_per_second"],
        "bare_images_per_second": bare, "bare_source": bare_source,
        "loop_fraction": loop["images_per_second"] / bare if bare else None,
        "finite_losses": all(math.isfinite(v) for v in losses.values()) and len(losses) == steps,
        "final_loss": losses.get(steps), "mean_loss_last_10pct": _tail_mean(losses),
    }  # fmt: skip
    try:
        result |= evaluate_quality(check, output, end - time.time())
    except StageError as error:  # the training figures above still count
        return {**result, "status": "failed", "note": str(error)}
    return {**result, "status": "ok" if result["finite_losses"] else "failed",
            "note": "" if result["finite_losses"] else "non-finite losses"}


def _tail_mean(losses: dict[int, float]) -> float | None:
    values = [losses[step] for step in sorted(losses)][-max(1, len(losses) // 10):]
    return sum(values) / len(values) if values else None


def evaluate_quality(check: Check, pipeline: Path, timeout: float) -> dict[str, Any]:
    """scripts/evaluate.py on the condition files, then the pictures into the output folder."""
    evaluation = check.work / "eval"
    shutil.rmtree(evaluation, ignore_errors=True)
    flags = ["scripts/evaluate.py", "--pipeline", str(pipeline), "--conditions", *check.data["conditions"],
             "--evaluator_checkpoint", check.data["evaluator"], "--output_dir", str(evaluation), *EVALUATION,
             *check.settings.evaluation_overrides]  # fmt: skip
    run = check.run("quality", [sys.executable, *flags], ["python", *flags], timeout)
    required(run, "scripts/evaluate.py")
    report = json.loads((evaluation / "report.json").read_text())
    seed = report["settings"]["seeds"][0]
    grids = [evaluation / f"grid_{name}_seed{seed}.png" for name in report["condition_sets"]]
    stack_images(grids, check.out / "eval_grid.png")
    shutil.copy(evaluation / "denoising_process.png", check.out / "denoising_process.png")
    shutil.copy(pipeline / "samples.png", check.out / "samples.png")
    return {
        "evaluation_command": shlex.join(["python", *flags]), "evaluation_seconds": round(run.seconds, 1),
        "evaluation": {name: {key: result[key] for key in ("accuracy_mean", "accuracy_std", "exact_match_mean",
                                                            "num_conditions", "num_seeds")}
                       for name, result in report["condition_sets"].items()},
        "mean_accuracy": report["mean_accuracy"], "seconds_per_image": report["seconds_per_image"],
        "sampling": {key: report["settings"][key] for key in ("scheduler", "num_inference_steps", "guidance_scale",
                                                              "seeds", "dtype")},
        "grid_rows": [f"{name} (seed {seed})" for name in report["condition_sets"]],
    }  # fmt: skip


def stack_images(paths: list[Path], output: Path, gap: int = 4) -> None:
    """The grids one above the other, with a white gap between them."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in paths]
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)),
                       "white")  # fmt: skip
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height + gap
    canvas.save(output)


STAGES: dict[str, Callable[[Check, float], dict[str, Any]]] = {
    "environment": environment_stage, "data": data_stage, "tests": tests_stage, "throughput": throughput_stage,
    "sampling": sampling_stage, "fp16_resume": fp16_resume_stage, "quality": quality_stage,
}  # fmt: skip
NEEDS_DATA = ("throughput", "sampling", "fp16_resume", "quality")


def run_stage(check: Check, name: str) -> None:
    """Runs one stage inside the budget: a stage may take 1.5x its plan (TIME_BOXED ones their plan), never the
    time kept for the quality run; one that would not get half its plan is skipped.
    """
    plan = check.settings.plan[name]
    quality_later = "quality" in check.args.stages and name != "quality"
    limit = check.left() - (check.settings.plan["quality"] + 30 if quality_later else 0)  # the quality run's minimum
    timeout = limit if name == "quality" else min((1.0 if name in TIME_BOXED else 1.5) * plan, limit)
    tick = time.time()
    if name in NEEDS_DATA and "flags" not in check.data:
        result = {"status": "skipped", "note": "the data stage failed"}
    elif timeout < 0.5 * plan and name != "quality":
        result = {"status": "skipped", "note": f"{check.left():.0f} s of the budget left"}
    else:
        check.say(name, f"start: planned {plan:.0f} s, limit {timeout:.0f} s, {check.left():.0f} s of the budget left")
        try:
            result = STAGES[name](check, timeout)
        except Exception as error:  # one broken stage must not cost the others' results
            with check.log.open("a") as log:
                log.write(f"\n===== {name} raised:\n{traceback.format_exc()}")
            result = {"status": "failed", "note": f"{type(error).__name__}: {error}"}
    result = {"status": "ok", "note": "", **result, "seconds": round(time.time() - tick, 1), "planned": plan}
    check.results["stages"][name] = result
    check.say(name, f"{result['status']} in {result['seconds']:.1f} s (planned {plan:.0f} s) {result['note']}")
    check.save()


def record_install(check: Check) -> None:
    """gpu_check.sh's install of the carried wheels, as the first row of the stage table."""
    wheels = os.environ.get("GPU_CHECK_WHEELS", "").split()
    seconds = float(os.environ.get("GPU_CHECK_INSTALLED_AT") or check.start) - check.start
    note = f"{len(wheels)} wheels from .whl/" if wheels else "no wheels installed (none in .whl/, or --smoke)"
    check.results["stages"]["install"] = {"status": "ok" if wheels else "skipped", "note": note,
                                          "seconds": round(seconds, 1), "planned": check.settings.plan["install"]}
    check.say("install", f"{check.results['stages']['install']['status']} in {seconds:.1f} s "
                         f"(planned {check.settings.plan['install']:.0f} s) {note}")


# ------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True, help="The flat results folder ($OUT on the GPU).")
    parser.add_argument("--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check-work",
                        help="Data, runs and checkpoints (gigabytes on the GPU); kept for a rerun.")
    parser.add_argument("--smoke", action="store_true", help="Every stage with tiny settings, on any machine.")
    parser.add_argument("--evaluator_checkpoint", type=Path, default=None,
                        help="The project's evaluator ({'model': state_dict}); required for the quality stage.")
    parser.add_argument("--conditions", type=Path, nargs="+", default=None, metavar="FILE",
                        help="Condition files (default: the render's test.json and new_test.json).")
    parser.add_argument("--stages", nargs="+", choices=OPTIONAL_STAGES, default=list(OPTIONAL_STAGES),
                        help="Run only these (environment and data always run).")
    parser.add_argument("--budget_seconds", type=float, default=None,
                        help=f"Wall-time budget from gpu_check.sh's start (default {GPU.budget_seconds:.0f}; "
                             f"--smoke {SMOKE.budget_seconds:.0f}).")
    parser.add_argument("--quality_minutes", type=float, default=None,
                        help=f"Training minutes of the quality run (default {GPU.quality_minutes:g}; --smoke "
                             f"{SMOKE.quality_minutes:g}).")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else GPU
    args.budget_seconds = args.budget_seconds or settings.budget_seconds
    args.quality_minutes = args.quality_minutes or settings.quality_minutes
    import torch

    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: the check measures the GPU path (use --smoke for the tiny CPU run)")
    if not args.smoke and "quality" in args.stages and args.evaluator_checkpoint is None:
        parser.error("the quality stage needs --evaluator_checkpoint (train one with scripts/train_evaluator.py and "
                     "carry it, see benchmarks/gpu_prepare.sh), or leave quality out of --stages")
    for path in [args.evaluator_checkpoint, *(args.conditions or [])]:
        if path is not None and not path.is_file():
            parser.error(f"{path} does not exist")
    return args, settings


def main(argv: list[str] | None = None) -> None:
    args, settings = parse_args(argv)
    check = Check(args, settings)
    check.out.mkdir(parents=True, exist_ok=True)
    check.work.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # nothing from an earlier call may pass for this one's
        (check.out / name).unlink(missing_ok=True)
    # Every subprocess reads and writes the data cache in the work dir, and never tries the network.
    os.environ.update({"ICLEVR_CACHE": str(check.work / "cache"), "HF_HOME": str(check.work / "hf-home"),
                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})  # fmt: skip
    check.say("start", f"{'SMOKE, ' if args.smoke else ''}budget {args.budget_seconds:.0f} s, "
                       f"{check.left():.0f} s left; output {check.out}, work {check.work}")
    record_install(check)
    for name in ("environment", "data", *[s for s in OPTIONAL_STAGES if s in args.stages]):
        run_stage(check, name)
    check.save()
    print("\n" + (check.out / "results.md").read_text())
    check.say("done", f"results in {check.out}")
    failed = [name for name, stage in check.results["stages"].items() if stage["status"] == "failed"]
    sys.exit(f"error: stage(s) failed: {', '.join(failed)}" if failed else 0)


if __name__ == "__main__":
    main()

"""Sampler sweep on one trained model: accuracy per sampler, settings and step count, against DDPM 1000.

    python benchmarks/bench_samplers.py --pipeline iclevr-ddpm --evaluator_checkpoint evaluator/checkpoint.pth \
        --work_dir bench-samplers [--steps 10 25 50] [--samplers ddim ddim,eta=1 ...] [--seeds 0 1 2 3 4]

Every sampler (a spec of training/samplers.py: NAME or NAME,key=value,...) runs at every step count with the same
guidance scale and seeds, one image per condition per seed, scored by the evaluator on each condition file
(default: ../shared/iclevr/test.json and new_test.json, else the built-in render's). The reference, DDPM with the
training's 1000 steps, runs once. Each configuration's result is cached in WORK/results/ (rerunning resumes), and
WORK/results.md / results.json hold the table: accuracy mean ± std over seeds per file, their mean, the network
evaluations per image, seconds per image, and the difference to the reference. The defaults sweep the settings
that matter in diffusers for a cosine schedule on pixels: DPM-Solver's lambda_min_clipped, final_sigmas_type and
euler_at_final, timestep_spacing, DDIM's eta, and x0 clipping (on unless `thresholding=false`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import json
import platform
import time

import torch

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.cli import positive_int
from training.cpu_threads import CpuThreads, add_cpu_threads_argument
from training.evaluation import (
    default_condition_files,
    evaluate_pipeline,
    load_condition_sets,
    resolve_condition_files,
)
from training.evaluator import load_evaluator
from training.inference import resolve_dtype
from training.pipeline_loading import load_pipeline
from training.samplers import SamplerError, parse_sampler, set_sampler

SHARED_ICLEVR = Path(__file__).resolve().parents[2] / "shared" / "iclevr"
DEFAULT_SAMPLERS = (
    "dpmsolver++",
    "dpmsolver++,thresholding=false",
    "dpmsolver++,lambda_min_clipped=-5.1",
    "dpmsolver++,final_sigmas_type=sigma_min",
    "dpmsolver++,euler_at_final=true",
    "dpmsolver++,timestep_spacing=trailing",
    "sde-dpmsolver++",
    "sde-dpmsolver++,lambda_min_clipped=-5.1",
    "sde-dpmsolver++,timestep_spacing=trailing",
    "unipc",
    "unipc,timestep_spacing=trailing",
    "ddim",
    "ddim,timestep_spacing=trailing",
    "ddim,timestep_spacing=linspace",
    "ddim,eta=1",
    "ddim,eta=1,timestep_spacing=trailing",
    "ddpm",
    "ddpm,timestep_spacing=trailing",
)
REFERENCE = ("ddpm", 1000)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="A trained pipeline folder or Hub id.")
    parser.add_argument("--evaluator_checkpoint", required=True)
    parser.add_argument("--work_dir", type=Path, required=True, help="Cached results and the tables go here.")
    parser.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS), metavar="SPEC")
    parser.add_argument("--steps", type=positive_int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--conditions", nargs="+", default=None, metavar="FILE",
                        help="Condition files (default: ../shared/iclevr/test.json and new_test.json).")
    parser.add_argument("--no_reference", action="store_true", help="Skip the DDPM 1000-step reference.")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="The UNet's precision; scoring is fp32.")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_cpu_threads_argument(parser)
    return parser


def condition_files(args: argparse.Namespace) -> list[Path]:
    if args.conditions:
        return [Path(path) for path in args.conditions]
    shared = [SHARED_ICLEVR / name for name in ("test.json", "new_test.json")]
    return shared if all(path.is_file() for path in shared) else default_condition_files(None)


def configurations(args: argparse.Namespace) -> list[tuple[str, int]]:
    configs = [(parse_sampler(spec).spec, steps) for spec in args.samplers for steps in args.steps]
    return configs if args.no_reference else [REFERENCE, *configs]


def result_path(work_dir: Path, spec: str, steps: int, guidance: float) -> Path:
    return work_dir / "results" / f"{spec.replace(',', '+').replace('=', '-')}-{steps}-g{guidance:g}.json"


def run(args: argparse.Namespace) -> list[dict]:
    files = resolve_condition_files(condition_files(args))
    device = torch.device(args.device)
    args.dtype = resolve_dtype(args.dtype, device)  # the table names the precision that sampled
    cpu_threads = CpuThreads(args.cpu_threads, device=device)
    pipeline = load_pipeline(args.pipeline, device=device, dtype=DTYPES[args.dtype])
    condition_sets = load_condition_sets(files, pipeline.vocabulary)
    evaluator = load_evaluator(args.evaluator_checkpoint, device)
    base_scheduler = pipeline.scheduler
    results = []
    for spec, steps in configurations(args):
        path = result_path(args.work_dir, spec, steps, args.guidance_scale)
        if path.is_file():
            results.append(json.loads(path.read_text()))
            print(f"{spec} {steps} steps: cached", file=sys.stderr)
            continue
        pipeline.scheduler = base_scheduler
        sampler = set_sampler(pipeline, spec)
        start = time.perf_counter()
        report = evaluate_pipeline(
            pipeline, evaluator, condition_sets, seeds=args.seeds, num_inference_steps=steps,
            guidance_scale=args.guidance_scale, batch_size=args.batch_size, progress=False,
            callback_on_step_end=cpu_threads.step_callback, sampler_kwargs=sampler.call_kwargs,
        ).report  # fmt: skip
        result = {
            "sampler": spec, "steps": steps, "guidance_scale": args.guidance_scale, "seeds": args.seeds,
            "network_evaluations": steps, "seconds": time.perf_counter() - start,
            "seconds_per_image": report["seconds_per_image"], "mean_accuracy": report["mean_accuracy"],
            "condition_sets": {name: {key: r[key] for key in ("accuracy_mean", "accuracy_std", "exact_match_mean")}
                               for name, r in report["condition_sets"].items()},
        }  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
        print(f"{spec} {steps} steps: mean accuracy {result['mean_accuracy']:.3f}, "
              f"{result['seconds_per_image']:.3f} s/image", file=sys.stderr, flush=True)
    return results


def table(results: list[dict], args: argparse.Namespace) -> str:
    sets = list(results[0]["condition_sets"])
    reference = next((r for r in results if (r["sampler"], r["steps"]) == REFERENCE), None)
    best = max((r for r in results if r["steps"] <= 25 and r is not reference), key=lambda r: r["mean_accuracy"],
               default=None)  # fmt: skip
    lines = [
        f"# {args.pipeline}; guidance {args.guidance_scale:g}; seeds {' '.join(map(str, args.seeds))}; UNet "
        f"{args.dtype}; {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "",
        "| sampler | steps | " + " | ".join(f"{name} acc. % (± std)" for name in sets)
        + " | mean % | vs DDPM 1000 | s/image |",
        "|---|---" + "|---" * len(sets) + "|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r is not reference, r["sampler"], r["steps"])):
        accuracy = " | ".join(f"{100 * r['condition_sets'][n]['accuracy_mean']:.1f} ± "
                              f"{100 * r['condition_sets'][n]['accuracy_std']:.1f}" for n in sets)  # fmt: skip
        delta = f"{100 * (r['mean_accuracy'] - reference['mean_accuracy']):+.1f}" if reference else "-"
        mark = "**" if r is best else ""
        lines.append(f"| {mark}{r['sampler']}{mark} | {r['steps']} | {accuracy} | {mark}{100 * r['mean_accuracy']:.1f}"
                     f"{mark} | {delta} | {r['seconds_per_image']:.3f} |")
    if best is not None:
        versus_reference = (
            f" (DDPM 1000: {100 * reference['mean_accuracy']:.1f} %, "
            f"{REFERENCE[1] / best['steps']:.0f}x the network evaluations)" if reference else ""
        )
        lines.append(f"\nbest with <= 25 steps: {best['sampler']} at {best['steps']} steps, "
                     f"{100 * best['mean_accuracy']:.1f} %{versus_reference}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        configurations(args)  # every spec checked before any model is loaded
    except SamplerError as error:
        raise SystemExit(f"error: {error}") from None
    results = run(args)
    text = table(results, args)
    (args.work_dir / "results.md").write_text(text + "\n")
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()

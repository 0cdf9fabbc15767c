"""Score a trained i-CLEVR pipeline with the ResNet-18 evaluator, the course's way.

    python scripts/evaluate.py --pipeline output/ --conditions data/test.json --conditions data/new_test.json \
        --evaluator_checkpoint checkpoint.pth --scheduler dpmsolver++ --num_inference_steps 25 --seeds 0 1 2 3 4

One image per condition per seed, each from its own generator (results do not depend on --batch_size). Prints the
accuracy per condition file (mean ± std over seeds), the exact-match rate and the seconds per image, and writes to
--output_dir: report.json (all results and settings), grid_<file>_seed<S>.png (8 images per row) and
denoising_process.png (the denoising of "red sphere, cyan cylinder, cyan cube", noise on the left).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import json

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.cli import ArgumentParser, FlagError, check_writable, non_negative_int, positive_int
from training.cpu_threads import CpuThreads, add_cpu_threads_argument
from training.evaluation import (
    evaluate_pipeline,
    format_table,
    load_condition_sets,
    resolve_condition_files,
)
from training.errors import one_line_errors
from training.evaluator import load_evaluator
from training.figures import denoising_figure, image_grid
from training.inference import (
    DTYPES,
    add_device_arguments,
    add_guidance_interval_arguments,
    guidance_interval,
    resolve_device,
    resolve_dtype,
)
from training.judge_ceiling import judge_ceiling
from training.pipeline_loading import load_pipeline
from training.samplers import add_scheduler_argument, parse_sampler, sampler_name, set_sampler
from training.sampling import validation_label_lists

DENOISING_FRAMES = 10


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="A saved pipeline folder (training --output_dir) or Hub id.")
    parser.add_argument("--conditions", action="extend", nargs="+", required=True, metavar="FILE",
                        help="test.json-style condition files (a JSON list of label lists); repeat for several.")
    parser.add_argument("--evaluator_checkpoint", required=True,
                        help="The evaluator checkpoint ({'model': state_dict} of a ResNet-18, like checkpoint.pth).")
    add_scheduler_argument(parser)
    parser.add_argument("--num_inference_steps", type=positive_int, default=25)
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    add_guidance_interval_arguments(parser)
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--batch_size", type=positive_int, default=64, help="Images generated at once.")
    parser.add_argument("--judge_ceiling", action="store_true",
                        help="Also score 10 true renders of every list (the evaluator's ceiling on these files).")
    add_device_arguments(parser, dtype_help="The UNet's precision; scoring is fp32.")
    add_cpu_threads_argument(parser)
    return parser


def evaluate(args: argparse.Namespace) -> dict:
    # Cheap checks first, so a typo fails before any model is loaded.
    sampler = parse_sampler(args.scheduler) if args.scheduler else None
    interval = guidance_interval(args)
    condition_files = resolve_condition_files(args.conditions)
    device = resolve_device(args.device)
    args.dtype = resolve_dtype(args.dtype, device)  # the report records what sampled
    check_writable(args.output_dir, "--output_dir")
    cpu_threads = CpuThreads(args.cpu_threads, device=device)
    evaluator = load_evaluator(args.evaluator_checkpoint, device)

    pipeline = load_pipeline(args.pipeline, device=device, dtype=DTYPES[args.dtype])
    if sampler is not None:
        set_sampler(pipeline, sampler)
    sampler_kwargs = {**(sampler.call_kwargs if sampler is not None else {}), **interval}
    vocabulary = pipeline.vocabulary
    condition_sets = load_condition_sets(condition_files, vocabulary)
    sampling = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale}
    evaluation = evaluate_pipeline(
        pipeline, evaluator, condition_sets, seeds=args.seeds, batch_size=args.batch_size, keep_images=True,
        callback_on_step_end=cpu_threads.step_callback, sampler_kwargs=sampler_kwargs, **sampling,
    )

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for (name, seed), images in evaluation.images.items():
        image_grid(images).save(args.output_dir / f"grid_{name}_seed{seed}.png")
    denoising_labels = validation_label_lists(vocabulary)[0]
    denoising_figure(
        pipeline, denoising_labels, DENOISING_FRAMES, seed=args.seeds[0], sampler_kwargs=sampler_kwargs, **sampling
    ).save(args.output_dir / "denoising_process.png")
    report = {
        "settings": {
            "pipeline": args.pipeline,
            "scheduler": sampler.spec if sampler is not None else sampler_name(pipeline.scheduler),
            "scheduler_config": dict(pipeline.scheduler.config),
            **sampling,
            **interval,
            "seeds": args.seeds,
            "evaluator_checkpoint": str(args.evaluator_checkpoint),
            "condition_files": {name: str(path) for name, path in condition_files.items()},
            "device": str(device),
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            **cpu_threads.describe(),
            "denoising_labels": denoising_labels,
        },
        **evaluation.report,
    }
    if args.judge_ceiling:
        report["judge_ceiling"] = ceilings(evaluator, condition_sets, vocabulary, pipeline.unet.config.sample_size)
    (args.output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def ceilings(evaluator, condition_sets: dict[str, list[list[str]]], vocabulary, resolution: int) -> dict:
    """Per condition file, the evaluator's accuracy and exact-match rate on true renders of its lists."""
    found = {}
    for name, label_lists in condition_sets.items():
        try:
            metrics = judge_ceiling(evaluator, label_lists, vocabulary, resolution)
        except ValueError as error:
            raise FlagError(f"--judge_ceiling: {error}") from None
        found[name] = {key: metrics[key] for key in ("accuracy", "exact_match", "num_images")}
    return found


def main(argv: list[str] | None = None) -> None:
    with one_line_errors():
        args = build_parser().parse_args(argv)
        report = evaluate(args)
    print(format_table(report))
    if "judge_ceiling" in report:
        print("the evaluator on true renders of the same lists (the ceiling): " + ", ".join(
            f"{name} {ceiling['accuracy']:.1%}" for name, ceiling in report["judge_ceiling"].items()))
    print(f"report, grids and denoising_process.png written to {args.output_dir}")


if __name__ == "__main__":
    main()

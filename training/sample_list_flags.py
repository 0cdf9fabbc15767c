"""Flags, up-front check, loop and command line shared by the benchmarks that redraw samples.png's label lists.

bench_object_count.py, bench_shape_binding.py and bench_samples_right.py draw the same images (each list with its own
generator per seed, as the training script's samples.png does) from one or more pipelines; all take the same flags
and refuse a wrong pipeline path before any minutes of sampling, and the two that ask the evaluator load it once for
every pipeline.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS, ICLEVRPipeline
from training.cli import ArgumentParser, positive_int
from training.errors import one_line_errors
from training.evaluation import image_generator
from training.evaluator import load_evaluator
from training.inference import add_guidance_interval_arguments, guidance_interval
from training.pipeline_loading import pipeline_vocabulary


def add_sample_list_arguments(parser: argparse.ArgumentParser, *, evaluator: bool = False) -> None:
    """--pipeline, --seeds, --guidance_scale, --num_inference_steps and the guidance interval, with the pipeline's
    defaults, and --output_json; with `evaluator`, also --evaluator_checkpoint."""
    parser.add_argument("--pipeline", nargs="+", required=True, help="pipeline folders or Hub ids")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)),
                        help="one image per list and seed; seed S draws the samples.png of a run with --seed S")
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                        help="classifier-free guidance weight (default: the pipeline's; samples.png's is the "
                             "training run's --validation_guidance_scale; <= 1 turns guidance off)")  # fmt: skip
    parser.add_argument("--num_inference_steps", type=positive_int, default=DEFAULT_INFERENCE_STEPS,
                        help=f"sampler steps (default {DEFAULT_INFERENCE_STEPS}, the pipeline's and samples.png's)")
    add_guidance_interval_arguments(parser)
    if evaluator:
        parser.add_argument("--evaluator_checkpoint", required=True, help="the evaluator's checkpoint.pth")
    parser.add_argument("--output_json", type=Path, default=None, help="also write the measured rows to this file")


def sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call arguments those flags set, as each benchmark passes them on and records them; a reversed
    guidance interval raises a one-line error."""
    return {"guidance_scale": args.guidance_scale, "num_inference_steps": args.num_inference_steps,
            **guidance_interval(args)}


def guidance_cell(row: dict[str, Any]) -> str:
    """A table's guidance cell: the weight, and the interval of steps it runs in when not all of them."""
    start, stop = row["guidance_start"], row["guidance_stop"]
    return f"{row['guidance_scale']:g}" + ("" if (start, stop) == (0.0, 1.0) else f" (steps {start:g}-{stop:g})")


def draw_sample_lists(
    pipe: ICLEVRPipeline, lists: Sequence[Sequence[str]], seed: int, sampling: dict[str, Any]
) -> np.ndarray:
    """(len(lists), H, W, 3) float images in [0, 1], one per list, each with the generator samples.png gives it for
    `seed`: the pictures of a run trained with --seed `seed`."""
    generators = [image_generator(seed, index) for index in range(len(lists))]
    return pipe(lists, **sampling, generator=generators, output_type="np").images


def check_pipelines(paths: Sequence[str]) -> None:
    """Raises a one-line error for the first path that is not a pipeline; reads model_index.json alone."""
    for path in paths:
        pipeline_vocabulary(path)


Judge = Callable[[str, torch.nn.Module, Sequence[int], dict[str, Any]], dict[str, Any]]


def judge_pipelines(args: argparse.Namespace, judge: Judge) -> list[dict[str, Any]]:
    """`judge(path, evaluator, seeds, sampling)` for every --pipeline, with one-line errors; a wrong pipeline path is
    refused before the evaluator loads."""
    with one_line_errors():
        sampling = sampling_settings(args)
        check_pipelines(args.pipeline)  # before minutes of sampling
        evaluator = load_evaluator(args.evaluator_checkpoint)
        return [judge(path, evaluator, args.seeds, sampling) for path in args.pipeline]


def judge_main(
    argv: Sequence[str] | None, *, description: str, judge: Judge, print_table: Callable[[list[dict[str, Any]]], None]
) -> None:
    """The command line of a benchmark that asks the evaluator about samples.png's lists: the shared flags, `judge`
    for every --pipeline, the benchmark's table, and the rows in --output_json when asked."""
    parser = ArgumentParser(description=description)
    add_sample_list_arguments(parser, evaluator=True)
    args = parser.parse_args(argv)
    rows = judge_pipelines(args, judge)
    print_table(rows)
    if args.output_json:
        args.output_json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")

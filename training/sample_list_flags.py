"""The flags and the up-front check that the benchmarks redrawing samples.png's label lists share.

bench_object_count.py and bench_shape_binding.py draw the same images (each list with its own generator per seed,
as the training script's samples.png does) from one or more pipelines; both take the same four flags and refuse a
wrong pipeline path before any minutes of sampling.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS
from training.cli import positive_int
from training.pipeline_loading import pipeline_vocabulary


def add_sample_list_arguments(parser: argparse.ArgumentParser) -> None:
    """--pipeline, --seeds, --guidance_scale and --num_inference_steps, with the pipeline's defaults."""
    parser.add_argument("--pipeline", nargs="+", required=True, help="pipeline folders or Hub ids")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)),
                        help="one image per list and seed; seed S draws the samples.png of a run with --seed S")
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                        help="classifier-free guidance weight (default: the pipeline's; samples.png's is the "
                             "training run's --validation_guidance_scale; <= 1 turns guidance off)")  # fmt: skip
    parser.add_argument("--num_inference_steps", type=positive_int, default=DEFAULT_INFERENCE_STEPS,
                        help=f"sampler steps (default {DEFAULT_INFERENCE_STEPS}, the pipeline's and samples.png's)")


def sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call arguments those flags set, as each benchmark passes them on and records them."""
    return {"guidance_scale": args.guidance_scale, "num_inference_steps": args.num_inference_steps}


def check_pipelines(paths: Sequence[str]) -> None:
    """Raises a one-line error for the first path that is not a pipeline; reads model_index.json alone."""
    for path in paths:
        pipeline_vocabulary(path)

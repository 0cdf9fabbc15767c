"""Does one label give one object? The share of single-label lists a pipeline draws as exactly one object.

    python benchmarks/bench_object_count.py --pipeline iclevr-ddpm [other pipelines ...] [--seeds 0 1 2 3 4 5 6 7]
        [--guidance_scale 4.0]

Label accuracy (scripts/evaluate.py) cannot see duplicates: "blue sphere" drawn as three blue spheres scores 100 %.
Here every one of the vocabulary's labels is asked for alone, once per seed, with the pipeline's saved sampler and
default guidance (or --guidance_scale: guidance makes part of the duplicates), and training/object_count.py counts
the objects drawn. The counter's own reliability is measured in the same run on built-in renders of held-out
scenes at the pipeline's resolution (1, 2 and 3 objects): it is exact for single objects and undercounts crowded
scenes (touching objects merge), so "drawn as 2+" is a lower bound on duplication.
Prints a table; --output_json keeps it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import json
from collections import Counter

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.cli import positive_int
from training.data import resize_image
from training.errors import one_line_errors
from training.object_count import count_objects
from training.pipeline_loading import load_pipeline, pipeline_vocabulary
from training.synthetic_iclevr import render_scene, sample_scenes

CALIBRATION_SEED = 4321  # scenes no training render of seed 0 holds


def counter_reliability(resolution: int, num_scenes: int) -> dict[int, float]:
    """Share of built-in renders with k = 1, 2, 3 objects that the counter counts as exactly k."""
    hits, totals = Counter(), Counter()
    for objects in tqdm(sample_scenes(num_scenes, CALIBRATION_SEED), desc="counter on renders", leave=False):
        for k in range(1, len(objects) + 1):
            image = resize_image(render_scene(objects[:k]), resolution).astype(np.float32) / 255
            hits[k] += count_objects(image) == k
            totals[k] += 1
    return {k: hits[k] / totals[k] for k in sorted(totals)}


def single_label_counts(pipeline_path: str, seeds: list[int], guidance_scale: float) -> dict[str, object]:
    """Objects counted per single-label list and seed, with the pipeline's saved sampler."""
    pipe = load_pipeline(pipeline_path)
    pipe.set_progress_bar_config(disable=True)
    labels = list(pipe.vocabulary.labels)
    counts = []
    for seed in tqdm(seeds, desc=f"sampling {Path(pipeline_path).name}", leave=False):
        images = pipe([[label] for label in labels], guidance_scale=guidance_scale,
                      generator=torch.Generator().manual_seed(seed), output_type="np")
        counts.extend(count_objects(image) for image in images.images)
    return {
        "pipeline": pipeline_path,
        "resolution": pipe.unet.config.sample_size,
        "guidance_scale": guidance_scale,
        "images": len(counts),
        "drawn_as_one": sum(c == 1 for c in counts) / len(counts),
        "drawn_as_two_or_more": sum(c >= 2 for c in counts) / len(counts),
        "mean_objects": float(np.mean(counts)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", nargs="+", required=True, help="pipeline folders or Hub ids")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                        help="classifier-free guidance weight (the pipeline's default; <= 1 turns guidance off)")
    parser.add_argument("--calibration_scenes", type=positive_int, default=300)
    parser.add_argument("--output_json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with one_line_errors():
        for path in args.pipeline:  # every path checked (model_index.json alone) before minutes of sampling
            pipeline_vocabulary(path)
        rows = [single_label_counts(path, args.seeds, args.guidance_scale) for path in args.pipeline]
    resolutions = sorted({row["resolution"] for row in rows})
    reliability = {res: counter_reliability(res, args.calibration_scenes) for res in resolutions}
    print("| pipeline | guidance | images | one label drawn as 1 object | as 2+ | mean objects "
          "| counter exact on renders (1 / 2 / 3 objects) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        exact = " / ".join(f"{share:.0%}" for share in reliability[row["resolution"]].values())
        print(f"| {row['pipeline']} | {row['guidance_scale']:g} | {row['images']} | {row['drawn_as_one']:.1%} "
              f"| {row['drawn_as_two_or_more']:.1%} | {row['mean_objects']:.2f} | {exact} |")
    if args.output_json:
        args.output_json.write_text(json.dumps({"rows": rows, "counter_reliability": reliability}, indent=2) + "\n")


if __name__ == "__main__":
    main()

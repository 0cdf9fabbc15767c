"""Does one label give one object, and does each of samples.png's lists get its number of objects?

    python benchmarks/bench_object_count.py --pipeline iclevr-ddpm [other pipelines ...] [--seeds 0 1 2 3 4 5 6 7]
        [--guidance_scale 4.0] [--num_inference_steps 25]

Label accuracy (scripts/evaluate.py) cannot see duplicates: "blue sphere" drawn as three blue spheres scores 100 %.
Two tables, both with the pipeline's saved sampler, default guidance and step count (or --guidance_scale: guidance
makes part of the duplicates; --num_inference_steps), each with its counter's reliability on built-in renders at
the pipeline's resolution beside it:
- every one of the vocabulary's labels asked for alone, once per seed, counted by training/object_count.py's blob
  counter, which is exact for single objects and undercounts crowded scenes (touching objects merge), so "drawn as
  2+" is a lower bound on duplication;
- the eight label lists of the training script's samples.png (1, 2 and 3 objects), each with its own generator per
  seed exactly as samples.png draws them (seed 0 gives the samples.png of a run trained with --seed 0), counted
  by the colour-aware counter, which also tells touching objects of different colours apart (i-CLEVR's labels).
Prints the tables; --output_json keeps them.
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

from pipeline import ICLEVRPipeline
from pipeline.vocabulary import DEFAULT_LABELS
from training.cli import ArgumentParser, positive_int
from training.data import resize_image
from training.errors import one_line_errors
from training.judge_ceiling import render_label_lists
from training.object_count import count_objects, count_objects_by_colour
from training.pipeline_loading import load_pipeline
from training.sample_list_flags import (
    add_sample_list_arguments,
    check_pipelines,
    draw_sample_lists,
    guidance_cell,
    sampling_settings,
)
from training.sampling import VALIDATION_LABELS, validation_label_lists
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


def single_label_counts(pipe: ICLEVRPipeline, seeds: list[int], sampling: dict[str, float]) -> dict[str, object]:
    """Objects counted per single-label list and seed, with the pipeline's saved sampler and SAMPLING's settings."""
    labels = list(pipe.vocabulary.labels)
    counts = []
    for seed in tqdm(seeds, desc="single labels", leave=False):
        images = pipe([[label] for label in labels], **sampling, generator=torch.Generator().manual_seed(seed),
                      output_type="np")
        counts.extend(count_objects(image) for image in images.images)
    return {
        "resolution": pipe.unet.config.sample_size,
        **sampling,
        "images": len(counts),
        "drawn_as_one": sum(c == 1 for c in counts) / len(counts),
        "drawn_as_two_or_more": sum(c >= 2 for c in counts) / len(counts),
        "mean_objects": float(np.mean(counts)),
    }


def sample_list_counts(pipe: ICLEVRPipeline, seeds: list[int], sampling: dict[str, float]) -> dict[str, object]:
    """How often each of samples.png's lists is drawn with as many objects as it names, over the seeds."""
    lists = validation_label_lists(pipe.vocabulary)  # the lists train_conditional.py draws into samples.png
    right = np.zeros(len(lists), dtype=int)
    for seed in tqdm(seeds, desc="samples.png lists", leave=False):
        images = draw_sample_lists(pipe, lists, seed, sampling)
        right += [count_objects_by_colour(image) == len(names) for image, names in zip(images, lists)]
    return {
        "lists": [", ".join(names) for names in lists],
        "right_per_list": right.tolist(),
        "images": len(seeds) * len(lists),
        "right_count": int(right.sum()) / (len(seeds) * len(lists)),
    }


def list_counter_reliability(resolution: int, renders_per_list: int) -> float:
    """Share of true renders of samples.png's lists (other placements each time) the colour-aware counter gets."""
    lists = [list(names) for names in VALIDATION_LABELS]
    images = render_label_lists(lists, resolution, renders_per_list, seed=CALIBRATION_SEED)
    wanted = [len(names) for names in lists for _ in range(renders_per_list)]
    counts = [count_objects_by_colour(image.permute(1, 2, 0).add(1).div(2).numpy()) for image in images]
    return float(np.mean([count == k for count, k in zip(counts, wanted)]))


def pipeline_counts(path: str, seeds: list[int], sampling: dict[str, float]) -> dict[str, object]:
    """Both measurements of one pipeline; the lists only for i-CLEVR's labels, whose colours the counter knows."""
    pipe = load_pipeline(path)
    row = {"pipeline": path, **single_label_counts(pipe, seeds, sampling)}
    if set(DEFAULT_LABELS) <= set(pipe.vocabulary.labels):
        row["sample_lists"] = sample_list_counts(pipe, seeds, sampling)
    return row


def print_single_label_table(rows: list[dict], reliability: dict[int, dict[int, float]]) -> None:
    print("| pipeline | guidance | steps | images | one label drawn as 1 object | as 2+ | mean objects "
          "| counter exact on renders (1 / 2 / 3 objects) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        exact = " / ".join(f"{share:.0%}" for share in reliability[row["resolution"]].values())
        print(f"| {row['pipeline']} | {guidance_cell(row)} | {row['num_inference_steps']} | {row['images']} "
              f"| {row['drawn_as_one']:.1%} | {row['drawn_as_two_or_more']:.1%} | {row['mean_objects']:.2f} "
              f"| {exact} |")


def print_list_table(rows: list[dict], reliability: dict[int, float]) -> None:
    print("\nsamples.png's lists: " + " · ".join(rows[0]["sample_lists"]["lists"]))
    print("| pipeline | guidance | steps | images | drawn with the right count | per list (of the seeds) "
          "| counter right on true renders of the lists |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        lists = row["sample_lists"]
        print(f"| {row['pipeline']} | {guidance_cell(row)} | {row['num_inference_steps']} | {lists['images']} "
              f"| {lists['right_count']:.1%} | {' '.join(map(str, lists['right_per_list']))} "
              f"| {reliability[row['resolution']]:.1%} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_sample_list_arguments(parser)
    parser.add_argument("--calibration_scenes", type=positive_int, default=300,
                        help="held-out scenes rendered to measure the blob counter")
    parser.add_argument("--calibration_renders_per_list", type=positive_int, default=25,
                        help="true renders of each samples.png list to measure the colour-aware counter")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with one_line_errors():
        sampling = sampling_settings(args)
        check_pipelines(args.pipeline)  # before minutes of sampling
        rows = [pipeline_counts(path, args.seeds, sampling) for path in args.pipeline]
    resolutions = sorted({row["resolution"] for row in rows})
    reliability = {res: counter_reliability(res, args.calibration_scenes) for res in resolutions}
    print_single_label_table(rows, reliability)
    list_rows = [row for row in rows if "sample_lists" in row]
    list_reliability = {res: list_counter_reliability(res, args.calibration_renders_per_list)
                        for res in sorted({row["resolution"] for row in list_rows})}  # fmt: skip
    if list_rows:
        print_list_table(list_rows, list_reliability)
    if args.output_json:
        record = {"rows": rows, "counter_reliability": reliability, "list_counter_reliability": list_reliability}
        args.output_json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

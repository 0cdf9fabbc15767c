"""How many of samples.png's images are right whole: as many objects as the list names, each with its own shape?

    python benchmarks/bench_samples_right.py --pipeline iclevr-ddpm [other pipelines ...]
        --evaluator_checkpoint evaluator/checkpoint.pth [--seeds 0 1 2 3 4 5 6 7] [--guidance_scale 2]

The training script's samples.png is the first picture a user judges a model by: eight label lists, one image each.
bench_object_count.py counts its objects and bench_shape_binding.py judges the shapes of its multi-object lists,
each on its own; an image is right only when both hold at once. This draws the eight lists per seed exactly as
samples.png draws them (seed S gives the samples.png of a run trained with --seed S) and judges every image whole:
the colour-aware counter (training/object_count.py) finds as many objects as the list names, and the evaluator ranks
every requested object above the shapes of its colour that the list does not ask for (training/shape_binding.py).
Prints one table row per pipeline; --output_json keeps them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from training.evaluator import classify
from training.object_count import count_objects_by_colour
from training.pipeline_loading import load_pipeline
from training.sample_list_flags import draw_sample_lists, guidance_cell, judge_main
from training.sampling import validation_label_lists
from training.shape_binding import drawn_with_its_shape, require_iclevr_labels


def samples_right(pipeline_path: str, evaluator: torch.nn.Module, seeds: Sequence[int], sampling: dict) -> dict:
    """Per samples.png list, over the seeds: images with the right count, with every shape, and with both; per seed
    (one samples.png each): its lists with the right count and right whole."""
    pipe = load_pipeline(pipeline_path)
    labels = list(pipe.vocabulary.labels)
    require_iclevr_labels(labels, pipeline_path)
    lists = validation_label_lists(pipe.vocabulary)
    right = {kind: np.zeros(len(lists), dtype=int) for kind in ("count", "shapes", "whole")}
    per_seed = {"count": [], "whole": []}
    for seed in tqdm(seeds, desc="samples.png lists", leave=False):
        images = draw_sample_lists(pipe, lists, seed, sampling)
        probs = classify(evaluator, torch.from_numpy(images).permute(0, 3, 1, 2) * 2.0 - 1.0).tolist()
        count = np.array([count_objects_by_colour(image) == len(names) for image, names in zip(images, lists)])
        shapes = np.array([all(drawn_with_its_shape(name, names, row, labels) for name in names)
                           for row, names in zip(probs, lists)])  # fmt: skip
        for kind, judged in (("count", count), ("shapes", shapes), ("whole", count & shapes)):
            right[kind] += judged
            if kind in per_seed:
                per_seed[kind].append(int(judged.sum()))
    return {"pipeline": pipeline_path, "resolution": pipe.unet.config.sample_size, **sampling,
            "images": len(seeds) * len(lists), "lists": [", ".join(names) for names in lists],
            **{f"right_{kind}_per_list": counts.tolist() for kind, counts in right.items()},
            **{f"right_{kind}_per_seed": tally for kind, tally in per_seed.items()}}  # fmt: skip


def most_lists(row: dict, kind: str) -> int:
    """How many of the seeds' samples.png show more than half of their lists right (`kind`: count or whole)."""
    return sum(2 * right > len(row["lists"]) for right in row[f"right_{kind}_per_seed"])


def print_table(rows: list[dict]) -> None:
    print("| pipeline | guidance | steps | images | right count | every shape its own | right whole "
          "| right whole per list (of the seeds) | samples.png with most lists the right count / right whole |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{sum(row[f'right_{kind}_per_list'])} ({sum(row[f'right_{kind}_per_list']) / row['images']:.1%})"
                 for kind in ("count", "shapes", "whole")]  # fmt: skip
        per_list = " ".join(map(str, row["right_whole_per_list"]))
        print(f"| {row['pipeline']} | {guidance_cell(row)} | {row['num_inference_steps']} | {row['images']} "
              f"| {' | '.join(cells)} | {per_list} "
              f"| {most_lists(row, 'count')} / {most_lists(row, 'whole')} of {len(row['right_count_per_seed'])} |")


def main(argv: list[str] | None = None) -> None:
    judge_main(argv, description=__doc__.split("\n")[0], judge=samples_right, print_table=print_table)


if __name__ == "__main__":
    main()

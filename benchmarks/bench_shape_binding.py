"""Does each object of samples.png's lists get its requested shape, or the shape of another object in the list?

    python benchmarks/bench_shape_binding.py --pipeline iclevr-ddpm [other pipelines ...]
        --evaluator_checkpoint evaluator/checkpoint.pth [--seeds 0 1 2 3 4 5 6 7] [--guidance_scale 4.0]

Label accuracy counts "red cube" as recalled when the evaluator ranks it among the list's top k, which a red
rounded box beside a brown cylinder can still reach. This asks one object at a time (training/shape_binding.py): the
multi-object lists of the training script's samples.png, each with its own generator per seed exactly as samples.png
draws them (seed 0 gives the samples.png of a run trained with --seed 0), and for every requested object whether the
evaluator ranks it above that colour's shapes the list does not ask for. Prints one table row per pipeline (bound /
asked per shape); --output_json keeps them. benchmarks/bench_samples_right.py judges whole images instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

from collections.abc import Sequence

from pipeline.vocabulary import SHAPES
from training.evaluation import generate_and_score
from training.pipeline_loading import load_pipeline
from training.sample_list_flags import guidance_cell, judge_main
from training.sampling import validation_label_lists
from training.shape_binding import drawn_with_its_shape, require_iclevr_labels


def shape_binding(pipeline_path: str, evaluator, seeds: Sequence[int], sampling: dict) -> dict[str, object]:
    """Bound / asked per shape over the multi-object lists of samples.png, one image per list and seed."""
    pipe = load_pipeline(pipeline_path)
    labels = list(pipe.vocabulary.labels)
    require_iclevr_labels(labels, pipeline_path)
    lists = validation_label_lists(pipe.vocabulary)
    items = [{"labels": names, "seed": seed, "index": index}
             for index, names in enumerate(lists) if len(names) > 1 for seed in seeds]  # fmt: skip
    steps_and_scale = {name: sampling[name] for name in ("num_inference_steps", "guidance_scale")}
    interval = {name: sampling[name] for name in ("guidance_start", "guidance_stop")}
    records = generate_and_score(pipe, evaluator, items, **steps_and_scale, sampler_kwargs=interval)
    bound, asked = dict.fromkeys(SHAPES, 0), dict.fromkeys(SHAPES, 0)
    for record in records:
        for label in record["labels"]:
            shape = label.split(" ")[1]
            asked[shape] += 1
            bound[shape] += drawn_with_its_shape(label, record["labels"], record["probs"], labels)
    return {"pipeline": pipeline_path, "resolution": pipe.unet.config.sample_size, "images": len(items),
            **sampling, "bound": bound, "asked": asked}  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print("| pipeline | guidance | steps | images | " + " | ".join(f"{shape}s drawn as {shape}s" for shape in SHAPES)
          + " | all objects |")  # fmt: skip
    print("|---|---|---|---|" + "---|" * (len(SHAPES) + 1))
    for row in rows:
        cells = [f"{row['bound'][shape]} / {row['asked'][shape]}" for shape in SHAPES]
        total = f"{sum(row['bound'].values()) / sum(row['asked'].values()):.1%}"
        print(f"| {row['pipeline']} | {guidance_cell(row)} | {row['num_inference_steps']} | {row['images']} "
              f"| {' | '.join(cells)} | {total} |")


def main(argv: list[str] | None = None) -> None:
    judge_main(argv, description=__doc__.split("\n")[0], judge=shape_binding, print_table=print_table)


if __name__ == "__main__":
    main()

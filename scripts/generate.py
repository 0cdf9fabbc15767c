"""Generate images from a trained i-CLEVR pipeline, without writing code.

    python scripts/generate.py --pipeline iclevr-ddpm --labels "red sphere, cyan cube" --labels "gray cube" \
        --num_images_per_prompt 4 --seed 0 --output_dir out

Each --labels is one label list (names separated by commas); --conditions adds the lists of a test.json-style file.
Image j of every list is drawn from seed --seed + j (one generator per image), so a file's name tells how to make it
again: `01_gray-cube_seed2.png` (list 1) is `--labels "gray cube" --seed 2` with the same settings.
Writes to --output_dir one PNG per image, grid.png (one row per label list, captioned) and manifest.json (labels,
seeds, sampler, steps, guidance and its interval, model id and revision, seconds per image). --scheduler defaults to
the sampler the pipeline was saved with, --num_inference_steps and --guidance_scale to the pipeline's own call
defaults, --guidance_start / --guidance_stop to every step.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import json
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline import LabelError, LabelVocabulary
from training.cli import ArgumentParser, check_writable, non_negative_int, positive_int
from training.cpu_threads import CpuThreads, add_cpu_threads_argument
from training.data import load_condition_file
from training.errors import one_line_errors
from training.figures import captioned_grid
from training.inference import (
    DTYPES,
    add_device_arguments,
    add_guidance_interval_arguments,
    call_defaults,
    guidance_interval,
    resolve_device,
    resolve_dtype,
)
from training.pipeline_loading import load_pipeline, pipeline_vocabulary
from training.samplers import add_scheduler_argument, parse_sampler, sampler_name, set_sampler

MANIFEST = "manifest.json"
GRID = "grid.png"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="A saved pipeline folder (training --output_dir) or Hub id.")
    parser.add_argument("--revision", default=None, help="The Hub revision (branch, tag or commit) of a Hub id.")
    parser.add_argument("--labels", action="append", default=[], metavar='"NAME, NAME"',
                        help='One label list, names separated by commas, e.g. "red sphere, cyan cube"; repeatable.')
    parser.add_argument("--conditions", action="append", default=[], type=Path, metavar="FILE",
                        help="A test.json-style file (a JSON list of label lists); repeatable.")
    parser.add_argument("--num_images_per_prompt", type=positive_int, default=1, help="Images per label list.")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="Image j of every list is drawn from seed + j.")
    add_scheduler_argument(parser)
    parser.add_argument("--num_inference_steps", type=positive_int, default=None,
                        help="Denoising steps (default: the pipeline's own, 25 for this repo's).")
    parser.add_argument("--guidance_scale", type=float, default=None,
                        help="Classifier-free guidance weight; 1 turns it off (default: the pipeline's own).")
    add_guidance_interval_arguments(parser)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--batch_size", type=positive_int, default=32, help="At most this many images per call.")
    add_device_arguments(parser)
    add_cpu_threads_argument(parser)
    return parser


def read_label_lists(args: argparse.Namespace, vocabulary: LabelVocabulary) -> list[list[str]]:
    """--labels then --conditions, every list checked against the pipeline's vocabulary."""
    label_lists = [vocabulary.validate([name.strip() for name in text.split(",")]) for text in args.labels]
    for path in args.conditions:
        label_lists += load_condition_file(path, vocabulary)
    if not label_lists:
        raise LabelError('no label lists given; pass --labels "red sphere, cyan cube" or --conditions FILE.json')
    return label_lists


def image_name(index: int, labels: list[str], seed: int) -> str:
    """`03_red-sphere+cyan-cube_seed2.png`: the list's position (the same list may come twice), its labels, the seed."""
    return f"{index:02d}_" + "+".join(name.replace(" ", "-") for name in labels) + f"_seed{seed}.png"


def generate(args: argparse.Namespace) -> dict[str, Any]:
    # Everything that can be checked without the weights is checked first: a typo fails before any work starts.
    sampler = parse_sampler(args.scheduler) if args.scheduler else None
    interval = guidance_interval(args)
    device = resolve_device(args.device)
    args.dtype = resolve_dtype(args.dtype, device)  # the manifest records what sampled
    check_writable(args.output_dir, "--output_dir")
    vocabulary, commit = pipeline_vocabulary(args.pipeline, revision=args.revision)
    label_lists = read_label_lists(args, vocabulary)
    cpu_threads = CpuThreads(args.cpu_threads, device=device)

    # Rebuilt from this checkout's classes (nothing shipped with the model runs), at the commit the labels came from.
    pipeline = load_pipeline(args.pipeline, device=device, dtype=DTYPES[args.dtype], revision=commit)
    if sampler is not None:
        set_sampler(pipeline, sampler)
    settings = {name: default if getattr(args, name) is None else getattr(args, name)
                for name, default in call_defaults(pipeline).items()}  # fmt: skip
    settings.update(interval)
    per_list = args.num_images_per_prompt
    seeds = [args.seed + j for j in range(per_list)]
    lists_per_call = max(1, args.batch_size // per_list)
    calls = [range(i, min(i + lists_per_call, len(label_lists))) for i in range(0, len(label_lists), lists_per_call)]
    bar = tqdm(total=len(calls) * settings["num_inference_steps"], desc="denoising", unit="step")

    def on_step_end(pipe, step, timestep, callback_kwargs):
        bar.update()
        return cpu_threads.step_callback(pipe, step, timestep, callback_kwargs)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for call in calls:
        tick = time.perf_counter()
        images = pipeline(
            [label_lists[i] for i in call], num_images_per_prompt=per_list, **settings,
            generator=[torch.Generator().manual_seed(seed) for _ in call for seed in seeds],
            callback_on_step_end=on_step_end, **(sampler.call_kwargs if sampler else {}),
        ).images  # fmt: skip
        seconds = (time.perf_counter() - tick) / len(images)
        for position, index in enumerate(call):
            own = images[position * per_list : (position + 1) * per_list]
            rows.append((", ".join(label_lists[index]), own))
            for seed, image in zip(seeds, own):
                name = image_name(index, label_lists[index], seed)
                image.save(args.output_dir / name)
                records.append({"file": name, "labels": label_lists[index], "seed": seed, "seconds": seconds})
    bar.close()
    captioned_grid(rows).save(args.output_dir / GRID)

    manifest = {
        "model": {"id": args.pipeline, "revision": commit},
        "sampler": sampler.spec if sampler is not None else sampler_name(pipeline.scheduler),
        "scheduler_config": dict(pipeline.scheduler.config),
        **settings,
        "num_images_per_prompt": per_list,
        "seed": args.seed,
        "device": str(device),
        "dtype": args.dtype,
        **cpu_threads.describe(),
        "seconds_per_image": sum(record["seconds"] for record in records) / len(records),
        "grid": GRID,
        "images": records,
    }
    (args.output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    with one_line_errors():
        args = build_parser().parse_args(argv)
        manifest = generate(args)
    print(
        f"{len(manifest['images'])} images ({manifest['seconds_per_image']:.3f} s each; {manifest['sampler']}, "
        f"{manifest['num_inference_steps']} steps, guidance {manifest['guidance_scale']:g}) -> {args.output_dir}"
    )


if __name__ == "__main__":
    main()

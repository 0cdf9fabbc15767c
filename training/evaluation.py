"""Scoring a pipeline with the evaluator: condition files x seeds -> accuracy, exact match, grids, timings.

Used by `scripts/evaluate.py`, `benchmarks/bench_samplers.py` and, every `--validation_steps`, by
`train_conditional.py` (training/training_evaluation.py). Work is a flat list of (condition file, seed, condition)
items; every image has its own generator derived from (seed, condition index), so any slice of the items can be
generated and scored on its own — by another batch size or another process — and the records merged once.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from tqdm.auto import tqdm

from pipeline import LabelVocabulary
from training.data import builtin_synthetic_dir, load_condition_file
from training.errors import UserError
from training.evaluator import classify, evaluation_metrics
from training.seeding import derived_generator

CONDITION_FILE_NAMES = ("test.json", "new_test.json")


class EvaluationError(UserError, ValueError):
    """A setting or input the evaluation cannot use."""


@dataclass
class Evaluation:
    """`report`: JSON-ready results (see `summarise`); `images`: {(condition set, seed): images in file order}."""

    report: dict[str, Any]
    images: dict[tuple[str, int], list[Image.Image]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ set-up


def resolve_condition_files(paths: Sequence[str | Path]) -> dict[str, Path]:
    """{file stem: path} for condition files, checked to exist and to have distinct names (they key the report)."""
    if not paths:
        raise EvaluationError("no condition files given; pass at least one test.json-style file")
    files: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise EvaluationError(f"condition file {path} does not exist; give a JSON list of label lists")
        if path.stem in files:
            raise EvaluationError(
                f"two condition files are named {path.stem!r} ({files[path.stem]} and {path}); "
                "rename one, the file name keys the results"
            )
        files[path.stem] = path
    return files


def load_condition_sets(files: Mapping[str, Path], vocabulary: LabelVocabulary) -> dict[str, list[list[str]]]:
    return {name: load_condition_file(path, vocabulary) for name, path in files.items()}


def default_condition_files(train_data_dir: str | Path | None, cache_dir: str | Path | None = None) -> list[Path]:
    """test.json / new_test.json of the training folder; without them, those of the built-in synthetic render
    (rendered into the cache on first use).
    """
    if train_data_dir is not None:
        found = _condition_files_in(Path(train_data_dir))
        if found:
            return found
    return _condition_files_in(builtin_synthetic_dir(cache_dir))


def _condition_files_in(folder: Path) -> list[Path]:
    return [folder / name for name in CONDITION_FILE_NAMES if (folder / name).is_file()]


# ------------------------------------------------------------------------------------ generating and scoring


def image_generator(seed: int, index: int) -> torch.Generator:
    """The generator of condition `index` under `seed`: independent of batching and of the process it runs on.

    A CPU generator, so the initial noise is the same on every device.
    """
    return derived_generator(seed, index)


def evaluation_items(condition_sets: Mapping[str, Sequence[Sequence[str]]], seeds: Sequence[int]) -> list[dict]:
    """Every (condition set, seed, condition) to generate, in report order; `position` orders merged records."""
    items = []
    for name, label_lists in condition_sets.items():
        for seed in seeds:
            for index, labels in enumerate(label_lists):
                items.append({"set": name, "seed": int(seed), "index": index, "labels": list(labels)})
    for position, item in enumerate(items):
        item["position"] = position
    return items


def generate_and_score(
    pipeline: DiffusionPipeline,
    evaluator: torch.nn.Module,
    items: Sequence[dict],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int = 64,
    keep_images: bool = False,
    progress: bool = True,
    callback_on_step_end: Callable | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
) -> list[dict]:
    """One record per item: the item plus the evaluator's `probs`, its share of the batch's generation `seconds`
    and (with `keep_images`) its PIL `image`. Records depend only on their items, not on the batching.
    `callback_on_step_end` goes to the pipeline (e.g. a CPU thread policy's `step_callback`), and so do
    `sampler_kwargs` (further call arguments: a Sampler's `call_kwargs` such as DDIM's eta, the guidance interval).
    """
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    records = []
    bar = tqdm(total=len(items), desc="generating", unit="image", disable=not progress)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        tick = time.perf_counter()
        images = pipeline(
            [item["labels"] for item in batch],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=[image_generator(item["seed"], item["index"]) for item in batch],
            output_type="np",
            callback_on_step_end=callback_on_step_end,
            **(sampler_kwargs or {}),
        ).images  # the conversion to numpy waits for the device, so the timing is complete
        seconds = (time.perf_counter() - tick) / len(batch)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2) * 2.0 - 1.0  # the evaluator takes [-1, 1]
        device_type = next(evaluator.parameters()).device.type
        with torch.autocast(device_type, enabled=False):  # score in float32 even inside mixed-precision training
            probs = classify(evaluator, pixels.float())
        pil_images = VaeImageProcessor.numpy_to_pil(images) if keep_images else [None] * len(batch)
        for item, row, image in zip(batch, probs.tolist(), pil_images):
            records.append({**item, "probs": row, "seconds": seconds, **({"image": image} if keep_images else {})})
        bar.update(len(batch))
    bar.close()
    return records


def summarise(records: Sequence[dict], label_names: Sequence[str]) -> dict[str, Any]:
    """Metrics per condition set (mean and population std over seeds, per seed, per-label recall over all seeds),
    their means, and the generation timing.
    """
    vocabulary = LabelVocabulary(label_names, max_objects=None)
    sets: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["position"]):
        sets.setdefault(record["set"], []).append(record)
    results = {}
    for name, set_records in sets.items():
        by_seed: dict[int, list[dict]] = {}
        for record in set_records:
            by_seed.setdefault(record["seed"], []).append(record)
        per_seed = {str(seed): _metrics(rows, vocabulary) for seed, rows in by_seed.items()}
        accuracies = [m["accuracy"] for m in per_seed.values()]
        exact = [m["exact_match"] for m in per_seed.values()]
        results[name] = {
            "num_conditions": len(next(iter(by_seed.values()))),
            "num_seeds": len(by_seed),
            "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_std": statistics.pstdev(accuracies),
            "exact_match_mean": statistics.fmean(exact),
            "exact_match_std": statistics.pstdev(exact),
            "per_label_recall": _metrics(set_records, vocabulary)["per_label_recall"],
            "per_seed": per_seed,
        }
    seconds = [record["seconds"] for record in records]
    return {
        "condition_sets": results,
        "mean_accuracy": statistics.fmean(r["accuracy_mean"] for r in results.values()),
        "mean_exact_match": statistics.fmean(r["exact_match_mean"] for r in results.values()),
        "num_images": len(records),
        "seconds_per_image": statistics.fmean(seconds),
        "generation_seconds": sum(seconds),
    }


def _metrics(records: Sequence[dict], vocabulary: LabelVocabulary) -> dict[str, Any]:
    probs = torch.tensor([record["probs"] for record in records])
    targets = vocabulary.encode_batch([record["labels"] for record in records])
    return evaluation_metrics(probs, targets, vocabulary.labels)


def evaluate_pipeline(
    pipeline: DiffusionPipeline,
    evaluator: torch.nn.Module,
    condition_sets: Mapping[str, Sequence[Sequence[str]]],
    *,
    seeds: Sequence[int],
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int = 64,
    keep_images: bool = False,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    callback_on_step_end: Callable | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Generates one image per condition per seed, scores them and summarises (see `summarise`).

    With an `accelerator`, every process must call this: each generates a strided slice of the items and the
    records are gathered once, so every process returns the same full `Evaluation`.
    """
    label_names = pipeline.vocabulary.labels
    if getattr(evaluator, "num_labels", len(label_names)) != len(label_names):
        raise EvaluationError(
            f"the evaluator scores {evaluator.num_labels} labels but the pipeline has {len(label_names)}; "
            "use an evaluator trained on the same vocabulary"
        )
    if not seeds:
        raise EvaluationError("no seeds given; pass at least one, e.g. --seeds 0")
    items = evaluation_items(condition_sets, seeds)
    if accelerator is not None:
        items = items[accelerator.process_index :: accelerator.num_processes]
    records = generate_and_score(
        pipeline, evaluator, items, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        batch_size=batch_size, keep_images=keep_images, progress=progress, callback_on_step_end=callback_on_step_end,
        sampler_kwargs=sampler_kwargs,
    )
    if accelerator is not None:
        records = gather_object(records)
    records.sort(key=lambda record: record["position"])
    images: dict[tuple[str, int], list[Image.Image]] = {}
    if keep_images:
        for record in records:
            images.setdefault((record["set"], record["seed"]), []).append(record["image"])
    return Evaluation(summarise(records, label_names), images)


def format_table(report: Mapping[str, Any]) -> str:
    """The per-condition-file accuracy table printed by scripts/evaluate.py."""
    rows = [f"{'conditions':<16}{'images':>10}  {'accuracy (mean ± std)':>22}  {'exact match (mean ± std)':>25}"]
    for name, result in report["condition_sets"].items():
        images = f"{result['num_conditions']}x{result['num_seeds']}"
        accuracy = f"{result['accuracy_mean']:.4f} ± {result['accuracy_std']:.4f}"
        exact = f"{result['exact_match_mean']:.4f} ± {result['exact_match_std']:.4f}"
        rows.append(f"{name:<16}{images:>10}  {accuracy:>22}  {exact:>25}")
    rows.append(
        f"mean accuracy {report['mean_accuracy']:.4f}, mean exact match {report['mean_exact_match']:.4f}, "
        f"{report['seconds_per_image']:.4f} s per image ({report['num_images']} images)"
    )
    return "\n".join(rows)

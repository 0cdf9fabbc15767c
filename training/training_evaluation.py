"""The evaluation run every `--validation_steps` of training: the evaluator's accuracy on the condition files, logged
to the trackers, and the pipeline with the best mean accuracy kept in `output_dir/best`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline

from pipeline import LabelVocabulary
from training.atomic_folders import replace_folder, temporary_folder
from training.evaluation import default_condition_files, evaluate_pipeline, load_condition_sets, resolve_condition_files
from training.evaluator import load_evaluator

BEST_FOLDER = "best"
BEST_INFO = "best.json"


class TrainingEvaluation:
    """The evaluation run every `--validation_steps` in training: the given seeds, the validation sampler settings; logs
    the scores to the trackers and keeps the pipeline with the best mean accuracy in `output_dir/best`.
    """

    def __init__(
        self,
        evaluator: torch.nn.Module,
        condition_sets: Mapping[str, Sequence[Sequence[str]]],
        output_dir: str | Path,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        seeds: Sequence[int],
        batch_size: int,
        keep_previous_best: bool = False,
    ):
        self.evaluator = evaluator
        self.condition_sets = condition_sets
        self.best_dir = Path(output_dir) / BEST_FOLDER
        self.settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
        self.seeds = list(seeds)
        self.batch_size = batch_size
        # A resumed run only replaces best/ with something better than what it kept before; a new run starts over.
        best_info = self.best_dir / BEST_INFO
        self.best_accuracy = -1.0
        if keep_previous_best and best_info.is_file():
            self.best_accuracy = _best_accuracy(best_info)

    def __call__(self, accelerator: Accelerator, pipeline: DiffusionPipeline, step: int) -> dict[str, Any]:
        """Call on every process (the conditions are split across them); only the main process writes."""
        report = evaluate_pipeline(
            pipeline, self.evaluator, self.condition_sets, seeds=self.seeds, batch_size=self.batch_size,
            progress=False, accelerator=accelerator, **self.settings,
        ).report
        scalars = {"evaluation/mean_accuracy": report["mean_accuracy"]}
        for name, result in report["condition_sets"].items():
            scalars[f"evaluation/{name}/accuracy"] = result["accuracy_mean"]
            scalars[f"evaluation/{name}/exact_match"] = result["exact_match_mean"]
        accelerator.log(scalars, step=step)
        if report["mean_accuracy"] > self.best_accuracy:
            self.best_accuracy = report["mean_accuracy"]
            if accelerator.is_main_process:
                self._save_best(pipeline, step, report)
        return report

    def _save_best(self, pipeline: DiffusionPipeline, step: int, report: Mapping[str, Any]) -> None:
        info = {
            "step": step,
            "mean_accuracy": report["mean_accuracy"],
            "accuracy": {name: r["accuracy_mean"] for name, r in report["condition_sets"].items()},
            "exact_match": {name: r["exact_match_mean"] for name, r in report["condition_sets"].items()},
            "seeds": self.seeds,
            **self.settings,
        }
        # Written beside best/ and swapped in, so a crash never leaves a half-written or no best pipeline.
        with temporary_folder(self.best_dir.parent, f".{self.best_dir.name}.tmp-") as work:
            pipeline.save_pretrained(work)
            (work / BEST_INFO).write_text(json.dumps(info, indent=2) + "\n")
            replace_folder(work, self.best_dir)


def _best_accuracy(best_info: Path) -> float:
    """The mean accuracy best/ was kept for; -1 (any evaluation replaces it) when best.json does not say."""
    try:
        accuracy = json.loads(best_info.read_text())["mean_accuracy"]
    except (ValueError, KeyError, TypeError):  # not JSON, not an object, no accuracy
        return -1.0
    return float(accuracy) if isinstance(accuracy, (int, float)) else -1.0


def load_training_evaluation(
    args: argparse.Namespace, vocabulary: LabelVocabulary, accelerator: Accelerator
) -> TrainingEvaluation | None:
    """The in-training evaluation from the training flags; None without --evaluator_checkpoint."""
    if not args.evaluator_checkpoint:
        return None
    with accelerator.main_process_first():  # the built-in render, if needed, happens once
        paths = args.evaluation_conditions or default_condition_files(args.train_data_dir, args.cache_dir)
    condition_sets = load_condition_sets(resolve_condition_files(paths), vocabulary)
    return TrainingEvaluation(
        load_evaluator(args.evaluator_checkpoint, accelerator.device),
        condition_sets,
        args.output_dir,
        num_inference_steps=args.validation_inference_steps,
        guidance_scale=args.validation_guidance_scale,
        seeds=args.evaluation_seeds or [args.seed],
        batch_size=args.train_batch_size,
        keep_previous_best=bool(args.resume_from_checkpoint),
    )

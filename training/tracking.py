"""Experiment trackers (TensorBoard, W&B) behind Accelerate: run config, resumable W&B runs, images with captions,
and the final pipeline as a W&B artifact.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from accelerate import Accelerator
from PIL import Image

# The W&B run id of the run that writes an output_dir; a run resumed from one of its checkpoints continues it.
WANDB_RUN_ID_FILE = "wandb_run_id.txt"


def uses_wandb(report_to: str) -> bool:
    return report_to in ("wandb", "all")


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """The full run config in the plain types every tracker accepts (TensorBoard's hparams refuse None and lists)."""
    config = {}
    for key, value in vars(args).items():
        if value is None:
            value = "none"
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        config[key] = value
    return config


def init_trackers(
    accelerator: Accelerator, args: argparse.Namespace, config: dict[str, Any], resumed_from: Path | None
) -> None:
    """Starts the trackers on the main process. W&B writes its run files under output_dir/logging_dir; a run
    resumed from a checkpoint logs into the W&B run of the training that wrote the checkpoint.
    """
    output_dir = Path(args.output_dir)
    init_kwargs: dict[str, dict[str, Any]] = {}
    if uses_wandb(args.report_to) and accelerator.is_main_process:
        wandb_dir = output_dir / args.logging_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs["wandb"] = {"dir": str(wandb_dir)}
        if args.tracker_run_name:
            init_kwargs["wandb"]["name"] = args.tracker_run_name
        previous_id = resumed_from.parent / WANDB_RUN_ID_FILE if resumed_from is not None else None
        if previous_id is not None and previous_id.is_file():
            init_kwargs["wandb"].update(id=previous_id.read_text().strip(), resume="allow")
    accelerator.init_trackers(args.tracker_project_name, config=config, init_kwargs=init_kwargs)
    if uses_wandb(args.report_to) and accelerator.is_main_process:
        (output_dir / WANDB_RUN_ID_FILE).write_text(accelerator.get_tracker("wandb", unwrap=True).id + "\n")


def logged_scalars(output_dir: str | Path, tag: str, *, logging_dir: str = "logs",
                   project: str = "iclevr-ddpm") -> dict[int, float]:
    """{step: value} of one scalar a run logged to TensorBoard under output_dir/logging_dir/project (every event
    file there, oldest first: a run resumed in the same folder adds one).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted((Path(output_dir) / logging_dir / project).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every step
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({event.step: event.value for event in accumulator.Scalars(tag)})
    return values


def log_images(
    accelerator: Accelerator, key: str, images: Sequence[Image.Image], captions: Sequence[str], step: int
) -> None:
    """Sends images to every active tracker, each with its caption (e.g. its label list)."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({key: [wandb.Image(img, caption=cap) for img, cap in zip(images, captions)]}, step=step)
        elif tracker.name == "tensorboard":
            batch = np.stack([np.asarray(img.convert("RGB")) for img in images])
            tracker.writer.add_images(key, batch, step, dataformats="NHWC")
            tracker.writer.add_text(f"{key}/captions", "\n\n".join(f"{i}: {c}" for i, c in enumerate(captions)), step)
            tracker.writer.flush()


def pipeline_files(pipeline_dir: str | Path) -> list[Path]:
    """The files `save_pretrained` wrote: model_index.json and the folders of the components it names."""
    pipeline_dir = Path(pipeline_dir)
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    components = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]
    files = [pipeline_dir / "model_index.json"]
    for name in sorted(components):
        files += sorted(path for path in (pipeline_dir / name).rglob("*") if path.is_file())
    return files


def log_pipeline_artifact(accelerator: Accelerator, pipeline_dir: str | Path, step: int) -> None:
    """Logs the saved pipeline (not the checkpoints or grids beside it) as a W&B artifact of type "model"."""
    import wandb

    run = accelerator.get_tracker("wandb", unwrap=True)
    artifact = wandb.Artifact(f"pipeline-{run.id}", type="model", metadata={"step": step})
    for path in pipeline_files(pipeline_dir):
        artifact.add_file(str(path), name=path.relative_to(pipeline_dir).as_posix())
    run.log_artifact(artifact, aliases=["latest", f"step-{step}"])

"""Loading a trained pipeline to score or use it, without running or unpickling anything that came with it.

A pipeline folder (a training --output_dir, an export) or Hub repo may ship Python code (pipeline_iclevr.py, ...) and
other weight formats; `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` would import that code. Here
the pipeline is rebuilt from this checkout's classes, the folder's configs and its safetensors weights only: a
planted .py file is never imported and a pickled weights file never read. From the Hub only those files are
downloaded (at a revision, when given). `pipeline_vocabulary` reads the labels from model_index.json alone, so label
lists can be checked before any weights load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import SchedulerMixin
from huggingface_hub import snapshot_download
from safetensors import SafetensorError

from pipeline import ConditionalUNet2DModel, ICLEVRPipeline, LabelVocabulary
from pipeline.vocabulary import DEFAULT_LABELS
from training.evaluation import EvaluationError

# What a pipeline is rebuilt from; nothing else is read or downloaded.
PIPELINE_FILES = ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                  "scheduler/scheduler_config.json")  # fmt: skip


def load_pipeline(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> ICLEVRPipeline:
    """An `ICLEVRPipeline` from a local pipeline folder or a Hub id at `revision` (see the module docstring)."""
    folder = _local_folder(name_or_path) or _download(name_or_path, PIPELINE_FILES, revision)
    try:
        pipeline = _rebuild(folder, dtype)
    except (OSError, ValueError, SafetensorError, TypeError, KeyError) as error:
        # diffusers' message may point at a stack trace that this one-line error does not print.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = reason.replace(" Please check out the root cause in the stacktrace above.", "")
        raise EvaluationError(f"cannot load the pipeline {name_or_path!r}: {reason}") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def pipeline_vocabulary(name_or_path: str, *, revision: str | None = None) -> tuple[LabelVocabulary, str | None]:
    """The label vocabulary of a pipeline folder or Hub id, from its model_index.json alone; and the Hub commit it
    was read at (None for a local folder), to load the weights at that same commit."""
    folder = _local_folder(name_or_path)
    commit = None
    if folder is None:
        folder = _download(name_or_path, ("model_index.json",), revision)
        commit = folder.name  # huggingface_hub's snapshot folders are named by commit
    labels = _read_index(folder / "model_index.json").get("labels") or DEFAULT_LABELS
    return LabelVocabulary(sorted(labels, key=labels.__getitem__) if isinstance(labels, dict) else labels), commit


def _local_folder(name_or_path: str) -> Path | None:
    """The pipeline folder `name_or_path` names, or None for a Hub id; anything else is refused in one line."""
    folder = Path(name_or_path).expanduser()
    if (folder / "model_index.json").is_file():
        return folder
    if folder.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise EvaluationError(
            f"--pipeline {name_or_path}: no pipeline there (no model_index.json); give a training "
            "--output_dir or a Hub id like user/iclevr-ddpm"
        )
    return None


def _download(repo_id: str, files: tuple[str, ...], revision: str | None) -> Path:
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(files), revision=revision))
    except Exception as error:  # a missing repo, a network failure: every one means "cannot load"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EvaluationError(
            f"cannot load the pipeline {repo_id!r} (no local folder with model_index.json, so a Hub id): "
            f"{type(error).__name__}: {reason}"
        ) from None


def _rebuild(folder: Path, dtype: torch.dtype) -> ICLEVRPipeline:
    index = _read_index(folder / "model_index.json")
    scheduler_class = getattr(diffusers, str(index["scheduler"][1]), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise EvaluationError(f"{folder / 'model_index.json'}: {index['scheduler'][1]!r} is not a diffusers scheduler")
    unet = ConditionalUNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, dtype=dtype)
    scheduler = scheduler_class.from_pretrained(folder / "scheduler")
    return ICLEVRPipeline(unet=unet, scheduler=scheduler, labels=index.get("labels") or DEFAULT_LABELS)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvaluationError(f"{path} is not valid JSON ({error})") from None
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    class_name = class_name[-1] if isinstance(class_name, list) and class_name else class_name
    unet, scheduler = (index.get(key) if isinstance(index, dict) else None for key in ("unet", "scheduler"))
    if (
        class_name != ICLEVRPipeline.__name__
        or not (isinstance(unet, list) and len(unet) == 2 and unet[1] == ConditionalUNet2DModel.__name__)
        or not (isinstance(scheduler, list) and len(scheduler) == 2)
    ):
        raise EvaluationError(
            f"{path} does not describe an ICLEVRPipeline with a ConditionalUNet2DModel unet and a scheduler; give "
            "a folder that ICLEVRPipeline.save_pretrained or push_to_hub.py wrote"
        )
    return index

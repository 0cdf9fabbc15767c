"""Loading a trained pipeline to use it: a training --output_dir, an exported folder or a Hub id, on a device and in
a precision. Used by scripts/generate.py, scripts/evaluate.py and scripts/demo.py.

The demo also runs from an exported folder or a Space (training/export.py ships this file with it), where this
repo's `pipeline` package is not importable; there the folder ships its own pipeline code, which diffusers imports
(`trust_remote_code=True`). So this module imports only installed packages at the top.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

# The precisions a pipeline's UNet can sample in (`--dtype`); latents and scheduler arithmetic stay float32.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PipelineLoadingError(ValueError):
    """A pipeline, device or precision that cannot be used; the message says what to give instead."""


def resolve_device(name: str | None) -> torch.device:
    """`--device`: cpu or cuda[:N]; None picks cuda when available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise PipelineLoadingError(f"--device {name!r} is not supported; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineLoadingError("--device cuda was given but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def load_pipeline(
    name_or_path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> DiffusionPipeline:
    """A local folder saved with this repo's classes loads with `ICLEVRPipeline`; a Hub id (at `revision`), or a
    folder that ships its own pipeline code, loads through `DiffusionPipeline` with that code (`trust_remote_code`).
    """
    folder = _local_folder(name_or_path)
    try:
        if folder is not None and _saved_with_local_classes(folder):
            from pipeline import ICLEVRPipeline  # only a training output needs this checkout's classes

            pipeline = ICLEVRPipeline.from_pretrained(folder, dtype=dtype)
        else:
            pipeline = DiffusionPipeline.from_pretrained(
                str(folder or name_or_path), dtype=dtype, trust_remote_code=True, revision=revision
            )
    except OSError as error:
        raise _loading_error(name_or_path, folder, error) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def call_defaults(pipeline: DiffusionPipeline) -> dict[str, Any]:
    """The pipeline's own `num_inference_steps` and `guidance_scale` defaults, read from its `__call__`: a
    pipeline shipped with other code (a Hub repo, an export) brings its own."""
    parameters = inspect.signature(type(pipeline).__call__).parameters
    return {name: parameters[name].default for name in ("num_inference_steps", "guidance_scale")}


def pipeline_labels(name_or_path: str, *, revision: str | None = None) -> tuple[list[str] | None, str | None]:
    """The label vocabulary of a pipeline in model input order (None if its config names none), read from its
    model_index.json alone (for a Hub id only that file is downloaded), so label lists can be checked before any
    weights load; and the Hub commit it came from (None for a local folder).
    """
    folder = _local_folder(name_or_path)
    try:
        config, commit = DiffusionPipeline.load_config(
            str(folder or name_or_path), revision=revision, return_commit_hash=True
        )
    except OSError as error:
        raise _loading_error(name_or_path, folder, error) from None
    labels = config.get("labels")
    if isinstance(labels, dict):  # objects.json's {"gray cube": 0, ...}, as the pipeline saves it
        labels = sorted(labels, key=labels.__getitem__)
    return labels, commit


def _local_folder(name_or_path: str) -> Path | None:
    """The folder a pipeline name points at, or None for a Hub id; anything else is refused in one line."""
    folder = Path(name_or_path).expanduser()
    if (folder / "model_index.json").is_file():
        return folder
    if folder.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise PipelineLoadingError(
            f"--pipeline {name_or_path}: no pipeline there (no model_index.json); give a training "
            "--output_dir or a Hub id like user/iclevr-ddpm"
        )
    return None


def _loading_error(name_or_path: str, folder: Path | None, error: OSError) -> PipelineLoadingError:
    # diffusers' message points at a stack trace that this one-line error does not print.
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    reason = reason.replace(" Please check out the root cause in the stacktrace above.", "")
    where = "" if folder is not None else " (no local folder with model_index.json, so a Hub id)"
    return PipelineLoadingError(f"cannot load the pipeline {name_or_path!r}{where}: {reason}")


def _saved_with_local_classes(folder: Path) -> bool:
    """True when model_index.json names this repo's `pipeline` package for the unet, False for shipped code."""
    index_file = folder / "model_index.json"
    try:
        unet_entry = json.loads(index_file.read_text()).get("unet", [None])
    except (json.JSONDecodeError, AttributeError):
        raise PipelineLoadingError(f"{index_file} is not a diffusers model_index.json") from None
    return bool(unet_entry) and str(unet_entry[0]).startswith("pipeline.")

"""What a checkpoint folder holds, and checking every file of it without running any code.

`accelerator.save_state` writes model.safetensors (safetensors), optimizer.bin, scheduler.bin and
random_states_<process>.pkl (and scaler.pt under fp16) with torch.save; the EMA hook writes unet_ema/ (config.json
and safetensors, see training/ema_state.py); `save_checkpoint` writes checkpoint.json last: the step and what run
wrote it. Accelerate 1.15 reads the torch.save files with `torch.load(weights_only=True)` (its `load`), which builds
only tensors and plain containers, so a pickle that would run code is refused; it only fully unpickles
custom_checkpoint_<i>.pkl files (registered custom objects), which this project never writes and refuses to load.

`verify_checkpoint` reads every file the same safe way before anything is loaded, so a truncated, foreign or planted
file is reported in one line naming the file, and "latest" can fall back to an earlier checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open

from training.ema_state import EMA_FOLDER, EMAStateError, check_ema_state
from training.errors import UserError

CHECKPOINT_INFO = "checkpoint.json"
MODEL_WEIGHTS = "model.safetensors"
OPTIMIZER_STATE = "optimizer.bin"
SCHEDULER_STATE = "scheduler.bin"
PICKLED_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
# What a checkpoint's writer is compared on (the model by its config, not by the name it was given).
SIGNATURE_FIELDS = ("model_config", "resolution", "num_labels", "use_ema", "prediction_type")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, unreadable); the message names the file."""


class ForeignCheckpointError(CheckpointError):
    """A complete checkpoint written by a run with another model, resolution, label set, EMA setting or prediction
    type."""


def describe(signature: Mapping[str, Any]) -> str:
    ema = "with" if signature.get("use_ema") else "without"
    return (f"the {signature.get('model')!s} model at resolution {signature.get('resolution')}, "
            f"{signature.get('num_labels')} labels, {ema} EMA, predicting {signature.get('prediction_type')}")


def read_checkpoint_info(folder: Path) -> dict[str, Any]:
    """checkpoint.json: {"step": ..., **signature, "max_train_steps": ...}; raises `CheckpointError` when it is
    missing or malformed."""
    path = folder / CHECKPOINT_INFO
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder} is incomplete: it has no {CHECKPOINT_INFO}, which a save writes last"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        raise CheckpointError(f"{path} does not hold a checkpoint's step and settings")
    total = info.get("max_train_steps", 1)
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        raise CheckpointError(f"{path} records max_train_steps {total!r}; a run's length is a positive whole number")
    return info


def verify_checkpoint(
    folder: Path, signature: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], process_index: int = 0
) -> None:
    """Raises `ForeignCheckpointError` for another run's checkpoint and `CheckpointError` for any file that is
    missing, cut short, planted or inconsistent with the model (`shapes`: parameter name -> shape)."""
    info = read_checkpoint_info(folder)
    differing = [field for field in SIGNATURE_FIELDS if info.get(field) != signature[field]]
    if differing:
        raise ForeignCheckpointError(
            f"{folder} was written for {describe(info)}; this run trains {describe(signature)} (a different "
            f"{', '.join(differing)}): resume with the flags that wrote it, or give a new --output_dir"
        )
    planted = sorted(p.name for p in folder.glob("custom_checkpoint_*.pkl"))
    if planted:
        raise CheckpointError(
            f"{folder} holds {planted[0]}, a pickled custom state that this project never writes and never loads "
            "(unpickling it could run code); delete that file or resume from another checkpoint"
        )
    _check_model_weights(folder / MODEL_WEIGHTS, shapes)
    random_states = folder / f"random_states_{process_index}.pkl"
    for required in (folder / OPTIMIZER_STATE, folder / SCHEDULER_STATE, random_states):
        if not required.is_file():
            raise CheckpointError(f"{folder} is incomplete: it has no {required.name} (a launch with fewer processes "
                                  "writes fewer random_states files; resume with as many processes as wrote it)")
    states = {path.name: load_weights_only(path) for path in sorted(folder.iterdir())
              if path.suffix in PICKLED_SUFFIXES}  # fmt: skip
    _check_optimizer(states[OPTIMIZER_STATE], shapes, folder / OPTIMIZER_STATE)
    if not isinstance(states[SCHEDULER_STATE], dict) or "last_epoch" not in states[SCHEDULER_STATE]:
        raise CheckpointError(f"{folder / SCHEDULER_STATE} does not hold a learning-rate scheduler state")
    if not isinstance(states[random_states.name], dict) or "torch_manual_seed" not in states[random_states.name]:
        raise CheckpointError(f"{random_states} does not hold the random number generator states")
    if signature["use_ema"]:
        try:
            check_ema_state(folder / EMA_FOLDER, shapes)
        except EMAStateError as error:
            raise CheckpointError(str(error)) from None


def _check_model_weights(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    try:
        with safe_open(str(path), framework="pt") as tensors:
            found = {key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} is incomplete: it has no {path.name}") from None
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} cannot be read ({error})") from None
    missing = [key for key in shapes if key not in found]
    unexpected = [key for key in found if key not in shapes]
    wrong = [key for key in shapes if key in found and found[key] != tuple(shapes[key])]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise CheckpointError(
            f"{path} does not fit the model: {len(missing)} missing, {len(unexpected)} unexpected and {len(wrong)} "
            f"mis-shaped weights (e.g. {example})"
        )


def load_weights_only(path: Path) -> Any:
    """A torch file read by Accelerate's own loader (torch.load with weights_only=True, plus the numpy types of its
    RNG states); `CheckpointError` naming the file when it cannot be read that way."""
    try:
        return accelerate_load(path, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - whatever the unpickler raises, the file cannot be used
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "Unsupported global" in str(error) or "Weights only load failed" in reason:
            reason = "it pickles Python objects that are not tensors or plain containers, refused unexecuted"
        elif isinstance(error, EOFError) or "zip archive" in reason:
            reason = f"it is empty or cut short ({reason})"
        raise CheckpointError(f"{path} cannot be read safely: {reason}") from None


def _check_optimizer(state: Any, shapes: Mapping[str, tuple[int, ...]], path: Path) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list) or not isinstance(
        state.get("state"), dict
    ):
        raise CheckpointError(f"{path} does not hold an optimizer state")
    count = sum(len(group.get("params", [])) for group in state["param_groups"] if isinstance(group, dict))
    if count != len(shapes):
        raise CheckpointError(f"{path} holds the state of {count} parameters; the model has {len(shapes)}")
    ordered = list(shapes.values())  # one parameter group over model.parameters(), in the model's order
    for index, moments in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(ordered) or not isinstance(moments, dict):
            raise CheckpointError(f"{path} holds a state for parameter {index!r}, which the model does not have")
        for value in moments.values():
            if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != tuple(ordered[index]):
                raise CheckpointError(f"{path}: the state of parameter {index} does not fit the model's shape")

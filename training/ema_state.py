"""The EMA in a checkpoint, as diffusers' training examples keep it: `checkpoint-STEP/unet_ema/` written by
`EMAModel.save_pretrained` (config.json with the EMA settings, safetensors weights) and read back with
safetensors, through Accelerate's save/load state hooks.

Registering the EMA with `accelerator.register_for_checkpointing` instead would pickle it to custom_checkpoint_0.pkl,
which Accelerate loads with full unpickling: a crafted checkpoint could run code. Here nothing is unpickled, and a
folder whose settings or weights are incomplete is refused, never half-loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from training.errors import UserError

EMA_FOLDER = "unet_ema"
# What EMAModel.save_pretrained writes into config.json beside the model's own arguments, with the accepted types.
EMA_SETTINGS: dict[str, tuple[type, ...]] = {
    "decay": (float, int), "min_decay": (float, int), "optimization_step": (int,), "update_after_step": (int,),
    "use_ema_warmup": (bool,), "inv_gamma": (float, int), "power": (float, int),
}  # fmt: skip


class EMAStateError(UserError, ValueError):
    """An EMA folder that is missing, incomplete or does not fit the model."""


def register_ema_checkpointing(accelerator: Accelerator, ema: EMAModel) -> None:
    """Makes `accelerator.save_state` / `load_state` write and read `ema` as `unet_ema/` in the checkpoint."""

    def save(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            folder = Path(output_dir) / EMA_FOLDER
            ema.save_pretrained(str(folder))
            # The model's save_pretrained copies its source file beside the weights, for AutoModel's remote code;
            # a checkpoint holds data only.
            for code in folder.glob("*.py"):
                code.unlink()

    def load(models: list, input_dir: str) -> None:
        folder = Path(input_dir) / EMA_FOLDER
        shapes = parameter_shapes(accelerator.unwrap_model(models[0], keep_torch_compile=False))
        settings = check_ema_state(folder, shapes)
        weights = load_file(folder / SAFETENSORS_WEIGHTS_NAME, device=str(accelerator.device))
        ema.load_state_dict({**settings, "shadow_params": [weights[name] for name in shapes]})

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def check_ema_state(folder: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The EMA settings in `folder`; raises `EMAStateError` unless it holds every setting and one weight of the right
    shape per parameter (`shapes`: parameter name -> shape, in the model's order), in safetensors."""
    config_file, weights_file = folder / CONFIG_NAME, folder / SAFETENSORS_WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        missing = " and ".join(f.name for f in (config_file, weights_file) if not f.is_file())
        raise EMAStateError(f"the EMA state {folder} is incomplete: no {missing}")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EMAStateError(f"the EMA settings {config_file} are not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise EMAStateError(f"the EMA settings {config_file} are not a JSON object")
    settings = {}
    for key, types in EMA_SETTINGS.items():
        value = config.get(key)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise EMAStateError(f"the EMA settings {config_file} lack a valid {key!r} (found {value!r})")
        settings[key] = float(value) if float in types else value
    try:
        with safe_open(str(weights_file), framework="pt") as tensors:
            found = {key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()}
    except (SafetensorError, OSError) as error:
        raise EMAStateError(f"the EMA weights {weights_file} cannot be read ({error})") from None
    _check_shapes(found, shapes, weights_file, "the EMA weights")
    return settings


def _check_shapes(found: Mapping[str, tuple], expected: Mapping[str, tuple], path: Path, what: str) -> None:
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    if missing or unexpected:
        detail = f"{len(missing)} missing (e.g. {missing[0]})" if missing else f"{len(unexpected)} unexpected"
        raise EMAStateError(f"{what} {path} do not fit the model: {detail} of {len(expected)} parameters")
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            raise EMAStateError(f"{what} {path}: {key} has shape {tuple(found[key])}, the model's is {tuple(shape)}")


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape: what the EMA weights of `model` must hold."""
    return {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}

"""Model size presets, chosen like diffusers' examples choose `--model_config_name_or_path`.

A preset name ("tiny", "cpu", "gpu") or a path to a ConditionalUNet2DModel config JSON (a file, or a folder
holding config.json as written by `save_pretrained`/`save_config`) gives the model's config.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from pipeline.conditional_unet import ConditionalUNet2DModel
from training.cli import closest
from training.errors import UserError


class ModelConfigError(UserError, ValueError):
    """A preset name or model config file that does not give a ConditionalUNet2DModel for the resolution."""


# Every preset scales and shifts its normalised features by the time-plus-label embedding (AdaGN,
# resnet_time_scale_shift="scale_shift") instead of adding it: the labels steer the model faster
# (benchmarks/bench_recipe.py, README: Recipe).
PRESETS: dict[str, dict[str, Any]] = {
    # Tests: the smallest model that still exercises every block type (down/up, attention, mid attention).
    "tiny": {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        "resnet_time_scale_shift": "scale_shift",
    },
    # A model that learns i-CLEVR in minutes on a laptop CPU; attention only at the lowest resolution, where
    # it is cheap (8x8 at 64x64 input, 4x4 at 32x32).
    "cpu": {
        "block_out_channels": (32, 64, 128, 128),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": 32,
        "norm_num_groups": 16,
        "resnet_time_scale_shift": "scale_shift",
        # The labels reach every block through the timestep embedding, which 4 x 32 channels would make 128 wide; at
        # the gpu preset's 512 the quick start scores 5.1 / 4.0 points more on test / new_test (three training seeds;
        # README: What the quick start gives).
        "time_embedding_dim": 512,
    },
    # Near the reference seeds' scale (~65 M parameters); attention at 16x16 and 8x8 for 64x64 input.
    "gpu": {
        "block_out_channels": (128, 256, 256, 512),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": 64,
        "norm_num_groups": 32,
        "resnet_time_scale_shift": "scale_shift",
    },
}

# diffusers' EMAModel.save_pretrained writes its own settings into the model's config.json; they are not arguments.
_EMA_KEYS = frozenset(
    {"decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power"}
)
# A saved model's config.json names its class for diffusers' AutoModel; that is not an argument either.
_NOT_ARGUMENTS = _EMA_KEYS | {"auto_map"}
_INIT_KEYS = [
    name for name in inspect.signature(ConditionalUNet2DModel.__init__).parameters if name not in ("self",)
]


def _read_config_file(path: Path) -> dict[str, Any]:
    config_file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ModelConfigError(f"{config_file} does not exist; give a preset name or a model config JSON") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelConfigError(
            f"{config_file} is not valid JSON ({error}); give a ConditionalUNet2DModel config"
        ) from None
    if not isinstance(config, dict):
        raise ModelConfigError(f"{config_file} must hold a JSON object of ConditionalUNet2DModel arguments")
    class_name = config.get("_class_name", ConditionalUNet2DModel.__name__)
    if class_name != ConditionalUNet2DModel.__name__:
        raise ModelConfigError(
            f"{config_file} configures a {class_name}; this project needs a ConditionalUNet2DModel config"
        )
    # Keys like _class_name/_diffusers_version are bookkeeping, not arguments.
    config = {key: value for key, value in config.items() if not key.startswith("_") and key not in _NOT_ARGUMENTS}
    for key in config:
        if key not in _INIT_KEYS:
            raise ModelConfigError(
                f"{config_file}: {key!r} is not a ConditionalUNet2DModel argument; "
                f"did you mean {closest(key, _INIT_KEYS)!r}?"
            )
    return config


def load_model_config(name_or_path: str, *, sample_size: int) -> dict[str, Any]:
    """The ConditionalUNet2DModel arguments for a preset name or a config JSON, at the training resolution."""
    name_or_path = str(name_or_path)
    if name_or_path in PRESETS:
        config = dict(PRESETS[name_or_path])
    elif Path(name_or_path).exists():
        config = _read_config_file(Path(name_or_path))
    else:
        raise ModelConfigError(
            f"{name_or_path!r} is neither a model preset nor an existing config file; "
            f"did you mean {closest(name_or_path, list(PRESETS))!r}? "
            f"presets: {', '.join(PRESETS)}"
        )
    # The resolution trained at decides the sample size, also over a sample_size saved in a config file.
    config["sample_size"] = sample_size
    factor = 2 ** (len(config.get("block_out_channels", PRESETS["gpu"]["block_out_channels"])) - 1)
    if sample_size < factor or sample_size % factor:
        raise ModelConfigError(
            f"resolution {sample_size} does not suit {name_or_path!r}: its UNet halves the image "
            f"{factor.bit_length() - 1} times, so the resolution must be a multiple of {factor}"
        )
    return config


def create_model(
    name_or_path: str,
    *,
    sample_size: int,
    num_labels: int = 24,
    label_embedding_norm: float | None = None,
    zero_init_residual: bool = False,
) -> ConditionalUNet2DModel:
    """A freshly initialised ConditionalUNet2DModel from a preset name or a config JSON; a `label_embedding_norm`
    replaces the config's, and `zero_init_residual=True` turns the config's option on."""
    config = load_model_config(name_or_path, sample_size=sample_size)
    config["num_labels"] = num_labels
    if label_embedding_norm is not None:
        config["label_embedding_norm"] = label_embedding_norm
    if zero_init_residual:
        config["zero_init_residual"] = True
    try:
        return ConditionalUNet2DModel(**config)
    except (TypeError, ValueError, KeyError) as error:  # values of the right names but the wrong kind
        raise ModelConfigError(f"{name_or_path!r} does not build a ConditionalUNet2DModel: {error}") from None

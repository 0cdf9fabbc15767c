"""A UNet conditioned on a multi-hot label vector (i-CLEVR: several objects per image).

diffusers' `UNet2DModel` embeds at most one class index. Here a linear layer maps the multi-hot vector to the
time-embedding width and `class_embed_type="identity"` adds it to the timestep embedding, so every ResNet block
sees "which objects" the same way it sees "which noise level". An all-zero vector is the unconditional input
used for classifier-free guidance (the projection's bias is then the learned "no labels" embedding).

This file ships to the Hub on its own as remote code, so it imports nothing but torch and diffusers. A saved model
folder holds a copy of it, and its config.json names the class in `auto_map`, so that
`diffusers.AutoModel.from_pretrained(folder, trust_remote_code=True)` loads the folder anywhere.
"""

from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d import UNet2DOutput


class ConditionalUNet2DModel(ModelMixin, ConfigMixin):
    """`UNet2DModel` plus a linear projection of the multi-hot labels into its time embedding."""

    _supports_gradient_checkpointing = True
    # Keep normalisation layers in full precision under diffusers' layer-wise casting, as UNet2DModel does.
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        *,
        sample_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        num_labels: int = 24,
        block_out_channels: tuple[int, ...] = (128, 256, 256, 512),
        layers_per_block: int = 2,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_attention: bool = True,
        attention_head_dim: int = 8,
        norm_num_groups: int = 32,
        resnet_time_scale_shift: str = "default",
        dropout: float = 0.0,
        label_embedding_norm: float | None = None,
        zero_init_residual: bool = False,
        time_embedding_dim: int | None = None,
    ):
        super().__init__()
        if label_embedding_norm is not None and not label_embedding_norm > 0:
            raise ValueError(
                f"label_embedding_norm must be a positive number (the norm each label's embedding starts at) or "
                f"null (nn.Linear's own initialisation), got {label_embedding_norm!r}"
            )
        if time_embedding_dim is not None and (
            isinstance(time_embedding_dim, bool) or not isinstance(time_embedding_dim, int) or time_embedding_dim < 1
        ):
            raise ValueError(
                f"time_embedding_dim must be a positive integer (the width of the timestep and label embedding) or "
                f"null (4 x block_out_channels[0], as UNet2DModel sets it), got {time_embedding_dim!r}"
            )
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            add_attention=mid_block_attention,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
            dropout=dropout,
            # The labels reach every ResNet block only through this embedding (a SiLU, then the block's own linear
            # map to its scale and shift), so its width bounds what each block can be told about a label list.
            time_embedding_dim=time_embedding_dim,
            # "identity": UNet2DModel adds class_labels, as given, to the timestep embedding.
            class_embed_type="identity",
        )
        # The labels are added to the timestep embedding, so they take the width UNet2DModel gave it.
        self.label_projection = nn.Linear(num_labels, self.unet.time_embedding.linear_2.out_features)
        if label_embedding_norm is not None:
            # nn.Linear's default (None) gives each label's embedding a norm of ~1.3 at width 128 (~2.7 at 512),
            # while the timestep embedding grows to 4-10 in training and Adam barely grows the projection: the labels
            # stay a faint signal for thousands of steps. A larger starting norm steers from the first step (README:
            # Object counts; not the default: after an hour of training it scores 4-5 points less than None).
            nn.init.normal_(self.label_projection.weight)
            with torch.no_grad():
                weight = self.label_projection.weight
                weight.mul_(label_embedding_norm / weight.norm(dim=0, keepdim=True))
        if zero_init_residual:
            self._zero_init_residual_branches()

    def _zero_init_residual_branches(self) -> None:
        # As ADM (Dhariwal & Nichol 2021) starts its UNet: every ResNet block's last convolution, every attention
        # output projection and the output convolution start at zero, so each block starts as the identity and
        # the untrained net predicts 0: ten minutes on a CPU then draw one object per label more often (README:
        # Object counts).
        for module in self.unet.modules():
            if isinstance(module, ResnetBlock2D):
                last = module.conv2
            elif isinstance(module, Attention):
                last = module.to_out[0]
            else:
                continue
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predicts the UNet target for `sample` at `timestep`.

        class_labels: (batch, num_labels) multi-hot floats; an all-zero row asks for the unconditional prediction.
        """
        num_labels = self.config.num_labels
        if class_labels.ndim != 2 or class_labels.shape[1] != num_labels:
            raise ValueError(
                f"class_labels must have shape (batch, {num_labels}) (multi-hot), got {tuple(class_labels.shape)}"
            )
        # The sample's dtype is the compute dtype, as in UNet2DModel: under layer-wise casting the projection's
        # weight is stored in another dtype (float8, float16) and cast to the compute dtype only for the forward.
        label_embedding = self.label_projection(class_labels.to(dtype=sample.dtype))
        return self.unet(sample, timestep, class_labels=label_embedding, return_dict=return_dict)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """ModelMixin.save_pretrained, plus this file beside the weights for AutoModel's remote-code loading."""
        if is_main_process:
            # Copied first, so that `push_to_hub=True` uploads it with the weights.
            os.makedirs(save_directory, exist_ok=True)
            module_file = inspect.getfile(type(self))
            shutil.copyfile(module_file, os.path.join(save_directory, os.path.basename(module_file)))
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)

    # DiffusionPipeline.save_pretrained passes `variant`, `safe_serialization`... only to a save method whose
    # signature names them.
    save_pretrained.__signature__ = inspect.signature(ModelMixin.save_pretrained)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> tuple:
        # `auto_map` is for AutoModel, not an __init__ argument: without this, every load warns that it is unexpected.
        # Saving writes it again (register_for_auto_class below).
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)


# config.json gets "auto_map": {"AutoModel": "conditional_unet.ConditionalUNet2DModel"}.
ConditionalUNet2DModel.register_for_auto_class("AutoModel")

# As remote code, diffusers executes this file again in the same module for every model it loads from it
# (dynamic_modules_utils.get_class_in_module), which would make each loaded unet an instance of a new class object,
# and the pipeline's `unet: ConditionalUNet2DModel` type check (from_pretrained's warning, from_pipe) would fail.
# Every execution of the same source keeps the class of its first execution.
_CLASS_BY_SOURCE = globals().get("_CLASS_BY_SOURCE", {})
ConditionalUNet2DModel = _CLASS_BY_SOURCE.setdefault(Path(__file__).read_bytes(), ConditionalUNet2DModel)

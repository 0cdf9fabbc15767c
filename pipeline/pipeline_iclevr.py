"""The text-free i-CLEVR pipeline: label lists in, images out, with classifier-free guidance.

This file ships to the Hub as remote code, so besides installed packages it only imports its sibling files,
relatively.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import PIL.Image
import torch

from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

# Imported so that diffusers' remote-code loader ships the model file along with this one.
from .conditional_unet import ConditionalUNet2DModel  # noqa: F401
from .vocabulary import DEFAULT_LABELS, LabelError, LabelVocabulary

OUTPUT_TYPES = ("pil", "np", "pt")
ImageBatch = list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class ICLEVRPipelineOutput(BaseOutput):
    """images: B PIL images, a (B, H, W, 3) array or a (B, 3, H, W) tensor, values in [0, 1] for np/pt.

    intermediates: with `return_intermediates=k`, k snapshots of the batch from the initial noise to the final
    image, each in the same output type as `images` (a list of k image batches); `intermediates[-1]` equals
    `images`. None otherwise.
    """

    images: ImageBatch
    intermediates: list[ImageBatch] | None = None


class ICLEVRPipeline(DiffusionPipeline):
    """Generates i-CLEVR scenes that contain the requested objects.

    Components: `unet` (ConditionalUNet2DModel) and `scheduler` (any diffusers scheduler: DDPM, DDIM,
    DPM-Solver++, ...). `labels` is the vocabulary, in the order of the model's multi-hot vector; it is saved in
    model_index.json so a loaded pipeline encodes label names exactly as the model was trained.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: SchedulerMixin,
        labels: list[str] | tuple[str, ...] | dict[str, int] = DEFAULT_LABELS,
    ):
        super().__init__()
        # Saved as objects.json writes it ({"gray cube": 0, ...}): diffusers' Hub download takes every list in
        # model_index.json for a [library, class] component entry, so a plain label list would not load from the Hub.
        labels = sorted(labels, key=labels.__getitem__) if isinstance(labels, Mapping) else list(labels)
        if len(labels) != unet.config.num_labels:
            raise LabelError(
                f"the vocabulary has {len(labels)} labels but the unet expects {unet.config.num_labels}; "
                "pass the labels the model was trained with"
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(labels=LabelVocabulary(labels).to_objects_json())
        self.image_processor = VaeImageProcessor(do_normalize=True)

    @property
    def vocabulary(self) -> LabelVocabulary:
        mapping = self.config.labels
        return LabelVocabulary(sorted(mapping, key=mapping.__getitem__))

    def encode_labels(self, labels: Sequence[Sequence[str]] | torch.Tensor) -> torch.Tensor:
        """Label lists (or a multi-hot tensor, checked) -> (B, num_labels) float32 multi-hot tensor."""
        vocabulary = self.vocabulary
        if not isinstance(labels, torch.Tensor):
            return vocabulary.encode_batch(labels)
        if labels.ndim != 2 or labels.shape[1] != len(vocabulary) or labels.shape[0] == 0:
            raise LabelError(
                f"a label tensor must have shape (batch, {len(vocabulary)}), got {tuple(labels.shape)}; "
                "or pass label lists like [['red sphere', 'cyan cube']]"
            )
        labels = labels.detach().to("cpu", torch.float32)
        if not torch.all((labels == 0) | (labels == 1)):
            raise LabelError("a label tensor must be multi-hot: every entry 0 or 1")
        # Decoding then encoding applies the vocabulary's checks (non-empty rows, at most max_objects).
        return vocabulary.encode_batch([vocabulary.decode(row) for row in labels])

    def _step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None, eta: float) -> dict[str, Any]:
        # Stochastic schedulers (DDPM, SDE variants) take a generator; DDIM takes eta; others neither.
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {"generator": generator} if "generator" in accepted else {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        return kwargs

    def _postprocess(self, latents: torch.Tensor, output_type: str) -> ImageBatch:
        return self.image_processor.postprocess(latents.float(), output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        labels: Sequence[Sequence[str]] | torch.Tensor,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_intermediates: int = 0,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ICLEVRPipelineOutput | tuple:
        """Generates one image per label list.

        Args:
            labels: label lists such as `[["red sphere", "cyan cube"], ["gray cylinder"]]`, or a (B, num_labels)
                multi-hot tensor. Unknown names raise `LabelError` naming the closest label.
            num_inference_steps: denoising steps; 25 suits DPM-Solver++, DDPM wants its training count (1000).
            guidance_scale: classifier-free guidance weight w in `uncond + w * (cond - uncond)`; <= 1 turns it
                off and runs only the conditional half.
            eta: DDIM's eta (DDIM paper's η): 0 is deterministic, 1 adds DDPM's amount of fresh noise per step;
                other schedulers ignore it.
            generator: one generator, or one per image for per-image reproducibility.
            output_type: "pil" (list of PIL images), "np" ((B, H, W, 3) in [0, 1]) or "pt" ((B, 3, H, W) in [0, 1]).
            return_dict: return an `ICLEVRPipelineOutput` instead of a tuple `(images, intermediates)`.
            return_intermediates: k > 0 also returns k evenly spaced snapshots of the trajectory, from the
                initial noise to the final image (for denoising-process figures); at most num_inference_steps + 1.
            callback_on_step_end: diffusers' step-end callback `f(pipe, step_index, timestep, callback_kwargs)`
                returning a dict; a returned "latents" replaces the current latents.
            callback_on_step_end_tensor_inputs: tensors put into `callback_kwargs` (only "latents").
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if not 0 <= return_intermediates <= num_inference_steps + 1:
            raise ValueError(
                f"return_intermediates must be between 0 and num_inference_steps + 1 = {num_inference_steps + 1}, "
                f"got {return_intermediates}"
            )
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, got {unknown}"
            )

        device = self._execution_device
        class_labels = self.encode_labels(labels).to(device=device, dtype=self.unet.dtype)
        batch_size = class_labels.shape[0]
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} label lists; pass one per image")
        do_guidance = guidance_scale > 1.0
        if do_guidance:
            # One forward pass per step: the all-zero (unconditional) rows first, then the conditional rows.
            class_labels = torch.cat([torch.zeros_like(class_labels), class_labels])

        config = self.unet.config
        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        # Latents stay in float32 whatever the unet's dtype: the schedulers' update arithmetic is precision
        # sensitive and costs nothing next to the unet.
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = latents * self.scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(generator, eta)

        # Snapshot i is the state after i steps (0 = initial noise); evenly spaced, the last one is the final image.
        num_states = len(timesteps) + 1
        if return_intermediates == 1:
            snapshot_steps = {num_states - 1}
        else:
            snapshot_steps = set(np.linspace(0, num_states - 1, return_intermediates).round().astype(int).tolist())
        snapshots = [latents] if 0 in snapshot_steps else []

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents, latents]) if do_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t).to(self.unet.dtype)
                prediction = self.unet(model_input, t, class_labels).sample.float()
                if do_guidance:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + guidance_scale * (conditional - unconditional)
                latents = self.scheduler.step(prediction, t, latents, **step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                if i + 1 in snapshot_steps:
                    snapshots.append(latents)
                progress_bar.update()

        images = self._postprocess(latents, output_type)
        intermediates = [self._postprocess(snapshot, output_type) for snapshot in snapshots] or None
        self.maybe_free_model_hooks()

        if not return_dict:
            return images, intermediates
        return ICLEVRPipelineOutput(images=images, intermediates=intermediates)

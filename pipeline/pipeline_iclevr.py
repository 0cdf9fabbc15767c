"""The text-free i-CLEVR pipeline: label lists in, images out, with classifier-free guidance.

This file ships to the Hub as remote code, so besides installed packages it only imports its sibling files,
relatively.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

# Also makes diffusers' remote-code loader ship the model file along with this one.
from .conditional_unet import ConditionalUNet2DModel
from .vocabulary import DEFAULT_LABELS, LabelError, LabelVocabulary

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
ImageBatch = list[PIL.Image.Image] | np.ndarray | torch.Tensor
Labels = Sequence[str] | Sequence[Sequence[str]] | torch.Tensor


# Classifier-free guidance weight measured best at 25 steps (benchmarks/bench_samplers.py, README: Samplers).
DEFAULT_GUIDANCE_SCALE = 4.0
# Steps of the saved sampler (SDE DPM-Solver++) measured within 2 points of DDPM 1000 (README: Samplers).
DEFAULT_INFERENCE_STEPS = 25


@dataclass
class ICLEVRPipelineOutput(BaseOutput):
    """images: B PIL images, a (B, H, W, 3) array or a (B, 3, H, W) tensor, values in [0, 1] for np/pt; for
    "latent", the raw (B, 3, H, W) float32 sample in the model's [-1, 1] range.

    intermediates: with `return_intermediates=k`, k snapshots of the batch from the initial noise to the final
    image, each in the same output type as `images` (a list of k image batches); `intermediates[-1]` equals
    `images` (unless a callback interrupted the run: then only the snapshots taken before it). None otherwise.
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
    # The error bad labels raise (a ValueError), reachable from a pipeline loaded as remote code, whose modules
    # cannot be imported by name: `except pipe.LabelError`.
    LabelError = LabelError

    def __init__(
        self,
        unet: ConditionalUNet2DModel,
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

    # The state of the running (or last) call, as diffusers' pipelines expose it to step-end callbacks; a callback
    # may set `pipe._guidance_scale` (takes effect from the next step) or `pipe._interrupt = True` (skips the
    # remaining steps; the output is the current state).
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def encode_labels(self, labels: Labels) -> torch.Tensor:
        """Label lists (or a multi-hot tensor, checked) -> (B, num_labels) float32 multi-hot tensor.

        One label list (`["red sphere", "cyan cube"]`) or one (num_labels,) vector is a batch of one, as diffusers
        takes one prompt string.
        """
        vocabulary = self.vocabulary
        if isinstance(labels, torch.Tensor):
            return self._check_multi_hot(labels[None] if labels.ndim == 1 else labels, vocabulary)
        if isinstance(labels, str):
            raise LabelError(
                f"labels must be a label list like [{labels!r}] or a batch of them, got the string {labels!r}"
            )
        labels = list(labels)
        names = [isinstance(item, str) for item in labels]
        if labels and all(names):
            return vocabulary.encode_batch([labels])
        if any(names):
            raise LabelError(
                f"labels mixes label names and label lists: {labels}; pass one label list like "
                "['red sphere', 'cyan cube'] or a batch of them like [['red sphere'], ['cyan cube']]"
            )
        return vocabulary.encode_batch(labels)

    @staticmethod
    def _check_multi_hot(labels: torch.Tensor, vocabulary: LabelVocabulary) -> torch.Tensor:
        if labels.ndim != 2 or labels.shape[1] != len(vocabulary) or labels.shape[0] == 0:
            raise LabelError(
                f"a label tensor must have shape (batch, {len(vocabulary)}) or ({len(vocabulary)},), got "
                f"{tuple(labels.shape)}; or pass label lists like [['red sphere', 'cyan cube']]"
            )
        labels = labels.detach().to("cpu", torch.float32)
        if not torch.all((labels == 0) | (labels == 1)):
            raise LabelError("a label tensor must be multi-hot: every entry 0 or 1")
        # Decoding then encoding applies the vocabulary's checks (non-empty rows, at most max_objects).
        return vocabulary.encode_batch([vocabulary.decode(row) for row in labels])

    def check_inputs(
        self,
        num_inference_steps: int,
        guidance_start: float,
        guidance_stop: float,
        num_images_per_prompt: int,
        output_type: str,
        return_intermediates: int,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> None:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if not 0.0 <= guidance_start <= guidance_stop <= 1.0:
            raise ValueError(
                "guidance_start and guidance_stop are fractions of the denoising steps with 0 <= guidance_start <= "
                f"guidance_stop <= 1, got {guidance_start} and {guidance_stop}"
            )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer of at least 1, got {num_images_per_prompt!r}")
        if not 0 <= return_intermediates <= num_inference_steps + 1:
            raise ValueError(
                f"return_intermediates must be between 0 and num_inference_steps + 1 = {num_inference_steps + 1}, "
                f"got {return_intermediates}"
            )
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, got {unknown}"
            )

    def prepare_latents(
        self,
        num_images: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """The starting noise (drawn, or the given `latents`, checked), scaled by the scheduler's initial sigma."""
        config = self.unet.config
        shape = (num_images, config.in_channels, config.sample_size, config.sample_size)
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(
                f"got {len(generator)} generators for {num_images} images (label lists x num_images_per_prompt); "
                "pass one generator per image, or a single one"
            )
        # Latents stay in float32 whatever the unet's dtype: the schedulers' update arithmetic is precision
        # sensitive and costs nothing next to the unet.
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} (label lists x num_images_per_prompt, channels, height, width), "
                f"got {tuple(latents.shape)}"
            )
        return latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

    def _step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None, eta: float) -> dict[str, Any]:
        # Stochastic schedulers (DDPM, SDE variants) take a generator; DDIM takes eta; others neither.
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {"generator": generator} if "generator" in accepted else {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        return kwargs

    def _predict_noise(
        self, latents: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor, guided: bool
    ) -> torch.Tensor:
        """The model prediction, guided or the conditional half alone (`guided` is decided per step)."""
        model_input = self.scheduler.scale_model_input(latents, t)
        if guided:
            # One forward pass: the all-zero (unconditional) rows first, then the conditional rows.
            model_input = torch.cat([model_input, model_input])
            class_labels = torch.cat([torch.zeros_like(class_labels), class_labels])
        prediction = self.unet(model_input.to(self.unet.dtype), t, class_labels).sample.float()
        if guided:
            unconditional, conditional = prediction.chunk(2)
            prediction = unconditional + self.guidance_scale * (conditional - unconditional)
        return prediction

    def _postprocess(self, latents: torch.Tensor, output_type: str) -> ImageBatch:
        if output_type == "latent":
            return latents
        return self.image_processor.postprocess(latents.float(), output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        labels: Labels,
        num_inference_steps: int = DEFAULT_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        guidance_start: float = 0.0,
        guidance_stop: float = 1.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_intermediates: int = 0,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ICLEVRPipelineOutput | tuple:
        """Generates `num_images_per_prompt` images per label list.

        Args:
            labels: label lists such as `[["red sphere", "cyan cube"], ["gray cylinder"]]`, one label list
                (`["red sphere"]`, a batch of one), or a (B, num_labels) multi-hot tensor (a (num_labels,) vector is
                a batch of one). Unknown names raise `LabelError` naming the closest label.
            num_inference_steps: denoising steps; 25 suits DPM-Solver++, DDPM wants its training count (1000).
            guidance_scale: classifier-free guidance weight w in `uncond + w * (cond - uncond)`; <= 1 turns it
                off and runs only the conditional half.
            guidance_start, guidance_stop: the fractions of the denoising steps after which guidance starts and
                stops, as diffusers' guiders count them: step i is guided when int(start * steps) <= i <
                int(stop * steps); the other steps run the conditional half alone, at half the cost. The default
                guides every step; guidance_stop=0.8 samples the quick start's models in 15 % less time at the same
                accuracy (README: Using a trained pipeline).
            num_images_per_prompt: images per label list; the output holds list 0's images first, then list 1's...
            eta: DDIM's eta (DDIM paper's η): 0 is deterministic, 1 adds DDPM's amount of fresh noise per step;
                other schedulers ignore it.
            generator: one generator for the whole batch, or one per image (B * num_images_per_prompt, in output
                order): image i then depends only on generator i, so it is reproducible alone.
            latents: the starting noise, (B * num_images_per_prompt, 3, H, W), instead of drawing it; stochastic
                schedulers (DDPM) still draw their per-step noise from `generator`.
            output_type: "pil" (list of PIL images), "np" ((B, H, W, 3) in [0, 1]), "pt" ((B, 3, H, W) in [0, 1])
                or "latent" (the raw (B, 3, H, W) sample in [-1, 1], not clipped).
            return_dict: return an `ICLEVRPipelineOutput` instead of a tuple `(images, intermediates)`.
            return_intermediates: k > 0 also returns k evenly spaced snapshots of the trajectory, from the
                initial noise to the final image (for denoising-process figures); at most num_inference_steps + 1.
            callback_on_step_end: diffusers' step-end callback `f(pipe, step_index, timestep, callback_kwargs)`
                returning a dict; a returned "latents" replaces the current latents. It may read and set
                `pipe.guidance_scale` (via `pipe._guidance_scale`), `pipe.num_timesteps` and `pipe._interrupt`.
            callback_on_step_end_tensor_inputs: tensors put into `callback_kwargs` (only "latents").
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(
            num_inference_steps, guidance_start, guidance_stop, num_images_per_prompt, output_type,
            return_intermediates, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        self._guidance_scale = guidance_scale
        self._interrupt = False

        device = self._execution_device
        class_labels = self.encode_labels(labels).repeat_interleave(num_images_per_prompt, dim=0)
        class_labels = class_labels.to(device=device, dtype=self.unet.dtype)
        latents = self.prepare_latents(class_labels.shape[0], generator, latents, device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        step_kwargs = self._step_kwargs(generator, eta)
        guided_steps = range(int(guidance_start * len(timesteps)), int(guidance_stop * len(timesteps)))

        # Snapshot i is the state after i steps (0 = initial noise); evenly spaced, the last one is the final image.
        num_states = len(timesteps) + 1
        if return_intermediates == 1:
            snapshot_steps = {num_states - 1}
        else:
            snapshot_steps = set(np.linspace(0, num_states - 1, return_intermediates).round().astype(int).tolist())
        snapshots = [latents] if 0 in snapshot_steps else []

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                # Read every step, so a callback may switch guidance on or off.
                guided = self.do_classifier_free_guidance and i in guided_steps
                prediction = self._predict_noise(latents, t, class_labels, guided)
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

"""Figures of generated images: grids with a fixed number of columns and the denoising process of one label list."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from diffusers import DiffusionPipeline
from diffusers.utils import make_image_grid
from PIL import Image

from training.evaluation import image_generator

GRID_COLUMNS = 8


def image_grid(images: Sequence[Image.Image], columns: int = GRID_COLUMNS) -> Image.Image:
    """`columns` images per row; a short last row is padded with white."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    padded = list(images) + [Image.new("RGB", images[0].size, "white")] * (rows * columns - len(images))
    return make_image_grid(padded, rows=rows, cols=columns)


def denoising_figure(
    pipeline: DiffusionPipeline,
    labels: Sequence[str],
    num_frames: int = 10,
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 2.0,
    seed: int = 0,
    sampler_kwargs: Mapping[str, Any] | None = None,
) -> Image.Image:
    """One row, left to right: the initial noise, evenly spaced denoising states, the final image."""
    output = pipeline(
        [list(labels)],
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=[image_generator(seed, 0)],
        output_type="pil",
        return_intermediates=min(num_frames, num_inference_steps + 1),
        **(sampler_kwargs or {}),
    )
    frames = [batch[0] for batch in output.intermediates]
    return make_image_grid(frames, rows=1, cols=len(frames))

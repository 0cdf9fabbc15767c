"""Figures of generated images: grids with a fixed number of columns, grids with a caption per row, and the
denoising process of one label list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from diffusers import DiffusionPipeline
from diffusers.utils import make_image_grid
from PIL import Image, ImageDraw, ImageFont

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.evaluation import image_generator

GRID_COLUMNS = 8


def image_grid(images: Sequence[Image.Image], columns: int = GRID_COLUMNS) -> Image.Image:
    """`columns` images per row; a short last row is padded with white."""
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    padded = list(images) + [Image.new("RGB", images[0].size, "white")] * (rows * columns - len(images))
    return make_image_grid(padded, rows=rows, cols=columns)


def captioned_grid(rows: Sequence[tuple[str, Sequence[Image.Image]]], cell_size: int = 128) -> Image.Image:
    """One row of images per (caption, images) pair, the caption above its row; images are enlarged to `cell_size`
    pixels with nearest-neighbour sampling, so 32x32 samples stay sharp."""
    font = ImageFont.load_default(size=max(10, cell_size // 9))
    line_height = font.size + 8
    columns = max(len(images) for _, images in rows)
    width = max(columns * cell_size, max(int(font.getlength(caption)) + 8 for caption, _ in rows))
    grid = Image.new("RGB", (width, len(rows) * (line_height + cell_size)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (caption, images) in enumerate(rows):
        top = row * (line_height + cell_size)
        draw.text((4, top + 4), caption, fill="black", font=font)
        for column, image in enumerate(images):
            cell = image.convert("RGB").resize((cell_size, cell_size), Image.Resampling.NEAREST)
            grid.paste(cell, (column * cell_size, top + line_height))
    return grid


def denoising_figure(
    pipeline: DiffusionPipeline,
    labels: Sequence[str],
    num_frames: int = 10,
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
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

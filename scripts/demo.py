"""A Gradio demo of a trained i-CLEVR pipeline: pick objects, generate, watch the denoising.

    python scripts/demo.py --pipeline iclevr-ddpm            # a training output folder (from this repo's checkout)
    python scripts/demo.py --pipeline your-name/iclevr-ddpm  # a Hub id, or an exported folder
    python app.py                                            # inside an exported folder or a Hugging Face Space

The export step (training/export.py) copies this file into the exported folder as app.py, with a README
front-matter entry (`sdk: gradio`, `app_file: app.py`) that lets the Hub run it as a Space. There it imports only
installed packages: diffusers imports the pipeline's own code, which ships in the folder (trust_remote_code). Only a
training output folder, whose model_index.json names this repo's `pipeline` package instead of shipping the code,
needs the repo's checkout.

Image j is drawn from seed + j (one generator per image), as `scripts/generate.py --seed` does, so a picture in the
page is made again by `generate.py --labels "..." --seed S` with the same settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a demo that may run offline

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Samplers offered beside the saved one (each keeps the saved noise schedule, prediction type and x0 clipping), and
# the step count each is usually run with (None: the pipeline's own default).
OTHER_SAMPLERS = {
    "DPM-Solver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}, None),
    "UniPC": (UniPCMultistepScheduler, {}, None),
    "DDIM": (DDIMScheduler, {}, 50),
    "DDPM": (DDPMScheduler, {}, 1000),
}
MAX_STEPS = 1000
MAX_IMAGES = 8
PROCESS_FRAMES = 8  # columns of the denoising-process strip
IMAGE_SIZE = 160  # pixels an image is shown at (enlarged without smoothing)


class DemoError(ValueError):
    """A pipeline the demo cannot load; the message says what to give instead."""


def load_pipeline(source: str, *, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    index_file = Path(source).expanduser() / "model_index.json"
    try:
        if index_file.is_file() and isinstance(json.loads(index_file.read_text()).get("_class_name"), str):
            # A training output names this repo's `pipeline` package (scripts/ sits beside it in the checkout).
            sys.path.insert(0, str(HERE.parent))
            from pipeline import ICLEVRPipeline

            pipe = ICLEVRPipeline.from_pretrained(index_file.parent, dtype=dtype)
        else:
            pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, trust_remote_code=True)
    except (OSError, ImportError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DemoError(
            f"cannot load the pipeline {source!r}: {reason}; give a training output folder (from this repo's "
            "checkout), an exported folder or a Hub id"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def call_defaults(pipe: DiffusionPipeline) -> dict[str, Any]:
    """The pipeline's own defaults, read from its __call__ signature, so a changed default shows up here."""
    parameters = inspect.signature(type(pipe).__call__).parameters
    return {name: parameters[name].default for name in ("num_inference_steps", "guidance_scale")}


def sampler_menu(pipe: DiffusionPipeline) -> dict[str, tuple[DiffusionPipeline, int | None]]:
    """Menu entry -> (a pipeline sharing `pipe`'s UNet with that sampler, its usual step count); the saved first."""
    saved = pipe.scheduler
    algorithm = saved.config.get("algorithm_type")
    menu = {f"saved: {type(saved).__name__}" + (f" ({algorithm})" if algorithm else ""): (pipe, None)}
    for name, (scheduler_class, settings, steps) in OTHER_SAMPLERS.items():
        scheduler = scheduler_class.from_config(saved.config, **settings)
        menu[name] = (type(pipe).from_pipe(pipe, scheduler=scheduler), steps)
    return menu


def label_groups(labels: list[str]) -> dict[str, list[str]]:
    """Shape -> colours, from "colour shape" label names in vocabulary order (the 8 x 3 grid of i-CLEVR)."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        *colour, shape = label.split(" ")
        groups.setdefault(shape, []).append(" ".join(colour) or label)
    return groups


def picked_labels(groups: dict[str, list[str]], ticked: tuple[list[str], ...]) -> list[str]:
    return [f"{colour} {shape}" if colour != shape else shape for shape, colours in zip(groups, ticked) for colour in colours]


def check_labels(pipe: DiffusionPipeline, labels: list[str]) -> str | None:
    """None when the pipeline accepts `labels` as one image's objects, else the message to show."""
    maximum = pipe.vocabulary.max_objects
    if not labels:
        return f"Tick 1 to {maximum} objects first (a colour under a shape)."
    try:
        pipe.vocabulary.validate(labels)
    except pipe.LabelError as error:  # too many objects, or one twice
        return f"Cannot generate: {error}."
    return None


def enlarge(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    return image.resize((size, size), Image.Resampling.NEAREST)


def process_strip(intermediates: list[list[Image.Image]], size: int = IMAGE_SIZE // 2) -> Image.Image:
    """One row per image, noise on the left and the final image on the right."""
    rows, columns = len(intermediates[0]), len(intermediates)
    strip = Image.new("RGB", (columns * size, rows * size), "white")
    for column, batch in enumerate(intermediates):
        for row, image in enumerate(batch):
            strip.paste(enlarge(image, size), (column * size, row * size))
    return strip


def build_demo(pipe: DiffusionPipeline, title: str) -> gr.Blocks:
    groups = label_groups(pipe.vocabulary.labels)
    menu = sampler_menu(pipe)
    defaults = call_defaults(pipe)
    device = str(pipe.device)

    def generate(*values):
        *ticked, sampler, steps, guidance, seed, num_images = values
        labels = picked_labels(groups, ticked)
        problem = check_labels(pipe, labels)
        if problem is not None:
            return problem, [], None
        steps, seed, num_images = int(steps), int(seed), int(num_images)
        tick = time.perf_counter()
        output = menu[sampler][0](
            [labels], num_images_per_prompt=num_images, num_inference_steps=steps, guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed + j) for j in range(num_images)],
            return_intermediates=min(PROCESS_FRAMES, steps + 1),
        )  # fmt: skip
        seconds = time.perf_counter() - tick
        gallery = [(enlarge(image), f"seed {seed + j}") for j, image in enumerate(output.images)]
        status = (
            f"**{', '.join(labels)}**: {num_images} image{'s' * (num_images > 1)} in {seconds:.2f} s "
            f"({seconds / num_images:.2f} s per image) on {device}; {sampler.removeprefix('saved: ')}, {steps} steps, "
            f"guidance {guidance:g}, seeds {seed}-{seed + num_images - 1}"
        )
        return status, gallery, process_strip(output.intermediates)

    def show_pick(*ticked):
        labels = picked_labels(groups, ticked)
        return check_labels(pipe, labels) or f"Picked: **{', '.join(labels)}**"

    def sampler_steps(sampler):
        return menu[sampler][1] or defaults["num_inference_steps"]

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nPick 1 to {pipe.vocabulary.max_objects} objects (a colour under a shape), then Generate. "
            f"The model draws {pipe.unet.config.sample_size}x{pipe.unet.config.sample_size} scenes; the process "
            "rows show each image from noise (left) to the result (right)."
        )
        with gr.Row():
            with gr.Column(scale=2):
                boxes = [gr.CheckboxGroup(colours, label=shape, elem_id=f"pick-{shape}") for shape, colours in groups.items()]
                pick = gr.Markdown(check_labels(pipe, []), elem_id="pick")
                sampler = gr.Dropdown(list(menu), value=next(iter(menu)), label="sampler")
                steps = gr.Slider(1, MAX_STEPS, value=defaults["num_inference_steps"], step=1, label="steps")
                guidance = gr.Slider(0, 10, value=defaults["guidance_scale"], step=0.5,
                                     label="guidance scale (1: off)")
                seed = gr.Number(0, precision=0, minimum=0, label="seed")
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="images", columns=4, height="auto", elem_id="images")
                process = gr.Image(label="denoising process", type="pil", elem_id="process")
        for box in boxes:
            box.change(show_pick, boxes, pick, api_name=False)
        sampler.change(sampler_steps, sampler, steps, api_name=False)
        button.click(generate, [*boxes, sampler, steps, guidance, seed, num_images], [status, gallery, process],
                     api_name="generate")
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    own = HERE if (HERE / "model_index.json").is_file() else None  # app.py inside an exported folder or a Space
    parser.add_argument("--pipeline", default=own, required=own is None,
                        help="A training output folder, an exported folder or a Hub id (default: this file's folder, "
                             "when it holds a pipeline).")
    parser.add_argument("--port", type=int, default=None, help="Server port (default: gradio's, 7860 or the next free).")
    parser.add_argument("--host", default=None, help="Address to listen on (default: gradio's, 127.0.0.1).")
    parser.add_argument("--share", action="store_true", help="Also serve through a public gradio.live link.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="The UNet's precision.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        pipe = load_pipeline(str(args.pipeline), device=torch.device(args.device), dtype=DTYPES[args.dtype])
    except DemoError as error:
        sys.exit(f"error: {error}")
    title = f"i-CLEVR diffusion: {Path(str(args.pipeline)).name}"
    build_demo(pipe, title).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()

"""A web demo of a trained i-CLEVR pipeline: pick objects, generate, watch the denoising.

    python scripts/demo.py --pipeline iclevr-ddpm              # a training --output_dir
    python scripts/demo.py --pipeline your-name/iclevr-ddpm    # a Hub id, or an exported folder
    python scripts/demo.py                                     # inside an exported folder or a Space: its own model

In this repo's checkout the pipeline is rebuilt from the checkout's classes (training/pipeline_loading.py: nothing
shipped with the model runs). The export (training/export.py) ships this file with the code it imports from
training/, and a README front-matter (`sdk: gradio`, `app_file: scripts/demo.py`) that lets the Hub run the folder
as a Space; there, without the `pipeline` package, diffusers imports the pipeline code shipped in the folder.

Image j is drawn from seed + j (one generator per image), as `scripts/generate.py --seed` does, so a picture in the
page is made again by `generate.py --labels "..." --seed S` with the same settings.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout, or the exported folder that ships this file
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo that may run offline

import argparse
import time

import gradio as gr
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import make_image_grid

from training.errors import UserError, one_line
from training.inference import DTYPES, add_device_arguments, call_defaults, resolve_device, resolve_dtype
from training.samplers import SAMPLERS, SamplerError, sampler_name, set_sampler

MAX_STEPS = 1000  # DDPM's training count
MAX_IMAGES = 8
PROCESS_FRAMES = 8  # columns of the denoising-process strip
# The model draws 32x32 or 64x64 scenes: the browser enlarges them without smoothing, the process strip to its box.
CSS = """
#images img, #process img { image-rendering: pixelated; }
#process img { width: 100%; height: 100%; object-fit: contain; }
"""


def load(source: str, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """The pipeline, from this checkout's classes where they exist, else with the code shipped beside it."""
    if (ROOT / "pipeline" / "__init__.py").is_file():
        from training.pipeline_loading import load_pipeline

        return load_pipeline(source, device=device, dtype=dtype)
    pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def label_groups(labels: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Shape -> [(colour, label)] in vocabulary order: i-CLEVR's 3 x 8 table of "colour shape" labels."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for label in labels:
        colour, _, shape = label.rpartition(" ")
        groups.setdefault(shape if colour else "objects", []).append((colour or label, label))
    return groups


def check_objects(pipe: DiffusionPipeline, labels: list[str]) -> str | None:
    """None when `labels` are the objects of one image the model can draw, else what to change."""
    maximum = pipe.vocabulary.max_objects
    if not labels:
        return f"Pick 1 to {maximum} objects: tick a colour in a shape's row."
    try:
        pipe.vocabulary.validate(labels)
    except pipe.LabelError as error:  # too many objects, or one twice
        return f"Cannot draw these objects: {error}."
    return None


def build_demo(pipe: DiffusionPipeline, title: str) -> gr.Blocks:
    groups = label_groups(pipe.vocabulary.labels)
    saved_sampler = f"saved: {sampler_name(pipe.scheduler)}"
    defaults = call_defaults(pipe)
    size = pipe.unet.config.sample_size

    def pipeline_for(sampler: str) -> tuple[DiffusionPipeline, dict]:
        """The pipeline with the chosen sampler (on the saved noise schedule), sharing the UNet; its call arguments."""
        if sampler == saved_sampler:
            return pipe, {}
        variant = type(pipe).from_pipe(pipe)
        try:
            spec = set_sampler(variant, sampler)
        except SamplerError as error:  # an unknown name or setting, or a value the scheduler refuses
            raise gr.Error(f"{error}; or type a spec like ddim,eta=1") from None
        variant.set_progress_bar_config(disable=True)
        return variant, spec.call_kwargs

    def generate(*values):
        *ticked, sampler, steps, guidance, seed, num_images = values
        labels = [label for picked in ticked for label in picked]
        problem = check_objects(pipe, labels)
        if problem is not None:
            raise gr.Error(problem)
        if seed is None:  # an emptied field
            raise gr.Error("Type a seed: a whole number, 0 or more.")
        chosen, call_kwargs = pipeline_for(sampler)
        steps, seed, num_images = int(steps), int(seed), int(num_images)
        tick = time.perf_counter()
        output = chosen(
            labels, num_images_per_prompt=num_images, num_inference_steps=steps, guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(seed + j) for j in range(num_images)],
            return_intermediates=min(PROCESS_FRAMES, steps + 1), **call_kwargs,
        )  # fmt: skip
        seconds = time.perf_counter() - tick
        frames = [batch[j] for j in range(num_images) for batch in output.intermediates]
        process = make_image_grid(frames, rows=num_images, cols=len(output.intermediates))
        status = (
            f"**{', '.join(labels)}**: {num_images} image{'s' * (num_images > 1)} in {seconds:.2f} s "
            f"({seconds / num_images:.2f} s per image) on {pipe.device.type}; {sampler.removeprefix('saved: ')}, "
            f"{steps} steps, guidance {guidance:g}, seeds {seed} to {seed + num_images - 1}"
        )
        return status, [(image, f"seed {seed + j}") for j, image in enumerate(output.images)], process

    def show_pick(*ticked):
        labels = [label for picked in ticked for label in picked]
        return check_objects(pipe, labels) or f"Picked: **{', '.join(labels)}**"

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nPick 1 to {pipe.vocabulary.max_objects} objects, then **Generate**: the model draws "
            f"{size}x{size} scenes with those objects. The denoising process shows each image (one row each) from "
            "noise on the left to the result on the right."
        )
        # The vocabulary at a glance: one row per shape, one column per colour.
        boxes = [gr.CheckboxGroup(choices, label=shape, elem_id=f"pick-{shape}") for shape, choices in groups.items()]
        pick = gr.Markdown(check_objects(pipe, []), elem_id="pick")
        with gr.Row():
            with gr.Column(scale=2):
                sampler = gr.Dropdown([saved_sampler, *SAMPLERS], value=saved_sampler, allow_custom_value=True,
                                      label="sampler", info="or type a spec, e.g. ddim,eta=1; DDPM wants ~1000 steps")
                steps = gr.Slider(1, MAX_STEPS, value=defaults["num_inference_steps"], step=1, label="steps")
                guidance = gr.Slider(1, 10, value=defaults["guidance_scale"], step=0.5, label="guidance scale (1: off)")
                seed = gr.Number(0, precision=0, minimum=0, label="seed")
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                # PNG, not gradio's default WebP: the images are exactly what generate.py writes.
                gallery = gr.Gallery(label="images", columns=4, height=340, format="png", elem_id="images")
                process = gr.Image(label="denoising process", type="pil", format="png", height=320, elem_id="process")
        # One listener for the three rows, run one event at a time and always on the latest ticks: with one listener
        # per row, two quick ticks on a busy server could answer out of order and leave the older pick showing.
        gr.on([box.change for box in boxes], show_pick, boxes, pick, api_visibility="private",
              trigger_mode="always_last", concurrency_limit=1)  # fmt: skip
        button.click(generate, [*boxes, sampler, steps, guidance, seed, num_images], [status, gallery, process],
                     api_name="generate")  # fmt: skip
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    own = str(ROOT) if (ROOT / "model_index.json").is_file() else None  # shipped in an exported folder or a Space
    parser.add_argument("--pipeline", default=own, required=own is None,
                        help="A training --output_dir, an exported folder or a Hub id (default: the folder this file "
                             "ships in, when it holds a pipeline).")
    parser.add_argument("--port", type=int, default=None, help="Server port (default: gradio's, 7860 or next free).")
    parser.add_argument("--share", action="store_true", help="Also serve through a temporary public gradio.live link.")
    add_device_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        pipe = load(args.pipeline, device, DTYPES[resolve_dtype(args.dtype, device)])
    except (UserError, OSError) as error:  # not one_line_errors: it needs the `pipeline` package, absent in a Space
        sys.exit(f"error: {one_line(error)}")
    title = f"i-CLEVR diffusion: {Path(args.pipeline).name}"
    build_demo(pipe, title).launch(server_port=args.port, share=args.share, css=CSS)


if __name__ == "__main__":
    main()

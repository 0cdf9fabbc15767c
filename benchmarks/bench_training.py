#!/usr/bin/env python
"""Training throughput and sampling time of one model, measured in one run and printed as ratios.

    python benchmarks/bench_training.py --model_config_name_or_path cpu --resolution 32     # this 2-core CPU
    python benchmarks/bench_training.py --model_config_name_or_path gpu --resolution 64 --compile  # a GPU
    python benchmarks/bench_training.py --model_config_name_or_path gpu --resolution 64 --sections training \
        --modes bf16 bf16+channels_last fp16+channels_last fp32 --max_batch 8192 --json throughput.json

Training (same weights, same batches, AdamW steps through the real objective; on CUDA with TF32 and fused AdamW,
as train_conditional.py sets them up). A mode is PRECISION[+channels_last][+compile]: fp32 (TF32 on CUDA), bf16
autocast, or fp16 autocast with a GradScaler (as Accelerate's fp16); compilation (torch.compile, --compile_backend)
happens in the untimed warm-up steps and takes minutes on a CPU. Default modes: fp32, bf16, bf16+channels_last, and
bf16+channels_last+compile with --compile. --max_batch N also finds the largest batch (doubling from --batch_size,
then refined) whose training step fits in memory, in the first mode.
Data path: bf16 with the cached in-memory data vs decoding + resizing the PNGs in the DataLoader.
Sampling: seconds for --num_images images with guidance per sampler (default DDPM 1000, DDIM 50, DPM-Solver++ 25
and 20), with the UNet's weights in each of --sampling_precisions (as `scripts/evaluate.py --dtype` samples).
--json PATH writes every figure there, rewritten after each one, so a run stopped midway keeps what it measured.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import copy
import gc
import itertools
import json
import os
import platform
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from bench_data_cache import DecodingDataset
from bench_iclevr import sampler_and_steps
from diffusers import DDPMScheduler
from diffusers.utils import logging as diffusers_logging
from torch.utils.data import DataLoader, Subset

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.data import load_train_dataset, load_training_set
from training.model_presets import create_model
from training.objective import DEFAULT_LABEL_DROPOUT, batch_generator, diffusion_loss
from training.precision import apply_memory_format, enable_tf32
from training.samplers import set_sampler
from training.sampling import build_pipeline, validation_label_lists

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODE_OPTIONS = ("channels_last", "compile")
DEFAULT_MODES = ("fp32", "bf16", "bf16+channels_last")
COMPILE_MODE = "bf16+channels_last+compile"
DEFAULT_SAMPLERS = ("ddpm:1000", "ddim:50", "dpmsolver++:25", "dpmsolver++:20")
SECTIONS = ("training", "data", "sampling")


@dataclass(frozen=True)
class Mode:
    precision: str
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        return "+".join([self.precision] + [option for option in MODE_OPTIONS if getattr(self, option)])


def parse_mode(text: str) -> Mode:
    """"bf16+channels_last+compile" -> Mode("bf16", True, True)."""
    precision, *options = text.split("+")
    unknown = [option for option in options if option not in MODE_OPTIONS]
    if precision not in PRECISIONS or unknown or len(set(options)) != len(options):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a mode is PRECISION[+channels_last][+compile] with PRECISION one of {', '.join(PRECISIONS)}, "
            f"like bf16+channels_last"
        )
    return Mode(precision, "channels_last" in options, "compile" in options)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Returns cached blocks to the device, so the next mode starts from an empty allocator."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_images_per_second(model, batches: Iterable[dict], device, mode: Mode, *, steps: int, warmup: int,
                            compile_backend: str = "inductor") -> float:
    """Images/s of `steps` AdamW steps after `warmup` untimed ones, in `mode`; fp16 steps through a GradScaler."""
    model = apply_memory_format(copy.deepcopy(model).to(device), mode.channels_last)
    memory_format = torch.channels_last if mode.channels_last else torch.contiguous_format
    forward = torch.compile(model, backend=compile_backend) if mode.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")  # as create_optimizer
    scaler = torch.amp.GradScaler(device.type, enabled=mode.precision == "fp16")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    dtype = PRECISIONS[mode.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    batches = iter(batches)
    seen, start = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = next(batches)
        pixels = batch["pixel_values"].to(device).contiguous(memory_format=memory_format)
        with autocast:
            loss = diffusion_loss(forward, scheduler, pixels, batch["class_labels"].to(device),
                                  label_dropout=DEFAULT_LABEL_DROPOUT, generator=batch_generator(0, 0, step, 0, device))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            seen += len(pixels)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def repeated_batch(batch: dict, size: int, device: torch.device) -> dict:
    """`batch` tiled to `size` items, on the device (the content does not matter for memory and speed)."""
    repeats = -(-size // len(batch["pixel_values"]))
    return {key: value.to(device).repeat(repeats, *[1] * (value.ndim - 1))[:size] for key, value in batch.items()}


def largest_batch(model, batch: dict, device, mode: Mode, *, start: int, limit: int,
                  compile_backend: str) -> dict[str, Any]:
    """The largest batch whose training step fits in memory: doubling from `start` up to `limit`, then two halving
    refinements between the last fit and the first failure. Returns it with its images/s and the first failure.
    """
    fits, failed, rate, error = None, None, None, None

    def attempt(size: int) -> bool:
        nonlocal fits, failed, rate, error
        try:
            data = repeated_batch(batch, size, device)
            rate = train_images_per_second(model, itertools.repeat(data), device, mode, steps=2, warmup=1,
                                           compile_backend=compile_backend)
            fits = size
        # Near the limit cuDNN and cuBLAS report a failed workspace allocation as a plain RuntimeError.
        except (torch.OutOfMemoryError, RuntimeError) as failure:
            failed, error = size, f"{type(failure).__name__}: {(str(failure).splitlines() or [''])[0][:200]}"
        data = None
        release_memory(device)
        return failed != size

    size = start
    while size <= limit and attempt(size):
        size *= 2
    for _ in range(2):
        if fits is None or failed is None or failed - fits <= 1:
            break
        attempt((fits + failed) // 2)
    return {"mode": mode.name, "largest_fitting": fits, "images_per_second": rate, "first_failing": failed,
            "error": error, "limit": limit}


def sampling_seconds(model, vocabulary, device, labels, sampler: str, steps: int, guidance_scale: float,
                     precision: str) -> float:
    """Seconds for one pipeline call over `labels`, the UNet's weights in `precision` (latents stay fp32)."""
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    unet = copy.deepcopy(model).to(device=device, dtype=PRECISIONS[precision]).eval()
    pipe = build_pipeline(unet, noise_scheduler, vocabulary)
    call_kwargs = set_sampler(pipe, sampler).call_kwargs
    generator = torch.Generator(device="cpu").manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    pipe(labels=labels, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
         output_type="pt", **call_kwargs)
    synchronize(device)
    return time.perf_counter() - start


class Results:
    """What the run measured, printed as tables and (with --json) saved after every figure."""

    def __init__(self, path: Path | None, header: dict[str, Any]):
        self.path, self.data = path, {**header, "training": [], "largest_batch": None, "data_path": [],
                                      "sampling": []}

    def add(self, section: str, row: Any) -> None:
        if isinstance(self.data[section], list):
            self.data[section].append(row)
        else:
            self.data[section] = row
        if self.path is not None:
            temp = self.path.with_name(f".{self.path.name}.tmp")
            temp.write_text(json.dumps(self.data, indent=2) + "\n")
            os.replace(temp, self.path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_config_name_or_path", default="cpu")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per mode.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--modes", type=parse_mode, nargs="+", default=None, metavar="MODE",
                        help=f"Training modes (default: {' '.join(DEFAULT_MODES)}).")
    parser.add_argument("--compile", action="store_true", help=f"Also time {COMPILE_MODE}.")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile backend; 'eager' checks the compiled path without code generation.")
    parser.add_argument("--max_batch", type=int, default=0, metavar="LIMIT",
                        help="Find the largest batch that fits, up to LIMIT, in the first mode (0: skip).")
    parser.add_argument("--num_images", type=int, default=32, help="Images per sampling run.")
    parser.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    parser.add_argument("--samplers", type=sampler_and_steps, nargs="+",
                        default=[sampler_and_steps(s) for s in DEFAULT_SAMPLERS],
                        metavar="SAMPLER:STEPS", help=f"Default: {' '.join(DEFAULT_SAMPLERS)}.")
    parser.add_argument("--sampling_precisions", nargs="+", choices=PRECISIONS, default=["bf16"])
    parser.add_argument("--train_data_dir", default=None, help="Default: the built-in synthetic i-CLEVR.")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--json", type=Path, default=None, help="Also write every figure to this JSON file.")
    return parser


def training_section(args, model, train_set, device, results: Results) -> None:
    modes = args.modes or [parse_mode(m) for m in DEFAULT_MODES + ((COMPILE_MODE,) if args.compile else ())]
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    batches = list(itertools.islice(itertools.cycle(loader), args.warmup + args.steps))
    print("| training mode | images/s | vs first |\n|---|---|---|")
    baseline = None
    for index, mode in enumerate(modes):
        rate = train_images_per_second(model, batches, device, mode, steps=args.steps, warmup=args.warmup,
                                       compile_backend=args.compile_backend)
        release_memory(device)
        baseline = baseline or rate
        results.add("training", {"mode": mode.name, "batch_size": args.batch_size, "images_per_second": rate})
        print(f"| {mode.name.replace('+', ' + ')} | {rate:.1f} | {rate / baseline:.2f}x |", flush=True)
        if index == 0 and args.max_batch:  # before the later (often compiled, slow to start) modes
            found = largest_batch(model, batches[0], device, mode, start=args.batch_size, limit=args.max_batch,
                                  compile_backend=args.compile_backend)
            results.add("largest_batch", found)
            beyond = f"first failure at {found['first_failing']}" if found["first_failing"] else "search limit"
            print(f"| largest batch that fits ({mode.name}): {found['largest_fitting']} ({beyond}) | "
                  f"{found['images_per_second'] or 0:.1f} | |", flush=True)


def data_section(args, model, train_set, device, results: Results) -> None:
    """The same bf16 step with the DataLoader inside the timed loop."""
    raw = load_train_dataset(args.train_data_dir, cache_dir=args.cache_dir)
    needed = (args.warmup + args.steps) * args.batch_size
    decoding = DecodingDataset(Subset(raw, range(min(len(raw), needed))), args.resolution, train_set.vocabulary)
    print("\n| data path (bf16 training, loading included) | images/s | vs PNG decoding |\n|---|---|---|")
    rates = {}
    for name, dataset in (("decode + resize PNGs every epoch", decoding), ("cached uint8 arrays", train_set)):
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
        rates[name] = train_images_per_second(model, itertools.cycle(loader), device, Mode("bf16"),
                                              steps=args.steps, warmup=args.warmup)
        results.add("data_path", {"data": name, "images_per_second": rates[name]})
    slow = rates["decode + resize PNGs every epoch"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / slow:.2f}x |", flush=True)


def sampling_section(args, model, train_set, device, results: Results) -> None:
    lists = validation_label_lists(train_set.vocabulary)
    labels = [lists[i % len(lists)] for i in range(args.num_images)]
    # One untimed call first: cuDNN's algorithm search and the first allocations are not sampling time.
    sampling_seconds(model, train_set.vocabulary, device, labels[:2], "ddim", 2, args.guidance_scale,
                     args.sampling_precisions[0])
    print(f"\n| sampler ({args.num_images} images, guidance {args.guidance_scale}) | UNet weights | seconds | "
          f"vs first |\n|---|---|---|---|")
    reference = None
    for (sampler, steps), precision in itertools.product(args.samplers, args.sampling_precisions):
        seconds = sampling_seconds(model, train_set.vocabulary, device, labels, sampler, steps,
                                   args.guidance_scale, precision)
        reference = reference or seconds
        results.add("sampling", {"sampler": sampler, "steps": steps, "precision": precision,
                                 "num_images": args.num_images, "guidance_scale": args.guidance_scale,
                                 "seconds": seconds})
        print(f"| {sampler} {steps} steps | {precision} | {seconds:.2f} | {reference / seconds:.1f}x faster |",
              flush=True)


def main() -> None:
    args = build_parser().parse_args()
    diffusers_logging.set_verbosity_error()  # casting the UNet to bf16/fp16 would warn at every sampling run
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tf32 = enable_tf32(device)
    torch.manual_seed(0)
    train_set = load_training_set(args.train_data_dir, resolution=args.resolution, cache_dir=args.cache_dir)
    model = create_model(args.model_config_name_or_path, sample_size=args.resolution,
                         num_labels=len(train_set.vocabulary))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    header = {"device": device_name(device), "model": args.model_config_name_or_path, "parameters_m": params,
              "resolution": args.resolution, "batch_size": args.batch_size, "steps": args.steps, "tf32": tf32,
              "fused_adamw": device.type == "cuda", "torch": torch.__version__}
    results = Results(args.json, header)
    print(f"# {header['device']}; model {args.model_config_name_or_path} ({params:.1f} M params), "
          f"{args.resolution}x{args.resolution}, batch {args.batch_size}, {args.steps} timed steps per mode; "
          f"TF32 {'on' if tf32 else 'off'}, fused AdamW {'on' if device.type == 'cuda' else 'off'}\n", flush=True)
    sections = {"training": training_section, "data": data_section, "sampling": sampling_section}
    for name in args.sections:
        sections[name](args, model, train_set, device, results)


if __name__ == "__main__":
    main()

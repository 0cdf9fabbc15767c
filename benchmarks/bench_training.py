#!/usr/bin/env python
"""Training throughput and sampling time of one model, measured in one run and printed as ratios.

    python benchmarks/bench_training.py --model_config_name_or_path cpu --resolution 32     # this 2-core CPU
    python benchmarks/bench_training.py --model_config_name_or_path gpu --resolution 64 --compile  # a GPU

Training (same weights, same batches, AdamW steps through the real objective; on CUDA with TF32 and fused AdamW,
as train_conditional.py sets them up):
  fp32 eager | bf16 autocast | bf16 + channels_last | bf16 + channels_last + torch.compile (with --compile; the
  compilation happens in the untimed warm-up steps and takes minutes on a CPU),
  and bf16 with the cached in-memory data path vs decoding + resizing the PNGs in the DataLoader.
Sampling: seconds for --num_images images with guidance, DDPM 1000 vs DDIM 50 vs DPM-Solver++ 25 and 20 steps.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import copy
import itertools
import platform
import time
from contextlib import nullcontext

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch.utils.data import DataLoader, Subset

from bench_data_cache import DecodingDataset
from training.data import load_train_dataset, load_training_set
from training.model_presets import create_model
from training.objective import batch_generator, diffusion_loss
from training.precision import apply_memory_format, enable_tf32
from training.sampling import build_pipeline, validation_label_lists


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_images_per_second(model, batches, device, *, bf16: bool, channels_last: bool, compile_model: bool,
                            steps: int, warmup: int) -> float:
    model = apply_memory_format(copy.deepcopy(model).to(device), channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")  # as create_optimizer
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    batches = iter(batches)
    seen, start = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = next(batches)
        pixels = batch["pixel_values"].to(device).contiguous(memory_format=memory_format)
        with autocast:
            loss = diffusion_loss(forward, scheduler, pixels, batch["class_labels"].to(device), label_dropout=0.1,
                                  generator=batch_generator(0, 0, step, 0, device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            seen += len(pixels)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def sampling_seconds(model, vocabulary, device, labels, scheduler_class, steps: int, guidance_scale: float) -> float:
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    pipe = build_pipeline(model.to(device).eval(), noise_scheduler, vocabulary)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    generator = torch.Generator(device="cpu").manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        pipe(labels=labels, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
             output_type="pt")
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_config_name_or_path", default="cpu")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per mode.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="Also time bf16 + channels_last + torch.compile.")
    parser.add_argument("--num_images", type=int, default=32, help="Images per sampling run.")
    parser.add_argument("--guidance_scale", type=float, default=2.0)
    parser.add_argument("--train_data_dir", default=None, help="Default: the built-in synthetic i-CLEVR.")
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tf32 = enable_tf32(device)
    torch.manual_seed(0)
    train_set = load_training_set(args.train_data_dir, resolution=args.resolution, cache_dir=args.cache_dir)
    model = create_model(args.model_config_name_or_path, sample_size=args.resolution,
                         num_labels=len(train_set.vocabulary))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    needed = (args.warmup + args.steps) * args.batch_size
    cached = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    cached_batches = list(itertools.islice(itertools.cycle(cached), args.warmup + args.steps))
    print(f"# {device_name(device)}; model {args.model_config_name_or_path} ({params:.1f} M params), "
          f"{args.resolution}x{args.resolution}, batch {args.batch_size}, {args.steps} timed steps per mode; "
          f"TF32 {'on' if tf32 else 'off'}, fused AdamW {'on' if device.type == 'cuda' else 'off'}\n")

    modes = [("fp32 eager", dict(bf16=False, channels_last=False, compile_model=False)),
             ("bf16 autocast", dict(bf16=True, channels_last=False, compile_model=False)),
             ("bf16 + channels_last", dict(bf16=True, channels_last=True, compile_model=False))]
    if args.compile:
        modes.append(("bf16 + channels_last + compile", dict(bf16=True, channels_last=True, compile_model=True)))
    print("| training mode | images/s | vs fp32 |\n|---|---|---|")
    baseline = None
    for name, mode in modes:
        rate = train_images_per_second(model, cached_batches, device, steps=args.steps, warmup=args.warmup, **mode)
        baseline = baseline or rate
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x |", flush=True)

    # The data path: the same bf16 step, with the DataLoader inside the timed loop.
    raw = load_train_dataset(args.train_data_dir, cache_dir=args.cache_dir)
    decoding = DecodingDataset(Subset(raw, range(min(len(raw), needed))), args.resolution, train_set.vocabulary)
    print("\n| data path (bf16 training, loading included) | images/s | vs PNG decoding |\n|---|---|---|")
    rates = {}
    for name, dataset in (("decode + resize PNGs every epoch", decoding), ("cached uint8 arrays", train_set)):
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
        rates[name] = train_images_per_second(model, itertools.cycle(loader), device, bf16=True, channels_last=False,
                                              compile_model=False, steps=args.steps, warmup=args.warmup)
    slow = rates["decode + resize PNGs every epoch"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / slow:.2f}x |", flush=True)

    lists = validation_label_lists(train_set.vocabulary)
    labels = [lists[i % len(lists)] for i in range(args.num_images)]
    print(f"\n| sampler ({args.num_images} images, guidance {args.guidance_scale}, bf16) | seconds | vs DDPM 1000 |"
          "\n|---|---|---|")
    reference = None
    for name, scheduler_class, steps in (("DDPM", DDPMScheduler, 1000), ("DDIM", DDIMScheduler, 50),
                                         ("DPM-Solver++", DPMSolverMultistepScheduler, 25),
                                         ("DPM-Solver++", DPMSolverMultistepScheduler, 20)):
        seconds = sampling_seconds(model, train_set.vocabulary, device, labels, scheduler_class, steps, args.guidance_scale)
        reference = reference or seconds
        print(f"| {name} {steps} steps | {seconds:.1f} | {reference / seconds:.1f}x faster |", flush=True)


if __name__ == "__main__":
    main()

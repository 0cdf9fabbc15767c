"""CPU training throughput per thread policy, on an idle machine and beside 1 and 2 busy processes.

    python benchmarks/bench_cpu_contention.py                      # cpu preset, 32x32, batch 32, bf16
    python benchmarks/bench_cpu_contention.py --seconds 30 --loads 0 1

Every (policy, load) pair runs in a fresh process (OMP_WAIT_POLICY is read when OpenMP starts) that trains the real
model with the real objective, optimiser and thread policy for --seconds after a warm-up, and reports images/s. The
busy processes (`while True: pass`, like any other job on the machine) are started and stopped by the benchmark and
are not descendants of the measured process. Prints one table of images/s and ratios to the idle best, all measured
in this one run. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import json
import os
import platform
import subprocess
import time

from training.cpu_threads import AUTO, physical_cores

BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


def policies(cores: int) -> dict[str, dict]:
    """Candidate policies: label -> {"threads": "auto" | N, "env": extra environment}."""
    candidates = {
        f"{cores} threads (every core; what `--num_cpu_threads_per_process {cores}` gave)": {
            "threads": cores, "env": {}
        },
        f"{cores} threads, OMP_WAIT_POLICY=PASSIVE": {"threads": cores, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
        "auto (the default: adapts to other load)": {"threads": AUTO, "env": {}},
    }
    if cores > 1:
        candidates[f"{cores - 1} thread(s) (one core left free)"] = {"threads": cores - 1, "env": {}}
    return candidates


def measure(args: argparse.Namespace) -> None:
    """The worker: trains for a warm-up plus args.seconds and prints {"images_per_second", "threads_seen"} as JSON."""
    import torch
    from diffusers import DDPMScheduler

    from training.cpu_threads import CpuThreads
    from training.model_presets import create_model
    from training.objective import DEFAULT_LABEL_DROPOUT, diffusion_loss

    policy = CpuThreads(AUTO if args.threads == AUTO else int(args.threads))
    model = create_model(args.model_config_name_or_path, sample_size=args.resolution)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.resolution, args.resolution, generator=generator) * 2 - 1
    labels = (torch.rand(args.batch_size, 24, generator=generator) < 0.1).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16"):
            loss = diffusion_loss(model, scheduler, images, labels, label_dropout=DEFAULT_LABEL_DROPOUT,
                                  generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        policy.update()

    end = time.monotonic() + args.warmup
    while time.monotonic() < end:
        step()
    steps, threads_seen, start = 0, set(), time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        step()
        steps += 1
        threads_seen.add(policy.threads)
    seconds = time.perf_counter() - start
    print(json.dumps({"images_per_second": steps * args.batch_size / seconds, "threads_seen": sorted(threads_seen)}))


def run_one(args: argparse.Namespace, setting: dict) -> dict:
    command = [sys.executable, __file__, "--worker", "--threads", str(setting["threads"]),
               "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--batch_size", str(args.batch_size),
               "--resolution", str(args.resolution), "--mixed_precision", args.mixed_precision,
               "--model_config_name_or_path", args.model_config_name_or_path]  # fmt: skip
    env = {**os.environ, **setting["env"]}
    env.pop("OMP_NUM_THREADS", None)  # the policy under test decides
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchmark(args: argparse.Namespace) -> None:
    cores = physical_cores()
    candidates = policies(cores)
    results: dict[str, dict[int, dict]] = {label: {} for label in candidates}
    for load in args.loads:
        busy = [subprocess.Popen(BUSY_LOOP) for _ in range(load)]
        try:
            time.sleep(1.0)
            for label, setting in candidates.items():
                results[label][load] = run_one(args, setting)
                result = results[label][load]
                print(f"  {load} busy: {label}: {result['images_per_second']:.1f} images/s, "
                      f"threads {result['threads_seen']}", file=sys.stderr, flush=True)
        finally:
            for process in busy:
                process.kill()
                process.wait()

    idle_best = max(results[label][0]["images_per_second"] for label in candidates) if 0 in args.loads else None
    print(f"# {platform.processor() or platform.machine()}, {cores} physical cores, {os.cpu_count()} logical CPUs; "
          f"model {args.model_config_name_or_path}, {args.resolution}x{args.resolution}, batch {args.batch_size}, "
          f"{args.mixed_precision}; {args.seconds:g} s timed per cell after {args.warmup:g} s warm-up\n")
    header = "| thread policy | " + " | ".join(f"{load} busy process{'es' * (load != 1)}" for load in args.loads) + " |"
    print(header)
    print("|---" * (len(args.loads) + 1) + "|")
    for label in candidates:
        cells = []
        for load in args.loads:
            speed = results[label][load]["images_per_second"]
            ratio = f" ({speed / idle_best:.2f}x)" if idle_best else ""
            own_idle = results[label].get(0, {}).get("images_per_second")
            kept = f", keeps {speed / own_idle:.0%}" if own_idle and load else ""
            cells.append(f"{speed:.1f}{ratio}{kept}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if idle_best:
        print(f"\nimages/s (ratio to the idle best, {idle_best:.1f} images/s; 'keeps': share of the policy's own "
              "idle throughput)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_config_name_or_path", default="cpu")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="bf16")
    parser.add_argument("--seconds", type=float, default=20.0, help="Timed seconds per (policy, load) cell.")
    parser.add_argument("--warmup", type=float, default=5.0, help="Untimed seconds first (and for `auto` to settle).")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="Numbers of busy processes.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", default=AUTO, help=argparse.SUPPRESS)
    args = parser.parse_args()
    measure(args) if args.worker else benchmark(args)


if __name__ == "__main__":
    main()

"""Running a loaded pipeline: the device, the UNet's precision, the guidance interval and the pipeline's own call
defaults. Used by scripts/generate.py, scripts/evaluate.py, scripts/demo.py and the samples.png benchmarks.

The demo also runs from an exported folder or a Space (training/export.py ships this file with it), where this
repo's `pipeline` package is not importable, so this module imports only installed packages, training/errors.py and
training/bf16_support.py.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any

import torch
from diffusers import DiffusionPipeline

from training.bf16_support import bf16_or_float32
from training.errors import UserError

# The precisions a pipeline's UNet can sample in (`--dtype`); latents and scheduler arithmetic stay float32.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(UserError, ValueError):
    """A device that cannot be used; the message says what to give instead."""


class GuidanceIntervalError(UserError, ValueError):
    """--guidance_start after --guidance_stop."""


def add_device_arguments(parser: argparse.ArgumentParser, *, dtype_help: str = "The UNet's precision.") -> None:
    """`--device` (see `resolve_device`) and `--dtype` (a key of DTYPES, default fp32)."""
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help=f"{dtype_help} bf16 on a CPU without native bfloat16 samples in fp32, with a warning.")


def resolve_device(name: str | None) -> torch.device:
    """`--device`: cpu or cuda[:N]; None picks cuda when available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise DeviceError(f"--device {name!r} is not supported; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was given but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None


def resolve_dtype(name: str, device: torch.device) -> str:
    """`--dtype` as given, except bf16 on a CPU without native bfloat16 kernels: fp32 there, with a warning."""
    name, warning = bf16_or_float32(name, device, "--dtype", "fp32")
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    return name


def _step_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction of the denoising steps, from 0 to 1, got {text}")
    return value


def add_guidance_interval_arguments(parser: argparse.ArgumentParser) -> None:
    """`--guidance_start` and `--guidance_stop`: the pipeline's guidance interval (see its `__call__`)."""
    parser.add_argument("--guidance_start", type=_step_fraction, default=0.0,
                        help="Fraction of the denoising steps after which guidance starts (default 0: from the first).")
    parser.add_argument("--guidance_stop", type=_step_fraction, default=1.0,
                        help="Fraction of the denoising steps after which guidance stops (default 1: never); the "
                             "steps outside the interval run the conditional half alone.")  # fmt: skip


def guidance_interval(args: argparse.Namespace) -> dict[str, float]:
    """The pipeline call arguments of those flags; a reversed interval raises `GuidanceIntervalError`."""
    if args.guidance_start > args.guidance_stop:
        raise GuidanceIntervalError(
            f"--guidance_start {args.guidance_start:g} is after --guidance_stop {args.guidance_stop:g}; "
            "give a start at or before the stop, e.g. --guidance_start 0 --guidance_stop 0.8"
        )
    return {"guidance_start": args.guidance_start, "guidance_stop": args.guidance_stop}


def call_defaults(pipeline: DiffusionPipeline) -> dict[str, Any]:
    """The pipeline's own `num_inference_steps` and `guidance_scale` defaults, read from its `__call__`: a
    pipeline shipped with its code (an export, a Space) brings its own."""
    parameters = inspect.signature(type(pipeline).__call__).parameters
    return {name: parameters[name].default for name in ("num_inference_steps", "guidance_scale")}

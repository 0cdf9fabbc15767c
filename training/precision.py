"""The fast path on GPUs: TF32 matmuls and convolutions, fused AdamW and the channels_last memory format (the CPU's
thread count is training/cpu_threads.py's concern).

Mixed precision (`--mixed_precision bf16|fp16`) is Accelerate's autocast (and, for fp16, its GradScaler), and
`--torch_compile` is Accelerate's dynamo backend: this module only holds what Accelerate does not set up, and the
one case where the asked precision would cost instead of save: bf16 on a CPU without native bfloat16 kernels.
`benchmarks/bench_training.py` measures each of them on the machine at hand.
"""

from __future__ import annotations

import argparse

import torch
from accelerate import PartialState
from accelerate.utils import parse_choice_from_env, parse_flag_from_env

from training.bf16_support import bf16_or_float32


def launch_device() -> torch.device:
    """The device this launch's Accelerator will train on, known before it exists: the process state created as
    AcceleratorState creates it (ACCELERATE_USE_CPU, exported by `accelerate launch --cpu`, forces the CPU)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device


def training_mixed_precision(requested: str | None, device: torch.device) -> tuple[str, str | None]:
    """The mixed precision a training launch uses, and a warning when it is not the one asked for:
    `--mixed_precision`, else the launch's (accelerate launch exports its config as ACCELERATE_MIXED_PRECISION, which
    Accelerator reads the same way); bf16 becomes "no" on a CPU where it would be slower (`bf16_or_float32`).
    """
    if requested is None:
        requested = parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")
    return bf16_or_float32(requested, device, "--mixed_precision", "no")


def enable_tf32(device: torch.device) -> bool:
    """Lets float32 matmuls and cuDNN convolutions use TF32 tensor cores (Ampere and newer) on CUDA.

    The float32 parts of a mixed-precision step (and all of an fp32 one) then run at tensor-core speed with a
    10-bit mantissa, which diffusion training tolerates. Returns whether TF32 was enabled (never off CUDA).
    """
    if device.type != "cuda":
        return False
    # Through the two settings that keep PyTorch's old (allow_tf32) and new (fp32_precision) flags consistent:
    # setting only the new matmul flag makes any later read of the old one (inductor, libraries) raise.
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions, made explicit
    return True


def create_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.optim.AdamW:
    """AdamW from the training flags; on CUDA the fused kernel, one launch for all parameters instead of several
    per parameter tensor.
    """
    return torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        fused=device.type == "cuda",
    )


def apply_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """Puts the convolution weights in channels_last (NHWC), which cuDNN's tensor-core kernels prefer under
    bf16/fp16. Saving is unaffected: Accelerate and diffusers write contiguous copies.
    """
    return model.to(memory_format=torch.channels_last) if channels_last else model

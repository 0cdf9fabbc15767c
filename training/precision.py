"""The fast path: on GPUs TF32 matmuls and convolutions, fused AdamW and the channels_last memory format; on CPUs
enough threads.

Mixed precision (`--mixed_precision bf16|fp16`) is Accelerate's autocast (and, for fp16, its GradScaler), and
`--torch_compile` is Accelerate's dynamo backend: this module only holds what Accelerate does not set up.
`benchmarks/bench_training.py` measures each of them on the machine at hand.
"""

from __future__ import annotations

import argparse
import os

import torch


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


def cpu_thread_warning(device: torch.device) -> str | None:
    """What to do when CPU training runs on fewer threads than its share of the cores, else None.

    `accelerate launch` exports OMP_NUM_THREADS=1 unless given --num_cpu_threads_per_process (or --cpu), which on a
    CPU machine leaves all cores but one idle (2-core CPU, `cpu` preset, 32x32, bf16: median 65.9 images/s on one
    thread, 79.0 on two).
    """
    if device.type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
    threads = torch.get_num_threads()
    if threads >= share:
        return None
    return (
        f"training on CPU with {threads} thread(s) per process while this machine's {cores} cores allow {share}; "
        f"`accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise: launch with "
        f"`accelerate launch --num_cpu_threads_per_process {share} ...` to use them"
    )

"""Whether bf16 pays on this machine: on a CPU without native bfloat16 kernels every bf16 op is emulated, many
times slower than float32, so `--mixed_precision bf16` (training) and `--dtype bf16` (sampling) fall back to float32
there, with a one-line warning.

The demo also runs from an exported folder or a Space (training/export.py ships this file with it), so this module
imports only torch.
"""

from __future__ import annotations

import torch

# Measured with benchmarks/bench_training.py (`cpu` preset, 32x32, 2 threads) on a 2-core AMD EPYC with AVX2 only:
# training at batch 32 44.1 images/s in fp32, 2.3 under bf16 autocast (19x); sde-dpmsolver++ 25 steps for 16 images
# 8.9 s with fp32 weights, 245 s with bf16 (28x).
EMULATED_BF16_SLOWDOWN = "19-28x"


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16, AMX or AVX512 on x86; BF16 on Arm).

    torch exposes no public check; this is the one its own mixed-precision code paths consult.
    """
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_or_float32(requested: str, device: torch.device, flag: str, float32_value: str) -> tuple[str, str | None]:
    """`requested` (a `flag` value) and None; but bf16 on a CPU without native bfloat16 kernels, where it would be
    many times slower than float32 instead of faster, becomes `float32_value` with the one-line warning to show.
    """
    if requested != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return requested, None
    return float32_value, (f"{flag} bf16: this CPU has no native bfloat16 kernels (oneDNN needs AVX512-BF16, AMX or "
                           f"AVX512, or Arm BF16), so bf16 would run {EMULATED_BF16_SLOWDOWN} slower than float32; "
                           f"using float32 (pass {flag} {float32_value} to say so)")

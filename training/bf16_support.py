"""Whether bf16 pays on this machine: on a CPU without bfloat16 instructions every bf16 op is emulated, slower than
float32, so `--mixed_precision bf16` (training) and `--dtype bf16` (sampling) fall back to float32 there, with a
one-line warning.

The demo also runs from an exported folder or a Space (training/export.py ships this file with it), so this module
imports only torch and the standard library.
"""

from __future__ import annotations

import platform

import torch

# Measured with benchmarks/bench_training.py (`cpu` preset, 32x32, 2 threads, batch 32; sde-dpmsolver++ 25 steps for
# 16 images). AMD EPYC with AVX2 only: training 44.1 images/s in fp32, 2.3 under bf16 autocast (19x slower); sampling
# 8.9 s with fp32 weights, 245 s with bf16 (28x). Intel Xeon with AVX512 but no AVX512-BF16, where oneDNN reports
# bf16 support: training 44.1 against 23.2 images/s (1.9x slower), sampling 5.5 s against 12.2 s (2.2x).
EMULATED_BF16_SLOWDOWN = "2-28x"
X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions that oneDNN uses: AVX512-BF16 or AMX on x86, BF16 on Arm.

    torch's own check (`_is_mkldnn_bf16_supported`) also says yes for plain AVX512, where oneDNN emulates bf16 with
    conversions and bf16 trained 1.9x slower than float32, so on x86 the instructions themselves decide.
    """
    if platform.machine().lower() in X86:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_or_float32(requested: str, device: torch.device, flag: str, float32_value: str) -> tuple[str, str | None]:
    """`requested` (a `flag` value) and None; but bf16 on a CPU without bfloat16 instructions, where it would be
    slower than float32 instead of faster, becomes `float32_value` with the one-line warning to show.
    """
    if requested != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return requested, None
    return float32_value, (f"{flag} bf16: this CPU has no native bfloat16 kernels (oneDNN needs AVX512-BF16 or AMX "
                           f"on x86, BF16 on Arm), so bf16 would run {EMULATED_BF16_SLOWDOWN} slower than float32; "
                           f"using float32 (pass {flag} {float32_value} to say so)")

"""bf16 on a CPU: kept where the CPU has native bfloat16 kernels, float32 with a one-line warning where every bf16
op would be emulated (measured 2-28x slower than float32); for training's --mixed_precision and sampling's --dtype."""

from __future__ import annotations

import pytest
import torch

from training import bf16_support
from training.bf16_support import bf16_or_float32
from training.inference import resolve_dtype
from training.precision import training_mixed_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(bf16_support, "cpu_has_native_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(bf16_support, "cpu_has_native_bf16", lambda: True)


def test_training_bf16_on_a_cpu_without_native_bfloat16_becomes_float32_with_a_one_line_warning(no_native_bf16):
    used, warning = training_mixed_precision("bf16", CPU)

    assert used == "no"
    assert "\n" not in warning
    assert warning.startswith("--mixed_precision bf16: this CPU has no native bfloat16")
    assert "using float32 (pass --mixed_precision no to say so)" in warning


def test_sampling_bf16_on_a_cpu_without_native_bfloat16_becomes_fp32_with_a_warning(no_native_bf16, capsys):
    assert resolve_dtype("bf16", CPU) == "fp32"
    assert capsys.readouterr().err.startswith("WARNING: --dtype bf16: this CPU has no native bfloat16")


def test_bf16_on_a_cpu_with_native_bfloat16_is_kept(native_bf16, capsys):
    assert training_mixed_precision("bf16", CPU) == ("bf16", None)
    assert resolve_dtype("bf16", CPU) == "bf16"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("requested", ["no", "fp16"])
def test_other_training_precisions_are_never_changed(no_native_bf16, requested):
    assert training_mixed_precision(requested, CPU) == (requested, None)


@pytest.mark.parametrize("requested", ["fp32", "fp16"])
def test_other_sampling_precisions_are_never_changed(no_native_bf16, requested):
    assert resolve_dtype(requested, CPU) == requested


def test_bf16_on_a_gpu_is_never_changed(no_native_bf16):
    assert bf16_or_float32("bf16", CUDA, "--mixed_precision", "no") == ("bf16", None)
    assert training_mixed_precision("bf16", CUDA) == ("bf16", None)


def test_without_the_flag_training_takes_the_launch_configs_precision(no_native_bf16, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert training_mixed_precision(None, CPU) == ("fp16", None)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert training_mixed_precision(None, CPU)[0] == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert training_mixed_precision(None, CPU) == ("no", None)


def test_the_flag_wins_over_the_launch_config(no_native_bf16, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert training_mixed_precision("no", CPU) == ("no", None)


def x86_cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    """An x86 CPU with AVX512, for which oneDNN reports bf16 support whatever the bf16 instructions."""
    monkeypatch.setattr(bf16_support.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)


def test_x86_avx512_without_bf16_instructions_is_not_native_bfloat16(monkeypatch):
    # oneDNN says yes there, yet bf16 trained 1.9x slower than float32 on such an Intel Xeon
    x86_cpu(monkeypatch, avx512_bf16=False, amx=False)
    assert bf16_support.cpu_has_native_bf16() is False
    assert training_mixed_precision("bf16", CPU)[0] == "no"


@pytest.mark.parametrize("avx512_bf16, amx", [(True, False), (False, True)])
def test_x86_with_avx512_bf16_or_amx_is_native_bfloat16(monkeypatch, avx512_bf16, amx):
    x86_cpu(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    assert bf16_support.cpu_has_native_bf16() is True
    assert training_mixed_precision("bf16", CPU) == ("bf16", None)


@pytest.mark.parametrize("onednn_says", [True, False])
def test_arm_takes_onednns_answer(monkeypatch, onednn_says):
    monkeypatch.setattr(bf16_support.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_says)
    assert bf16_support.cpu_has_native_bf16() is onednn_says


def test_the_check_answers_on_this_machine():
    assert isinstance(bf16_support.cpu_has_native_bf16(), bool)

"""The GPU path of train_conditional.py: a compiled, channels_last, bf16 run that saves and reloads; CUDA-only
speed-ups chosen for CUDA only; the guard against non-finite losses and gradients. On a CUDA machine (the GPU check,
benchmarks/gpu_check.py, runs this file there) also fp16 with Accelerate's GradScaler and inductor compilation.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState
from safetensors.torch import load_file

from pipeline import ICLEVRPipeline
from training.args import parse_args
from training.bf16_support import cpu_has_native_bf16
from training.model_presets import create_model
from training.precision import create_optimizer, enable_tf32
from training.stability import MAX_CONSECUTIVE_SKIPPED_STEPS, NonFiniteGuard, TrainingDivergedError
from training.tracking import logged_scalars
from training_runs import launch_training, train_in_process

TINY = ["--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "4",
        "--validation_inference_steps", "1", "--report_to", "tensorboard"]  # fmt: skip
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def compiled_run(tiny_iclevr_dir, tmp_path_factory) -> Path:
    """torch.compile through Accelerate's dynamo backend ("eager": dynamo's graph capture and the compiled-module
    wrapper without inductor's minutes of code generation), channels_last weights, bf16 autocast, EMA.
    """
    output_dir = tmp_path_factory.mktemp("gpu-path") / "run"
    launch_training(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
                    "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "2", "--use_ema",
                    "--channels_last", dynamo_backend="eager", mixed_precision="bf16")  # fmt: skip
    return output_dir


@pytest.fixture(scope="module")
def diverging_run(tiny_iclevr_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A learning rate of 1e30: the first step throws the weights to ~1e30, every later loss is NaN."""
    output_dir = tmp_path_factory.mktemp("diverging") / "run"
    result = launch_training(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
                             "--max_train_steps", "40", "--learning_rate", "1e30", "--lr_scheduler", "constant",
                             "--lr_warmup_steps", "0", "--checkpointing_steps", "1", "--validation_steps", "100",
                             check=False)  # fmt: skip
    return output_dir, result


def test_a_compiled_channels_last_bf16_run_saves_plain_weights_and_a_loadable_pipeline(compiled_run):
    info = json.loads((compiled_run / "run_info.json").read_text())
    checkpoint = load_file(compiled_run / "checkpoint-2" / "model.safetensors")
    pipeline = ICLEVRPipeline.from_pretrained(compiled_run)
    images = pipeline([["red sphere"]], num_inference_steps=1, output_type="np").images

    # bf16, except on a CPU without native bfloat16 kernels, where training falls back to fp32
    bf16 = "bf16" if info["device"] == "cuda" or cpu_has_native_bf16() else "no"
    assert (info["dynamo_backend"], info["mixed_precision"]) == ("EAGER", bf16)
    assert set(checkpoint) == set(create_model("tiny", sample_size=32).state_dict())  # no compiled-module prefix
    assert images.shape == (1, 32, 32, 3)


def test_tf32_and_fused_adamw_are_on_exactly_when_training_on_a_gpu(compiled_run):
    info = json.loads((compiled_run / "run_info.json").read_text())
    on_gpu = info["device"] == "cuda"

    assert on_gpu is torch.cuda.is_available()
    assert info["tf32"] is on_gpu
    assert info["fused_adamw"] is on_gpu


def test_fused_adamw_is_chosen_for_cuda():
    model = create_model("tiny", sample_size=32)

    assert create_optimizer(model, parse_args([]), torch.device("cuda")).defaults["fused"] is True
    assert create_optimizer(model, parse_args([]), torch.device("cpu")).defaults["fused"] is False


def test_tf32_is_enabled_for_cuda_through_flags_both_torch_apis_can_read():
    before = torch.get_float32_matmul_precision()
    try:
        assert enable_tf32(torch.device("cpu")) is False
        assert torch.get_float32_matmul_precision() == before

        assert enable_tf32(torch.device("cuda")) is True
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_diverging_run_stops_with_a_one_line_error_after_repeated_skipped_steps(diverging_run):
    output_dir, result = diverging_run
    limit = MAX_CONSECUTIVE_SKIPPED_STEPS

    assert result.returncode != 0
    assert f"error: training diverged: {limit} optimiser steps in a row (up to step {limit + 1})" in result.stderr
    # Distinct steps: accelerate >= 1.16 repeats a failed child's stderr in its own error.
    skipped = set(re.findall(r"step (\d+): non-finite loss or gradient .*; skipped the optimiser step", result.stderr))
    assert len(skipped) == limit - 1
    assert not (output_dir / "model_index.json").exists()


def test_skipped_steps_leave_the_weights_as_they_were(diverging_run, tiny_iclevr_dir, tmp_path):
    output_dir, _ = diverging_run
    grad_norms = logged_scalars(output_dir, "grad_norm")
    before = load_file(output_dir / "checkpoint-1" / "model.safetensors")  # the last step that was not skipped
    # No checkpoint is written while steps are skipped (below), so resume and end the run after two skipped steps:
    # the saved pipeline then holds the weights those steps left.
    train_in_process(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path / "resumed"),
                     "--max_train_steps", "3", "--learning_rate", "1e30", "--lr_scheduler", "constant",
                     "--lr_warmup_steps", "0", "--validation_steps", "100",
                     "--resume_from_checkpoint", str(output_dir / "checkpoint-1"))  # fmt: skip
    after = load_file(tmp_path / "resumed" / "unet" / "diffusion_pytorch_model.safetensors")

    assert math.isfinite(grad_norms[1])
    assert all(math.isnan(grad_norms[step]) for step in range(2, 11))
    # An AdamW step with NaN gradients would have made them NaN.
    assert all(torch.isfinite(tensor).all() for tensor in before.values())
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)


@pytest.fixture(scope="module")
def cuda_fp16_run(tiny_iclevr_dir, tmp_path_factory) -> Path:
    """fp16 on CUDA: Accelerate's autocast and GradScaler, the scaler's state saved in the checkpoints."""
    output_dir = tmp_path_factory.mktemp("cuda-fp16") / "run"
    launch_training(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
                    "--max_train_steps", "6", "--checkpointing_steps", "3", "--validation_steps", "6", "--use_ema",
                    "--channels_last", mixed_precision="fp16")  # fmt: skip
    return output_dir


@pytest.fixture(scope="module")
def cuda_inductor_run(tiny_iclevr_dir, tmp_path_factory) -> Path:
    """--torch_compile: inductor's generated kernels (Accelerate's dynamo backend), channels_last, bf16."""
    output_dir = tmp_path_factory.mktemp("cuda-inductor") / "run"
    launch_training(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
                    "--max_train_steps", "3", "--checkpointing_steps", "3", "--validation_steps", "3",
                    "--torch_compile", "--channels_last", mixed_precision="bf16")  # fmt: skip
    return output_dir


@requires_cuda
def test_an_fp16_run_on_cuda_keeps_its_grad_scaler_and_ends_with_finite_losses(cuda_fp16_run):
    info = json.loads((cuda_fp16_run / "run_info.json").read_text())
    losses = logged_scalars(cuda_fp16_run, "loss")

    assert (info["device"], info["mixed_precision"]) == ("cuda", "fp16")
    assert (cuda_fp16_run / "checkpoint-3" / "scaler.pt").is_file()
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(loss) for loss in losses.values())


@requires_cuda
def test_an_inductor_compiled_run_on_cuda_saves_plain_weights_and_finite_losses(cuda_inductor_run):
    info = json.loads((cuda_inductor_run / "run_info.json").read_text())
    checkpoint = load_file(cuda_inductor_run / "checkpoint-3" / "model.safetensors")
    losses = logged_scalars(cuda_inductor_run, "loss")

    assert (info["device"], info["dynamo_backend"]) == ("cuda", "INDUCTOR")
    assert set(checkpoint) == set(create_model("tiny", sample_size=32).state_dict())
    assert all(math.isfinite(loss) for loss in losses.values())
    assert ICLEVRPipeline.from_pretrained(cuda_inductor_run)([["red sphere"]], num_inference_steps=1).images


def _stand_in_accelerator(*, fp16: bool) -> SimpleNamespace:
    """The two things the guard reads from an Accelerator; fp16's GradScaler exists only on GPUs."""
    PartialState()  # Accelerate's logger needs the process state
    return SimpleNamespace(scaler=object() if fp16 else None, optimizer_step_was_skipped=False)


def test_the_guard_counts_only_consecutive_skipped_steps():
    guard = NonFiniteGuard(_stand_in_accelerator(fp16=False), limit=3)
    nan, one = torch.tensor(math.nan), torch.tensor(1.0)

    assert guard.allows_step(nan) is False and guard.allows_step(one) is True and guard.allows_step(None) is True
    assert [guard.record(step, 0.0, norm) for step, norm in enumerate([nan, nan, one, nan, nan], 1)] == [
        True, True, False, True, True]  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="3 optimiser steps in a row"):
        guard.record(6, math.nan, nan)


def test_under_fp16_the_guard_leaves_the_step_to_the_grad_scaler_and_counts_its_skips():
    accelerator = _stand_in_accelerator(fp16=True)
    guard = NonFiniteGuard(accelerator, limit=2)
    inf = torch.tensor(math.inf)

    assert guard.allows_step(inf) is True  # the scaler must see the step to skip it and lower its scale
    accelerator.optimizer_step_was_skipped = True
    assert guard.record(1, 0.5, inf) is True
    with pytest.raises(TrainingDivergedError):
        guard.record(2, 0.5, inf)


def test_no_checkpoint_is_written_while_steps_are_skipped(diverging_run):
    output_dir, result = diverging_run

    assert "step 2: non-finite loss or gradient" in result.stderr  # every later step is skipped too
    assert [p.name for p in output_dir.glob("checkpoint-*")] == ["checkpoint-1"]  # "latest" stays before them

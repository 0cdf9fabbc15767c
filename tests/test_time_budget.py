"""`--max_train_minutes`: a training time instead of a step count, set from timed steps that leave no trace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from training.args import parse_args
from training.time_budget import steps_for_minutes
from training.tracking import logged_scalars
from training_runs import train_in_process

TINY = [
    "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "8",
    "--lr_warmup_steps", "2", "--validation_steps", "1000", "--validation_inference_steps", "1", "--use_ema",
    "--report_to", "tensorboard", "--same_colour_repeats", "1",
    "--cpu_threads", "1",  # bit-for-bit comparisons: one summation order
]  # fmt: skip
MINUTES = "0.04"  # a tiny model takes a few steps per second on one thread: about eight steps


def _train(data_dir: Path, output_dir: Path, *flags: str) -> dict:
    train_in_process(*TINY, "--train_data_dir", str(data_dir), "--output_dir", str(output_dir), *flags)
    return json.loads((output_dir / "run_info.json").read_text())


@pytest.fixture(scope="module")
def budgeted_run(tiny_iclevr_dir, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("budget") / "run"
    return output_dir, _train(tiny_iclevr_dir, output_dir, "--max_train_minutes", MINUTES, "--checkpointing_steps", "2")


def test_the_minutes_become_the_steps_that_fit_at_the_timed_speed(budgeted_run):
    output_dir, info = budgeted_run
    steps = info["max_train_steps"]
    assert steps == steps_for_minutes(float(MINUTES), info["timed_steps_per_second"]) > 2
    assert sorted(logged_scalars(output_dir, "loss")) == list(range(1, steps + 1))
    assert json.loads((output_dir / "training_args.json").read_text())["trained"]["steps"] == steps
    assert not (output_dir / "time-budget-snapshot").exists()


def test_the_timed_steps_leave_no_trace_a_run_of_the_recorded_steps_trains_the_same_weights(
    budgeted_run, tiny_iclevr_dir, tmp_path
):
    output_dir, info = budgeted_run
    same = _train(tiny_iclevr_dir, tmp_path, "--max_train_steps", str(info["max_train_steps"]),
                  "--checkpointing_steps", "2")  # fmt: skip

    assert "timed_steps_per_second" not in same
    assert logged_scalars(tmp_path, "loss") == logged_scalars(output_dir, "loss")
    assert logged_scalars(tmp_path, "lr") == logged_scalars(output_dir, "lr")
    weights = "unet/diffusion_pytorch_model.safetensors"
    first, second = load_file(output_dir / weights), load_file(tmp_path / weights)
    assert all((first[name] == second[name]).all() for name in first)


def test_every_checkpoint_records_the_run_length(budgeted_run):
    output_dir, info = budgeted_run
    checkpoint = json.loads((output_dir / "checkpoint-2" / "checkpoint.json").read_text())
    assert checkpoint["max_train_steps"] == info["max_train_steps"]


def test_a_resumed_budget_keeps_the_recorded_length_instead_of_timing_again(budgeted_run, tiny_iclevr_dir, tmp_path):
    output_dir, info = budgeted_run
    shutil.copytree(output_dir / "checkpoint-2", tmp_path / "checkpoint-2")
    # Ten minutes would be thousands of steps if they were timed again.
    resumed = _train(tiny_iclevr_dir, tmp_path, "--max_train_minutes", "10", "--checkpointing_steps", "2",
                     "--resume_from_checkpoint", "latest")  # fmt: skip

    assert resumed["max_train_steps"] == info["max_train_steps"] and "timed_steps_per_second" not in resumed
    first, second = logged_scalars(output_dir, "loss"), logged_scalars(tmp_path, "loss")
    assert second == {step: loss for step, loss in first.items() if step > 2}


def test_steps_and_minutes_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--max_train_steps", "100", "--max_train_minutes", "60"])
    assert "give either --max_train_steps (100) or --max_train_minutes (60), not both" in capsys.readouterr().err


def test_infinite_minutes_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--max_train_minutes", "inf"])
    assert "--max_train_minutes inf would never end" in capsys.readouterr().err

"""What train_conditional.py checks before any heavy work: a mistake costs seconds, not a render or a preprocessing."""

from __future__ import annotations

import time

import pytest

from training_runs import train_in_process

TINY = ["--model_config_name_or_path", "tiny", "--resolution", "8", "--max_train_steps", "1", "--report_to", "none"]


def test_a_bad_evaluator_fails_before_the_built_in_data_is_rendered(tmp_path, capsys):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(*TINY, "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run"),
                         "--evaluator_checkpoint", str(tmp_path / "missing.pth"))  # fmt: skip

    assert str(exit_info.value.code).startswith("error: evaluator checkpoint") and capsys.readouterr().err == ""
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # nothing rendered or created
    assert time.perf_counter() - start < 10


def test_a_large_resolution_is_warned_about_in_one_line_before_work_starts(tmp_path, capsys):
    with pytest.raises(SystemExit):  # stopped right after the warning by a missing data folder
        train_in_process(*TINY, "--resolution", "256", "--train_data_dir", str(tmp_path / "none"),
                         "--output_dir", str(tmp_path / "run"))  # fmt: skip

    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: --resolution 256 costs about 16x the activation memory and time per image")


def test_latest_without_any_checkpoint_starts_a_new_run_and_says_so(tiny_iclevr_dir, tmp_path, capsys):
    train_in_process(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path / "run"),
                     "--validation_inference_steps", "1", "--resume_from_checkpoint", "latest")  # fmt: skip

    assert f"No checkpoint in {tmp_path / 'run'} to resume from; starting a new run." in capsys.readouterr().err
    assert (tmp_path / "run" / "model_index.json").is_file()

"""Checkpoints: no file in one can run code, no kill during a save loses progress, "latest" skips a checkpoint that
does not read back and says why, a checkpoint of another run is refused naming both runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from conftest import REPO_ROOT
from payloads import plant
from pipeline import ConditionalUNet2DModel
from training.checkpoint_files import CheckpointError, ForeignCheckpointError
from training.checkpointing import checkpoint_signature, load_checkpoint, resolve_resume_checkpoint
from training.ema_state import parameter_shapes, register_ema_checkpointing
from training.model_presets import create_model
from training_runs import LAUNCH_TIMEOUT, launch_training, train_in_process

TINY = ["--model_config_name_or_path", "tiny", "--resolution", "8", "--train_batch_size", "4",
        "--lr_warmup_steps", "0", "--validation_steps", "100", "--validation_inference_steps", "1",
        "--report_to", "none", "--use_ema"]  # fmt: skip
RUN_SIGNATURE = Namespace(model_config_name_or_path="tiny", resolution=8, use_ema=True, prediction_type="v_prediction")


@pytest.fixture(scope="module")
def run_dir(tiny_iclevr_dir, tmp_path_factory) -> Path:
    """A finished tiny run with EMA and a checkpoint at every one of its 2 steps."""
    output_dir = tmp_path_factory.mktemp("checkpoints") / "run"
    train_in_process(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
                     "--max_train_steps", "2", "--checkpointing_steps", "1")  # fmt: skip
    return output_dir


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _expected() -> tuple[dict, dict]:
    with torch.device("meta"):
        model = create_model("tiny", sample_size=8)
    return checkpoint_signature(RUN_SIGNATURE, model), parameter_shapes(model)


def _resolve(resume_from: str, output_dir: Path) -> tuple[Path | None, list[str]]:
    warnings = []
    return resolve_resume_checkpoint(resume_from, output_dir, *_expected(), warn=warnings.append), warnings


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---- nothing in a checkpoint is unpickled ------------------------------------------------------------------------


def test_a_checkpoint_holds_safetensors_json_and_torch_files_that_load_with_weights_only(run_dir):
    checkpoint = run_dir / "checkpoint-2"
    files = sorted(p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file())

    assert files == ["checkpoint.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin",
                     "unet_ema/config.json", "unet_ema/diffusion_pytorch_model.safetensors"]  # fmt: skip
    for name in ("optimizer.bin", "scheduler.bin"):
        torch.load(checkpoint / name, weights_only=True)
    assert json.loads((checkpoint / "unet_ema" / "config.json").read_text())["optimization_step"] == 2


def test_the_planted_payload_does_run_code_when_fully_unpickled(tmp_path):
    marker = tmp_path / "ran"
    torch.load(plant(tmp_path / "optimizer.bin", marker), weights_only=False)  # what must never happen
    assert marker.exists()


def _training_state() -> tuple[Accelerator, EMAModel]:
    """What train_conditional.py prepares before it loads a checkpoint: model, AdamW, LR schedule, EMA hook."""
    accelerator = Accelerator(cpu=True)
    model = create_model("tiny", sample_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, get_scheduler("constant", optimizer))
    ema = EMAModel(model.parameters(), model_cls=ConditionalUNet2DModel, model_config=model.config)
    register_ema_checkpointing(accelerator, ema)
    return accelerator, ema


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
                                  "model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"])  # fmt: skip
def test_the_loader_behind_the_checks_never_runs_a_planted_payload_either(run_copy, tmp_path, name):
    marker = tmp_path / "ran"
    plant(run_copy / "checkpoint-2" / name, marker)
    accelerator, _ = _training_state()
    try:
        with pytest.raises(CheckpointError, match="checkpoint-2") as error:
            load_checkpoint(accelerator, run_copy / "checkpoint-2")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)

    assert not marker.exists()
    assert "\n" not in str(error.value)


def test_a_loaded_checkpoint_restores_the_ema_it_saved(run_dir):
    accelerator, ema = _training_state()
    try:
        load_checkpoint(accelerator, run_dir / "checkpoint-2")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)

    settings = json.loads((run_dir / "checkpoint-2" / "unet_ema" / "config.json").read_text())
    assert ema.optimization_step == settings["optimization_step"] == 2
    saved = load_file(run_dir / "checkpoint-2" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    names = list(parameter_shapes(create_model("tiny", sample_size=8)))
    assert all(torch.equal(ema.shadow_params[i], saved[name]) for i, name in enumerate(names))


# ---- "latest" skips what does not read back ----------------------------------------------------------------------


def _drop_ema_setting(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "unet_ema" / "config.json").read_text())
    del config["optimization_step"]
    (checkpoint / "unet_ema" / "config.json").write_text(json.dumps(config))


def _record_a_fractional_run_length(checkpoint: Path) -> None:
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    (checkpoint / "checkpoint.json").write_text(json.dumps({**info, "max_train_steps": 2.5}))


DAMAGES = {
    "a truncated model.safetensors": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors"),
    "a truncated optimizer.bin": (lambda c: _truncate(c / "optimizer.bin"), "optimizer.bin"),
    "an EMA config without its step": (_drop_ema_setting, "'optimization_step'"),
    "no EMA weights": (lambda c: (c / "unet_ema" / "diffusion_pytorch_model.safetensors").unlink(), "EMA state"),
    "no checkpoint.json": (lambda c: (c / "checkpoint.json").unlink(), "checkpoint.json"),
    "a run length that is no whole number": (_record_a_fractional_run_length, "max_train_steps 2.5"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_latest_skips_a_checkpoint_that_does_not_read_back_says_why_and_takes_the_previous(run_copy, damage):
    harm, named = DAMAGES[damage]
    harm(run_copy / "checkpoint-2")

    checkpoint, warnings = _resolve("latest", run_copy)

    assert checkpoint == run_copy / "checkpoint-1"
    [warning] = warnings
    assert warning.startswith("warning: skipping checkpoint-2") and named in warning and "\n" not in warning


@pytest.mark.parametrize("damage", DAMAGES)
def test_the_same_checkpoint_asked_for_by_name_is_refused_in_one_line(run_copy, damage):
    harm, named = DAMAGES[damage]
    harm(run_copy / "checkpoint-2")

    with pytest.raises(CheckpointError, match=named) as error:
        _resolve(str(run_copy / "checkpoint-2"), run_copy)
    assert "\n" not in str(error.value)


def test_latest_with_no_checkpoint_that_reads_back_is_an_error_not_a_new_run(run_copy):
    for step in (1, 2):
        _truncate(run_copy / f"checkpoint-{step}" / "optimizer.bin")

    with pytest.raises(CheckpointError, match="no checkpoint in .* can be resumed from"):
        _resolve("latest", run_copy)


@pytest.mark.parametrize(("flags", "this_run"), [(["--model_config_name_or_path", "cpu"], "the cpu model"),
                                                 (["--resolution", "16"], "resolution 16")])  # fmt: skip
def test_a_checkpoint_of_another_run_is_refused_naming_both(run_copy, tiny_iclevr_dir, capsys, flags, this_run):
    with pytest.raises(SystemExit) as exit_info:
        train_in_process(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(run_copy),
                         "--resume_from_checkpoint", "latest", *flags)  # fmt: skip

    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "written for the tiny model at resolution 8" in message and this_run in message
    assert capsys.readouterr().err == ""


def test_a_foreign_checkpoint_is_refused_even_when_older_ones_would_fit(run_copy):
    with torch.device("meta"):
        other = create_model("cpu", sample_size=8)
    info = json.loads((run_copy / "checkpoint-2" / "checkpoint.json").read_text())
    info.update(checkpoint_signature(Namespace(**{**vars(RUN_SIGNATURE), "model_config_name_or_path": "cpu"}), other))
    (run_copy / "checkpoint-2" / "checkpoint.json").write_text(json.dumps(info))

    with pytest.raises(ForeignCheckpointError, match="checkpoint-2 was written for the cpu model"):
        _resolve("latest", run_copy)


def test_a_resumed_run_replaces_the_damaged_checkpoint_it_skipped(run_copy, tiny_iclevr_dir, capsys):
    _truncate(run_copy / "checkpoint-2" / "model.safetensors")

    train_in_process(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(run_copy),
                     "--max_train_steps", "2", "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest")

    err = capsys.readouterr().err
    assert "warning: skipping checkpoint-2" in err and "model.safetensors" in err
    assert _resolve("latest", run_copy) == (run_copy / "checkpoint-2", [])
    assert not [p.name for p in run_copy.iterdir() if p.name.endswith((".partial", ".deleting"))]


# ---- kills during a save -----------------------------------------------------------------------------------------


def _kill_trials(output_dir: Path, *flags: str) -> list[list[dict]]:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "save_kills.py"), str(output_dir), *flags],
                            capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert result.returncode == 0 and "child failed" not in result.stderr, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("limit", [1, 2])
def test_a_kill_at_any_point_of_a_save_never_loses_progress_or_a_complete_checkpoint(tmp_path, limit):
    trials = _kill_trials(tmp_path / "run", "--limit", str(limit), "--seconds_kills", "6")

    events = trials[2][1]["events"]  # the file operations of one save: each is a kill point
    assert events >= 10 and len([t for t in trials if t[-1]["killed"]]) >= events
    saved, before = 0, None
    for records in trials:
        assert records[-1]["exit_code"] in (0, -signal.SIGKILL), records
        state = next((r for r in records if "found" in r), None)
        if state is not None:
            found = state["found"]
            assert state["unreadable"] == [] and state["leftovers"] == [], state
            assert state["resumed"] == max(found, default=0) >= saved  # no save that returned was lost
            assert state["ema_step"] == state["resumed"]  # the EMA came back with the rest
            if before is not None:  # never fewer complete checkpoints than before the last save
                assert max(found) >= max(before, default=0), (before, found)
                assert len(found) >= min(len(before), limit), (before, found)
            before = found
        saved = max([saved] + [r["saved"] for r in records if "saved" in r])
    assert saved >= 3  # the trials without a kill saved


def test_a_save_that_runs_out_of_disk_says_so_in_one_line_and_keeps_the_earlier_checkpoints(tmp_path):
    first, second, failed, resumed = _kill_trials(tmp_path / "run", "--limit", "1", "--disk_full")

    [message] = [r["save_failed"] for r in failed if "save_failed" in r]
    assert message.startswith("saving ") and "File too large" in message and "\n" not in message
    assert "earlier checkpoints are intact (checkpoint-2)" in message
    assert resumed[0]["found"] == [2] and resumed[0]["leftovers"] == [] and resumed[0]["resumed"] == 2


def test_a_training_killed_during_a_save_resumes_from_the_last_complete_checkpoint(tiny_iclevr_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = [*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
            "--checkpointing_steps", "1", "--checkpoints_total_limit", "1"]  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--dynamo_backend", "no", "--mixed_precision", "no", str(REPO_ROOT / "train_conditional.py"),
               *args, "--max_train_steps", "1000"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline, saving = time.monotonic() + LAUNCH_TIMEOUT, []
    while not saving and time.monotonic() < deadline:
        saving = [p for p in output_dir.glob("checkpoint-*.partial") if int(p.name[11:-8]) >= 3]
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and the training process, in the middle of a save
    process.wait()
    [partial] = saving

    result = launch_training(*args, "--max_train_steps", "8", "--resume_from_checkpoint", "latest")

    resumed_from = int(result.stdout.split("Resuming from ")[1].split("checkpoint-")[1].split()[0])
    assert resumed_from in (int(partial.name[11:-8]) - 1, int(partial.name[11:-8]))
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-8"]
    assert (output_dir / "model_index.json").is_file()


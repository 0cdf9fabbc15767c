"""`accelerate launch train_conditional.py` end to end on a tiny render, with the tiny model preset."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import bf16_support
from training.args import parse_args
from training.cpu_threads import physical_cores
from training.tracking import logged_scalars
from training_runs import launch_training, train_in_process

# 36 images at batch 8 are 5 batches an epoch, so checkpoint-6 sits in the middle of the second epoch.
TINY_RUN = [
    "--model_config_name_or_path", "tiny",
    "--resolution", "32",
    "--train_batch_size", "8",
    "--max_train_steps", "8",
    "--lr_warmup_steps", "2",
    "--checkpointing_steps", "2",
    "--checkpoints_total_limit", "2",
    "--validation_steps", "4",
    "--validation_inference_steps", "2",
    "--use_ema",
    "--random_flip",
    "--mixed_precision", "bf16",
    "--report_to", "tensorboard",
    "--same_colour_repeats", "1",  # every image once, so that the epoch arithmetic below counts the 36 images
    # The resume test compares losses bit for bit: a fixed thread count, since `auto` follows the machine's load
    # and another count sums floats in another order.
    "--cpu_threads", "1",
]




@pytest.fixture(scope="module")
def tiny_launch(tiny_iclevr_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    output_dir = tmp_path_factory.mktemp("train") / "run"
    result = launch_training(*TINY_RUN, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir))
    return output_dir, result


@pytest.fixture(scope="module")
def tiny_run(tiny_launch) -> Path:
    return tiny_launch[0]


def test_training_keeps_only_the_newest_checkpoints(tiny_run):
    assert sorted(p.name for p in tiny_run.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]


def test_checkpoint_holds_model_optimizer_scheduler_ema_and_rng_state_and_no_custom_pickle(tiny_run):
    files = {p.relative_to(tiny_run / "checkpoint-8").as_posix() for p in (tiny_run / "checkpoint-8").rglob("*")}
    assert files == {"checkpoint.json", "model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                     "unet_ema", "unet_ema/config.json", "unet_ema/diffusion_pytorch_model.safetensors"}


def test_validation_writes_a_grid_every_validation_steps(tiny_run):
    assert sorted(p.name for p in (tiny_run / "validation").iterdir()) == ["step-000004.png", "step-000008.png"]


def test_training_logs_loss_lr_grad_norm_and_throughput_every_step(tiny_run):
    for tag in ("loss", "lr", "grad_norm", "images_per_second", "epoch", "cpu_threads"):
        assert sorted(logged_scalars(tiny_run, tag)) == list(range(1, 9)), tag


def test_training_args_record_what_was_trained_next_to_the_flags(tiny_run, tiny_iclevr_dir):
    training_args = json.loads((tiny_run / "training_args.json").read_text())

    assert training_args["num_train_epochs"] == 100  # the flag, which --max_train_steps 8 overrode
    # 36 images at batch 8: 5 steps an epoch, the fifth of 4 images; 8 steps = one epoch and 3 full batches.
    assert training_args["trained"] == {
        "steps": 8, "epochs": 1.6, "images_seen": 36 + 3 * 8,
        "data": {"source": "folder", "path": str(tiny_iclevr_dir.resolve()), "images": 36},
    }


def test_same_colour_images_are_shown_three_times_by_default_lengthening_the_epoch_not_the_data(
    tiny_iclevr_dir, tmp_path
):
    # The tiny render's 36 images hold 7 with two objects of one colour: 36 + 2 * 7 = 50 per epoch, 7 batches of 8.
    train_in_process("--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path),
                     "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "8",
                     "--max_train_steps", "7", "--validation_steps", "100",
                     "--validation_inference_steps", "1", "--report_to", "tensorboard")

    training_args = json.loads((tmp_path / "training_args.json").read_text())
    assert training_args["same_colour_repeats"] == 3
    assert training_args["trained"]["epochs"] == 1.0
    assert training_args["trained"]["images_seen"] == 50
    assert training_args["trained"]["data"]["images"] == 36


def test_label_embedding_norm_sets_the_trained_models_starting_norm_and_is_saved_in_its_config(
    tiny_iclevr_dir, tmp_path
):
    train_in_process("--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path),
                     "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "8",
                     "--max_train_steps", "1", "--learning_rate", "1e-9", "--validation_steps", "100",
                     "--validation_inference_steps", "1", "--report_to", "tensorboard", "--label_embedding_norm", "5")

    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert config["label_embedding_norm"] == 5
    weights = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    # one step at a learning rate of 1e-9 leaves the columns where they started
    assert weights["label_projection.weight"].float().norm(dim=0) == pytest.approx([5.0] * 24, rel=1e-3)


def test_zero_init_residual_reaches_the_trained_models_config(tiny_iclevr_dir, tmp_path):
    train_in_process("--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path),
                     "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "8",
                     "--max_train_steps", "1", "--learning_rate", "1e-9", "--validation_steps", "100",
                     "--validation_inference_steps", "1", "--report_to", "tensorboard", "--zero_init_residual")

    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert config["zero_init_residual"] is True
    weights = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    # one step at a learning rate of 1e-9 leaves the output convolution next to zero
    assert weights["unet.conv_out.weight"].float().abs().max() < 1e-6


def _count_validation_grids(monkeypatch) -> list[int]:
    """Every grid of the validation lists drawn from here on appends its number of images."""
    from training.validation import Validation

    drawn, sample = [], Validation.sample

    def counted(self, pipeline):
        drawn.append(len(self.label_lists))
        return sample(self, pipeline)

    monkeypatch.setattr(Validation, "sample", counted)
    return drawn


def _train_two_steps(data_dir: Path, output_dir: Path, *flags: str) -> None:
    train_in_process("--train_data_dir", str(data_dir), "--output_dir", str(output_dir),
                     "--model_config_name_or_path", "tiny", "--resolution", "16", "--train_batch_size", "4",
                     "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "100",
                     "--validation_inference_steps", "1", "--use_ema", "--report_to", "none", *flags)  # fmt: skip


def test_samples_png_is_the_final_validation_grid_drawn_once(tiny_iclevr_dir, tmp_path, monkeypatch):
    drawn = _count_validation_grids(monkeypatch)
    _train_two_steps(tiny_iclevr_dir, tmp_path)

    assert drawn == [8]  # the final validation's grid; the export saves it instead of drawing it again
    assert (tmp_path / "samples.png").read_bytes() == (tmp_path / "validation" / "step-000002.png").read_bytes()


def test_a_run_resumed_from_its_final_checkpoint_still_draws_samples_png(tiny_iclevr_dir, tmp_path, monkeypatch):
    _train_two_steps(tiny_iclevr_dir, tmp_path / "first")
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "first" / "checkpoint-2", resumed / "checkpoint-2")
    drawn = _count_validation_grids(monkeypatch)
    _train_two_steps(tiny_iclevr_dir, resumed, "--resume_from_checkpoint", "latest")

    assert drawn == [8] and not (resumed / "validation").exists()  # no step trained, so no validation ran
    assert (resumed / "samples.png").read_bytes() == (tmp_path / "first" / "samples.png").read_bytes()


def _one_bf16_step(data_dir: Path, output_dir: Path) -> tuple[dict, dict]:
    train_in_process("--train_data_dir", str(data_dir), "--output_dir", str(output_dir),
                     "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "8",
                     "--max_train_steps", "1", "--validation_steps", "100", "--validation_inference_steps", "1",
                     "--report_to", "tensorboard", "--mixed_precision", "bf16")
    info = json.loads((output_dir / "run_info.json").read_text())
    return info, json.loads((output_dir / "training_args.json").read_text())


def test_bf16_on_a_cpu_without_native_bfloat16_trains_in_float32_and_says_so(
    tiny_iclevr_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(bf16_support, "cpu_has_native_bf16", lambda: False)
    info, training_args = _one_bf16_step(tiny_iclevr_dir, tmp_path)

    assert info["mixed_precision"] == training_args["mixed_precision"] == "no"
    assert "--mixed_precision bf16: this CPU has no native bfloat16" in caplog.text


def test_bf16_on_a_cpu_with_native_bfloat16_trains_in_bf16(tiny_iclevr_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(bf16_support, "cpu_has_native_bf16", lambda: True)
    info, training_args = _one_bf16_step(tiny_iclevr_dir, tmp_path)

    assert info["mixed_precision"] == training_args["mixed_precision"] == "bf16"
    assert "native bfloat16" not in caplog.text


def test_a_non_positive_label_embedding_norm_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--label_embedding_norm", "0"])
    assert "--label_embedding_norm: must be a positive number, got 0" in capsys.readouterr().err


def test_the_run_ends_with_one_summary_line(tiny_launch):
    output_dir, result = tiny_launch
    last_line = result.stdout.strip().splitlines()[-1]

    assert last_line.startswith("Trained 8 steps (1.6 epochs, 60 images) in ")
    assert " wall time, " in last_line and " images/s while training; " in last_line
    assert last_line.endswith(f"the pipeline is in {output_dir}")


def test_cpu_training_uses_every_core_by_default_whatever_accelerate_exported(tiny_iclevr_dir, tmp_path):
    launch_training("--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path),
                    "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "4",
                    "--max_train_steps", "2", "--validation_steps", "100", "--validation_inference_steps", "1",
                    "--report_to", "tensorboard")

    # The launch exported OMP_NUM_THREADS=1 (accelerate's default); the auto policy takes the cores back.
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["cpu_thread_policy"] == "auto"
    assert info["cpu_threads"] == physical_cores()
    assert 1 <= min(logged_scalars(tmp_path, "cpu_threads").values())
    assert max(logged_scalars(tmp_path, "cpu_threads").values()) <= physical_cores()


def test_a_fixed_cpu_thread_count_is_recorded_and_kept(tiny_run):
    info = json.loads((tiny_run / "run_info.json").read_text())
    assert (info["cpu_thread_policy"], info["cpu_threads"]) == ("1", 1)
    assert set(logged_scalars(tiny_run, "cpu_threads").values()) == {1}


def test_training_leaves_a_loadable_pipeline_and_a_sample_grid(tiny_run):
    from pipeline import ICLEVRPipeline

    pipe = ICLEVRPipeline.from_pretrained(tiny_run)
    images = pipe(labels=[["red sphere", "cyan cube"]], num_inference_steps=2, output_type="np").images

    assert images.shape == (1, 32, 32, 3)
    assert pipe.vocabulary.labels[9] == "red sphere"
    assert (tiny_run / "samples.png").is_file()


def test_the_saved_unet_loads_alone_with_diffusers_automodel_as_remote_code(tiny_run):
    from diffusers import AutoModel

    from pipeline import ICLEVRPipeline

    unet = AutoModel.from_pretrained(str(tiny_run / "unet"), trust_remote_code=True)

    assert type(unet).__name__ == "ConditionalUNet2DModel" and type(unet).__module__.startswith("diffusers_modules")
    expected = ICLEVRPipeline.from_pretrained(tiny_run).unet.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in unet.state_dict().items())


def test_resume_from_a_mid_epoch_checkpoint_reproduces_the_uninterrupted_losses(tiny_run, tiny_iclevr_dir, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tiny_run / "checkpoint-6", resumed / "checkpoint-6")

    launch_training(*TINY_RUN, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(resumed),
                    "--resume_from_checkpoint", "latest")

    first, second = logged_scalars(tiny_run, "loss"), logged_scalars(resumed, "loss")
    assert sorted(second) == [7, 8]  # no replayed or skipped steps
    assert [second[7], second[8]] == [first[7], first[8]]


def test_ema_and_lr_schedule_step_once_per_optimizer_step_under_gradient_accumulation(tiny_iclevr_dir, tmp_path):
    launch_training("--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path),
                    "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "4",
                    "--gradient_accumulation_steps", "3", "--max_train_steps", "3", "--checkpointing_steps", "3",
                    "--validation_steps", "100", "--validation_inference_steps", "1", "--use_ema",
                    "--report_to", "none")

    ema_settings = json.loads((tmp_path / "checkpoint-3" / "unet_ema" / "config.json").read_text())
    scheduler_state = torch.load(tmp_path / "checkpoint-3" / "scheduler.bin", weights_only=True)
    assert ema_settings["optimization_step"] == 3
    assert scheduler_state["last_epoch"] == 3
    # 3 steps are no multiple of --validation_steps 100: the final weights are validated all the same.
    assert [p.name for p in (tmp_path / "validation").iterdir()] == ["step-000003.png"]


def test_a_misspelt_flag_is_refused_with_the_closest_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--train_batchsize", "8"])
    assert "did you mean --train_batch_size?" in capsys.readouterr().err


def test_a_resolution_that_is_not_a_multiple_of_8_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--resolution", "30"])
    assert "--resolution must be a multiple of 8" in capsys.readouterr().err


def test_push_to_hub_without_a_repo_id_is_refused_before_training(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--push_to_hub"])
    assert "--push_to_hub needs --hub_model_id" in capsys.readouterr().err

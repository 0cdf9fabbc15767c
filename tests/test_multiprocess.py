"""train_conditional.py with two CPU processes: one distributed run (gloo), not two runs side by side.

`accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs starts two processes that Accelerate
joins into one process group only with ACCELERATE_USE_CPU=1 (MULTI_CPU, gloo); without it they would be two
independent runs, which the script refuses.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.optimization import get_scheduler
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO_ROOT
from pipeline import ICLEVRPipeline
from training.distributed import parameter_checksum
from training.hub import push_dataset_to_hub
from training.evaluation import evaluate_pipeline, image_generator, load_condition_sets
from training.figures import image_grid
from training.evaluator import build_evaluator, load_evaluator, save_evaluator
from training.cpu_threads import physical_cores
from training.model_presets import create_model
from training.sampling import validation_label_lists
from training.tracking import logged_scalars
from training_runs import run_launch

NUM_IMAGES = 36  # the tiny render
BATCH, ACCUMULATION, STEPS, WARMUP, LEARNING_RATE = 4, 2, 4, 2, 2e-4
CONDITION_FILES = {
    "five": [["red cube"], ["blue sphere", "gray cylinder"], ["cyan cube"], ["green sphere"], ["yellow cube"]],
    "three": [["purple cylinder"], ["brown cube", "red sphere"], ["gray sphere", "blue cube", "cyan cylinder"]],
}
SETTINGS = {"num_inference_steps": 2, "guidance_scale": 2.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(*args: str, use_cpu: bool) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(free_port()), "--dynamo_backend", "no",
               "--mixed_precision", "no", str(REPO_ROOT / "train_conditional.py"), *args]  # fmt: skip
    return run_launch(command, env)


@pytest.fixture(scope="module")
def evaluation_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multiprocess-evaluation")
    torch.manual_seed(0)
    save_evaluator(build_evaluator(), root / "evaluator.pth")
    files = {"evaluator": root / "evaluator.pth"}
    for name, conditions in CONDITION_FILES.items():
        files[name] = root / f"{name}.json"
        files[name].write_text(json.dumps(conditions))
    return files


@pytest.fixture(scope="module")
def two_process_run(tiny_iclevr_dir, evaluation_files, tmp_path_factory) -> tuple[Path, str]:
    """Two processes x batch 4 x accumulation 2 = 16 images per step; EMA, checkpoints, one validation with the
    evaluation at the last step.
    """
    output_dir = tmp_path_factory.mktemp("multiprocess") / "run"
    result = launch_two_processes(
        "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
        "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", str(BATCH),
        "--gradient_accumulation_steps", str(ACCUMULATION), "--max_train_steps", str(STEPS),
        "--same_colour_repeats", "1",  # an epoch of NUM_IMAGES, for the epoch split below
        "--learning_rate", str(LEARNING_RATE), "--lr_warmup_steps", str(WARMUP), "--lr_scheduler", "cosine",
        "--checkpointing_steps", "2", "--validation_steps", str(STEPS),
        "--validation_inference_steps", str(SETTINGS["num_inference_steps"]),
        "--validation_guidance_scale", str(SETTINGS["guidance_scale"]), "--use_ema", "--report_to", "tensorboard",
        "--evaluator_checkpoint", str(evaluation_files["evaluator"]),
        "--evaluation_conditions", str(evaluation_files["five"]), str(evaluation_files["three"]),
        use_cpu=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result.stderr



def test_accelerate_sees_one_run_of_two_cpu_processes(two_process_run):
    output_dir, _ = two_process_run
    info = json.loads((output_dir / "run_info.json").read_text())

    assert info["num_processes"] == 2
    assert info["distributed_type"] == "MULTI_CPU"
    assert info["images_per_update"] == BATCH * 2 * ACCUMULATION
    assert info["cpu_threads"] == max(1, physical_cores() // 2)  # each process its share of the cores


def test_both_processes_end_with_the_weights_of_the_saved_checkpoint(two_process_run):
    # Each process draws its own noise and timesteps: equal weights mean averaged gradients at every step.
    output_dir, log = two_process_run
    checksums = dict(re.findall(r"process (\d) of 2: parameter checksum (\w+)", log))
    model = create_model("tiny", sample_size=32)
    model.load_state_dict(load_file(output_dir / f"checkpoint-{STEPS}" / "model.safetensors"))

    assert set(checksums) == {"0", "1"}
    assert checksums["0"] == checksums["1"] == parameter_checksum(model)


def test_an_epoch_is_split_between_the_processes(two_process_run):
    output_dir, _ = two_process_run
    info = json.loads((output_dir / "run_info.json").read_text())
    batches_per_process = math.ceil(NUM_IMAGES / (BATCH * 2))

    assert info["updates_per_epoch"] == math.ceil(batches_per_process / ACCUMULATION)
    assert sorted(logged_scalars(output_dir, "epoch").items()) == [(1, 0), (2, 0), (3, 0), (4, 1)]


def test_lr_follows_the_single_process_schedule_once_per_optimizer_step(two_process_run):
    output_dir, _ = two_process_run
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LEARNING_RATE)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    expected = {}
    for step in range(1, STEPS + 1):
        optimizer.step()
        schedule.step()
        expected[step] = schedule.get_last_lr()[0]

    assert logged_scalars(output_dir, "lr") == pytest.approx(expected, rel=1e-6)


def test_only_the_main_process_writes_checkpoints_grids_logs_and_the_pipeline(two_process_run):
    output_dir, log = two_process_run
    checkpoint = {path.name for path in (output_dir / f"checkpoint-{STEPS}").iterdir()}

    assert [name for name in checkpoint if name.endswith(".safetensors")] == ["model.safetensors"]
    # Accelerate keeps each process's RNG state, the one per-process file a checkpoint has.
    assert {name for name in checkpoint if name.startswith("random_states")} == {"random_states_0.pkl",
                                                                                 "random_states_1.pkl"}
    assert len(list((output_dir / "logs" / "iclevr-ddpm").glob("events.out.tfevents.*"))) == 1
    assert [path.name for path in (output_dir / "validation").iterdir()] == [f"step-{STEPS:06d}.png"]
    assert log.count("Saved the pipeline") == 1


def test_the_final_grid_is_sampled_in_shares_and_gathered_in_list_order(two_process_run):
    output_dir, _ = two_process_run
    pipeline = ICLEVRPipeline.from_pretrained(output_dir)
    pipeline.set_progress_bar_config(disable=True)
    lists = validation_label_lists(pipeline.vocabulary)
    images = pipeline(lists, generator=[image_generator(0, i) for i in range(len(lists))], **SETTINGS).images
    expected = np.asarray(image_grid(images), dtype=int)
    saved = np.asarray(Image.open(output_dir / "samples.png").convert("RGB"), dtype=int)

    assert saved.shape == expected.shape == (32, 8 * 32, 3)  # one image per list, not one per list and process
    # Another batch size and thread count move a handful of pixel values by a level or two; another order or
    # other generators would change almost all of them.
    assert np.abs(saved - expected).mean() < 0.01


def test_the_evaluation_scores_every_condition_once_and_matches_a_single_process_evaluation(
    two_process_run, evaluation_files
):
    output_dir, log = two_process_run
    best = ICLEVRPipeline.from_pretrained(output_dir / "best")
    condition_sets = load_condition_sets({name: evaluation_files[name] for name in CONDITION_FILES}, best.vocabulary)
    single = evaluate_pipeline(best, load_evaluator(evaluation_files["evaluator"], "cpu"), condition_sets, seeds=[0],
                               progress=False, **SETTINGS).report  # fmt: skip

    assert f"step {STEPS}: evaluated 8 images" in log  # 5 + 3 conditions x 1 seed, not x 2 processes
    for name in CONDITION_FILES:
        logged = logged_scalars(output_dir, f"evaluation/{name}/accuracy")
        assert logged == pytest.approx({STEPS: single["condition_sets"][name]["accuracy_mean"]}), name


def test_processes_that_do_not_form_one_run_are_refused(tiny_iclevr_dir, tmp_path):
    result = launch_two_processes("--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path / "run"),
                                  use_cpu=False)  # fmt: skip

    assert result.returncode != 0
    assert "error: 2 processes were launched but Accelerate sees 1" in result.stderr
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu" in result.stderr
    assert not (tmp_path / "run").exists()


def test_both_processes_train_on_the_hub_commit_the_main_process_resolved(tiny_iclevr_dir, hub_repo_id, hub_server,
                                                                         tmp_path):
    commit = push_dataset_to_hub(tiny_iclevr_dir, hub_repo_id)
    hub_server.requests.clear()

    result = launch_two_processes(
        "--dataset_name", hub_repo_id, "--output_dir", str(tmp_path / "run"), "--model_config_name_or_path", "tiny",
        "--resolution", "32", "--train_batch_size", "4", "--max_train_steps", "2", "--lr_warmup_steps", "0",
        "--validation_inference_steps", "1", "--report_to", "none", "--cache_dir", str(tmp_path / "cache"),
        use_cpu=True,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((tmp_path / "run" / "training_args.json").read_text())["trained"]
    assert trained["data"] == {"source": "hub", "dataset": hub_repo_id, "revision": commit.oid, "images": NUM_IMAGES}
    # Only the main process asked where the main branch points; the other read the commit it was given.
    unpinned = {f"/api/datasets/{hub_repo_id}", f"/api/datasets/{hub_repo_id}/revision/main"}
    assert len([r for r in hub_server.find_requests("GET", "/api/datasets/") if r.path in unpinned]) == 1


def test_a_time_budget_gives_both_processes_the_main_processs_step_count(tiny_iclevr_dir, tmp_path):
    # Each process times its own steps; training different step counts would hang the gradient exchange.
    result = launch_two_processes(
        "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(tmp_path),
        "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", str(BATCH),
        "--gradient_accumulation_steps", str(ACCUMULATION), "--max_train_minutes", "0.02",
        "--validation_steps", "1000", "--validation_inference_steps", "1", "--report_to", "tensorboard",
        use_cpu=True,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads((tmp_path / "run_info.json").read_text())["max_train_steps"]
    checksums = dict(re.findall(r"process (\d) of 2: parameter checksum (\w+)", result.stderr))
    assert sorted(logged_scalars(tmp_path, "loss")) == list(range(1, steps + 1))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]
    assert not (tmp_path / "time-budget-snapshot").exists()

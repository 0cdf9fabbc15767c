"""benchmarks/gpu_check.sh --smoke: every stage of the GPU check, tiny, on this machine, so the script cannot rot
between GPU windows. The figures are CPU ones; what is checked is that each stage ran and reported them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the scripts there import their neighbours
from gpu_check import DEFAULT_SAMPLER, GPU, RECIPE  # noqa: E402

SMOKE_TIMEOUT = 600  # seconds; the smoke run takes 75 s on 2 idle cores
STAGES = ["install", "environment", "data", "tests", "throughput", "sampling", "fp16_resume", "quality"]
PICTURES = ["samples.png", "eval_grid.png", "denoising_process.png"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("gpu-check")
    out = root / "out"
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(out), "--smoke", "--work_dir", str(root / "work")],
                            cwd=REPO_ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                            text=True, timeout=SMOKE_TIMEOUT)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text())


def test_the_output_is_one_flat_folder_that_the_gpu_tool_returns_whole(smoke):
    out, _ = smoke
    files = sorted(path.name for path in out.iterdir())

    assert files == sorted(["results.md", "results.json", "stages.log", "gpu_check.log", *PICTURES])
    assert len(files) <= 8  # the device tool returns at most 8 files, 16 MiB each
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) and (out / name).stat().st_size < 16 * 2**20 for name in files)


def test_every_stage_ran_and_printed_its_wall_time(smoke):
    out, results = smoke
    log = (out / "gpu_check.log").read_text()

    assert list(results["stages"]) == STAGES
    assert {name: stage["status"] for name, stage in results["stages"].items()} == {
        **dict.fromkeys(STAGES, "ok"), "install": "skipped"}  # the carried wheels are for the GPU machine
    for name in STAGES:
        assert re.search(rf"\] {name} +(ok|skipped) in \d+\.\d s \(planned \d+ s\)", log), name
    assert results["wall_seconds"] < results["budget_seconds"]


def test_the_gpu_plan_fits_its_budget_with_the_quality_run_minutes():
    planned = sum(GPU.plan.values()) + GPU.quality_minutes * 60

    assert planned <= GPU.budget_seconds <= 9 * 60


def test_the_tests_stage_runs_the_gpu_path_tests_whose_cuda_only_ones_skip_without_cuda(smoke):
    _, results = smoke
    stage = results["stages"]["tests"]

    assert stage["files"] == ["tests/test_gpu_path.py"] and stage["counts"]["passed"] >= 4
    assert stage["cuda"] is torch.cuda.is_available()
    assert (stage["counts"].get("skipped", 0) >= 1) is not torch.cuda.is_available()


def test_throughput_covers_each_precision_with_and_without_channels_last_and_compile_and_the_largest_batch(smoke):
    _, results = smoke
    stage = results["stages"]["throughput"]
    modes = {row["mode"] for row in stage["rows"]}

    assert modes == {p + layout for p in ("bf16", "fp16", "fp32")
                     for layout in ("", "+channels_last", "+channels_last+compile")}  # fmt: skip
    assert all(row["images_per_second"] > 0 for row in stage["rows"])
    assert stage["largest_batch"]["mode"] == stage["recipe_mode"] == "bf16+channels_last"
    assert stage["largest_batch"]["largest_fitting"] == stage["largest_batch"]["limit"]  # no OOM on a CPU


def test_the_check_samples_with_the_pipelines_default_sampler():
    from training.samplers import DEFAULT_SAMPLER as saved_default

    assert DEFAULT_SAMPLER == saved_default
    assert GPU.samplers[0] == f"{saved_default}:25"


def test_sampling_times_the_default_sampler_and_ddpm_in_bf16_and_fp16(smoke):
    _, results = smoke
    rows = results["stages"]["sampling"]["rows"]

    assert [(row["sampler"], row["precision"]) for row in rows] == [
        (DEFAULT_SAMPLER, "bf16"), (DEFAULT_SAMPLER, "fp16"), ("ddpm", "bf16"), ("ddpm", "fp16")]  # fmt: skip
    assert all(row["seconds"] > 0 for row in rows)


def test_the_fp16_launch_resumes_with_finite_losses_and_an_identical_continuation(smoke):
    _, results = smoke
    stage = results["stages"]["fp16_resume"]

    assert stage["run_info"]["mixed_precision"] == "fp16"
    assert stage["finite_losses"] and stage["identical_continuation"]
    assert list(stage["losses"]) == ["3", "4"]  # the steps after the checkpoint at step 2


def test_the_quality_run_trains_the_recipe_and_reads_its_loop_throughput_against_the_bare_step(smoke):
    _, results = smoke
    stage = results["stages"]["quality"]

    assert shlex.join(RECIPE) in stage["command"] and "--max_train_minutes" in stage["command"]
    assert stage["finite_losses"] and stage["steps"] >= 1 and stage["timed_steps_per_second"] > 0
    assert stage["bare_source"] == "bf16+channels_last, batch 4"
    assert stage["loop_fraction"] == pytest.approx(stage["images_per_second"] / stage["bare_images_per_second"])


def test_the_quality_run_is_scored_on_both_condition_files_with_3_seeds_and_leaves_its_pictures(smoke):
    out, results = smoke
    stage = results["stages"]["quality"]

    assert set(stage["evaluation"]) == {"test", "new_test"}
    assert all(result["num_seeds"] == 3 and 0 <= result["accuracy_mean"] <= 1
               for result in stage["evaluation"].values())  # fmt: skip
    for name in PICTURES:
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and picture.width > 0


def test_results_md_says_plainly_that_smoke_figures_are_not_gpu_figures(smoke):
    out, results = smoke
    text = (out / "results.md").read_text()

    assert results["smoke"] is True
    assert text.startswith("# GPU check: SMOKE RUN (tiny settings; these are not GPU figures)")
    for heading in ("## Training throughput", "## Sampling", "## fp16 launch and resume", "## Quality run"):
        assert heading in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_the_full_check_is_refused_before_it_starts(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--output_dir", str(tmp_path / "out")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip

    assert result.returncode != 0
    assert "no CUDA GPU here" in result.stderr and "--smoke" in result.stderr
    assert not (tmp_path / "out").exists()

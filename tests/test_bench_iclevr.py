"""benchmarks/bench_iclevr.py end to end with a tiny budget: every stage runs once, then is reused, never mixed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.bf16_support import cpu_has_native_bf16
from training.objective import DEFAULT_LABEL_DROPOUT

# The default --eval_dtype bf16 as it samples here: fp32 on a CPU without native bfloat16.
EVAL_DTYPE = "bf16" if cpu_has_native_bf16() else "fp32"
TINY_BUDGET = [
    "--num_scenes", "12", "--evaluator_epochs", "1", "--evaluator_scenes", "24", "--evaluator_validation_scenes", "8",
    "--model_config_name_or_path", "tiny", "--resolution", "16", "--train_batch_size", "4", "--max_train_steps", "2",
    "--lr_warmup_steps", "0", "--checkpointing_steps", "1", "--samplers", "ddim:2", "--seeds", "0", "1",
]  # fmt: skip


def run_bench(work_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_iclevr.py"), "--work_dir", str(work_dir),
               *TINY_BUDGET, *flags]  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def launches(log: Path) -> int:
    """How many times a stage's subprocess ran: each run appends a '===== <time> $ <command>' header."""
    return log.read_text().count("\n===== ")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    work_dir = tmp_path_factory.mktemp("bench") / "work"
    result = run_bench(work_dir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return work_dir


def test_benchmark_writes_one_row_per_sampler_and_guidance_with_the_budget(bench_dir):
    results = json.loads((bench_dir / "results.json").read_text())
    assert [(row["sampler"], row["steps"], row["guidance_scale"]) for row in results["rows"]] == [
        ("ddim", 2, 1.0), ("ddim", 2, DEFAULT_GUIDANCE_SCALE),
    ]  # fmt: skip
    for row in results["rows"]:
        assert row["dtype"] == EVAL_DTYPE and row["num_images"] > 0
        for mean, std in row["accuracy"].values():
            assert 0.0 <= mean <= 1.0 and std >= 0.0
    assert results["budget"]["max_train_steps"] == 2 and results["budget"]["model_config_name_or_path"] == "tiny"
    table = (bench_dir / "results.md").read_text()
    assert "| ddim | 2 | 1 |" in table and f"| ddim | 2 | {DEFAULT_GUIDANCE_SCALE:g} |" in table
    assert "2 steps x batch 4" in table and f"UNet in {EVAL_DTYPE}" in table
    assert "python benchmarks/bench_iclevr.py --work_dir" in table  # the exact command


def test_the_model_starts_its_label_embeddings_at_the_quick_starts_norm(bench_dir):
    assert json.loads((bench_dir / "model" / "unet" / "config.json").read_text())["label_embedding_norm"] == 8
    assert json.loads((bench_dir / "results.json").read_text())["budget"]["label_embedding_norm"] == 8
    assert "label embeddings starting at norm 8" in (bench_dir / "results.md").read_text()


def test_the_model_starts_its_residual_branches_at_zero_as_the_quick_start_does(bench_dir):
    assert json.loads((bench_dir / "model" / "unet" / "config.json").read_text())["zero_init_residual"] is True
    assert json.loads((bench_dir / "results.json").read_text())["budget"]["zero_init_residual"] is True
    assert "residual branches starting at zero" in (bench_dir / "results.md").read_text()


def test_the_model_trains_with_the_training_scripts_label_dropout(bench_dir):
    training_args = json.loads((bench_dir / "model" / "training_args.json").read_text())
    assert training_args["label_dropout"] == DEFAULT_LABEL_DROPOUT
    assert json.loads((bench_dir / "results.json").read_text())["budget"]["label_dropout"] == DEFAULT_LABEL_DROPOUT
    assert f"label dropout {DEFAULT_LABEL_DROPOUT:g}" in (bench_dir / "results.md").read_text()


def test_the_model_trains_with_the_quick_starts_snr_offset(bench_dir):
    training_args = json.loads((bench_dir / "model" / "training_args.json").read_text())
    assert training_args["snr_offset"] == 0.1
    assert json.loads((bench_dir / "results.json").read_text())["budget"]["snr_offset"] == 0.1
    assert "Min-SNR offset 0.1" in (bench_dir / "results.md").read_text()


def test_a_second_run_reuses_the_evaluator_the_model_and_every_report(bench_dir):
    logs = sorted((bench_dir / "logs").glob("*.log"))
    before = {log.name: launches(log) for log in logs}
    result = run_bench(bench_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {log.name: launches(log) for log in logs} == before == {name: 1 for name in before}
    assert result.stdout.count(": cached") == 2  # both evaluation rows


def test_guidance_scales_choose_the_rows_and_reuse_their_reports(bench_dir):
    result = run_bench(bench_dir, "--guidance_scales", f"{DEFAULT_GUIDANCE_SCALE:g}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(": cached") == 1
    rows = json.loads((bench_dir / "results.json").read_text())["rows"]
    assert [(row["sampler"], row["steps"], row["guidance_scale"]) for row in rows] == [
        ("ddim", 2, DEFAULT_GUIDANCE_SCALE)
    ]


def test_a_guidance_weight_below_one_is_refused_before_any_stage_runs(tmp_path):
    result = run_bench(tmp_path / "work", "--guidance_scales", "1", "0.5")
    assert result.returncode == 2
    assert "'0.5': guidance weights are >= 1" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "work").exists()


def test_reports_made_with_another_unet_precision_are_refused(bench_dir):
    result = run_bench(bench_dir, "--eval_dtype", "fp32" if EVAL_DTYPE == "bf16" else "fp16")
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"--eval_dtype {EVAL_DTYPE}" in error and "delete" in error


@pytest.mark.parametrize(("flag", "value"), [("--max_train_steps", "3"), ("--label_dropout", "0.2")])
def test_a_changed_training_budget_is_refused_instead_of_reusing_the_model(bench_dir, flag, value):
    result = run_bench(bench_dir, flag, value)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert flag.removeprefix("--") in error and "new --work_dir" in error

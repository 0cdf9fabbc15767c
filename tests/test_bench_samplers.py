"""benchmarks/bench_samplers.py on a tiny pipeline: one row per sampler spec and step count, the reference beside
them, settings that reach the scheduler, cached results, and one-line errors for bad specs."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler

from conftest import import_script
from pipeline import LabelVocabulary
from training.evaluator import build_evaluator, save_evaluator
from training.model_presets import create_model
from training.sampling import build_pipeline

CONDITIONS = [["red cube"], ["blue sphere", "gray cylinder"]]


def _bench():
    return import_script("bench_samplers", "benchmarks")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("samplers")
    torch.manual_seed(0)
    pipeline = build_pipeline(create_model("tiny", sample_size=16), DDPMScheduler(), LabelVocabulary())
    pipeline.save_pretrained(root / "pipe")
    save_evaluator(build_evaluator(), root / "evaluator.pth")
    (root / "conditions.json").write_text(json.dumps(CONDITIONS))
    return root


def _argv(files, work, *extra):
    return ["--pipeline", str(files / "pipe"), "--evaluator_checkpoint", str(files / "evaluator.pth"),
            "--work_dir", str(work), "--conditions", str(files / "conditions.json"), "--seeds", "0", "1",
            "--dtype", "fp32", *extra]  # fmt: skip


def test_every_spec_and_step_count_gets_a_row_beside_the_reference(files, tmp_path, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "REFERENCE", ("ddpm", 4))  # a short stand-in for DDPM 1000
    bench.main(_argv(files, tmp_path, "--samplers", "ddim", "ddim,eta=1", "--steps", "2", "3"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in results] == [
        ("ddpm", 4), ("ddim", 2), ("ddim", 3), ("ddim,eta=1", 2), ("ddim,eta=1", 3)
    ]
    assert all(r["condition_sets"]["conditions"]["accuracy_mean"] >= 0 and r["seeds"] == [0, 1] for r in results)
    table = (tmp_path / "results.md").read_text()
    assert "| ddim,eta=1 | 3 |" in table and "best with <= 25 steps" in table


def test_a_rerun_reads_the_cached_results(files, tmp_path, capsys):
    bench = _bench()
    argv = _argv(files, tmp_path, "--samplers", "unipc", "--steps", "2", "--no_reference")
    bench.main(argv)
    bench.main(argv)
    assert "unipc 2 steps: cached" in capsys.readouterr().err


def test_a_bad_spec_fails_in_one_line_before_any_model_loads(files, tmp_path):
    with pytest.raises(SystemExit) as error:
        _bench().main(_argv(files, tmp_path, "--samplers", "dpmsolver++,lambda_min=-5"))
    assert str(error.value.code) == "error: dpmsolver++ has no setting 'lambda_min'; did you mean 'lambda_min_clipped'?"
    assert not (tmp_path / "results").exists()

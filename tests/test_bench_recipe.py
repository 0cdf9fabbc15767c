"""benchmarks/bench_recipe.py end to end with a tiny budget: variants trained, scored along the way, tabled, plotted,
and reused on a second run."""

from __future__ import annotations

import json

import pytest

from conftest import import_script
from training.evaluator import build_evaluator, save_evaluator


@pytest.fixture(scope="module")
def bench(tiny_iclevr_dir, shared_iclevr, tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    save_evaluator(build_evaluator(), root / "evaluator.pth")
    argv = ["--work_dir", str(root / "work"), "--evaluator_checkpoint", str(root / "evaluator.pth"),
            "--variants", "epsilon", "v-min-snr-adagn", "--minutes", "0.03", "--points", "2", "--seeds", "0",
            "--validation_inference_steps", "2", "--calibration_seconds", "1", "--model_config_name_or_path", "tiny",
            "--resolution", "16", "--train_data_dir", str(tiny_iclevr_dir)]  # fmt: skip
    module = import_script("bench_recipe", "benchmarks")
    module.main(argv)
    return module, argv, root / "work"


def test_each_variant_is_scored_at_every_point_against_its_training_minutes(bench):
    _, _, work = bench
    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["epsilon", "v-min-snr-adagn"]
    for points in results.values():
        plan_steps = [p["step"] for p in points]
        assert len(plan_steps) == 2 and plan_steps[1] == 2 * plan_steps[0]  # the last point is the final weights
        assert all(0 <= p["test"] <= 1 and 0 <= p["new_test"] <= 1 and p["minutes"] > 0 for p in points)


def test_the_table_and_the_plot_are_written(bench):
    _, _, work = bench
    table = (work / "results.md").read_text()
    assert "| epsilon | --prediction_type epsilon --snr_gamma None |" in table
    assert "| v-min-snr-adagn |" in table
    assert (work / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_train_what_they_say(bench):
    _, _, work = bench
    epsilon = json.loads((work / "runs" / "epsilon" / "training_args.json").read_text())
    epsilon_unet = json.loads((work / "runs" / "epsilon" / "unet" / "config.json").read_text())
    adagn = json.loads((work / "runs" / "v-min-snr-adagn" / "unet" / "config.json").read_text())
    assert epsilon["prediction_type"] == "epsilon" and epsilon["snr_gamma"] is None
    assert epsilon_unet["resnet_time_scale_shift"] == "default"  # the base is explicit, whatever the presets say
    assert epsilon_unet["label_embedding_norm"] is None  # nn.Linear's own initialisation, as the study began
    assert adagn["resnet_time_scale_shift"] == "scale_shift"


def test_a_second_run_reuses_every_finished_variant(bench):
    module, argv, work = bench
    logs = {name: (work / "runs" / name / "train.log").stat().st_mtime for name in ("epsilon", "v-min-snr-adagn")}
    module.main(argv)
    assert {name: (work / "runs" / name / "train.log").stat().st_mtime for name in logs} == logs

"""scripts/evaluate.py and training/evaluation.py: reports, grids, the denoising figure, batch-size independence,
one-line errors, and the evaluation run inside train_conditional.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image

from conftest import REPO_ROOT, import_script
from pipeline import LabelVocabulary
from training.evaluation import (
    default_condition_files,
    evaluate_pipeline,
    evaluation_items,
    generate_and_score,
)
from training.evaluator import build_evaluator, load_evaluator, save_evaluator
from training.figures import denoising_figure
from training.model_presets import create_model
from training.pipeline_loading import load_pipeline
from training.samplers import DEFAULT_SAMPLER, set_sampler
from training.sampling import build_pipeline
from training.training_evaluation import TrainingEvaluation
from training_runs import launch_training

SIZE = 32
STEPS = 2
SMALL_SET = [["red cube"], ["blue sphere", "gray cylinder"], ["cyan cube", "red sphere", "yellow cylinder"]]
# Nine conditions: a grid of 8 columns and a second, padded row.
NINE_SET = [["green cube"], ["purple sphere", "brown cylinder"], ["gray sphere"]] * 3
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny saved pipeline, an untrained evaluator checkpoint and two condition files."""
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    build_pipeline(create_model("tiny", sample_size=SIZE), DDPMScheduler(), LabelVocabulary()).save_pretrained(
        root / "pipeline"
    )
    save_evaluator(build_evaluator(), root / "evaluator.pth")
    (root / "small.json").write_text(json.dumps(SMALL_SET))
    (root / "nine.json").write_text(json.dumps(NINE_SET))
    return {name: root / name for name in ("pipeline", "evaluator.pth", "small.json", "nine.json")}


def _argv(files: dict[str, Path], output_dir: Path, *extra: str, conditions=("small.json", "nine.json"),
          seeds=SEEDS) -> list[str]:
    return [
        "--pipeline", str(files["pipeline"]), "--conditions", *(str(files[name]) for name in conditions),
        "--evaluator_checkpoint", str(files["evaluator.pth"]), "--num_inference_steps", str(STEPS),
        "--guidance_scale", "1.0", "--seeds", *map(str, seeds), "--batch_size", "16", "--device", "cpu",
        "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def script_run(files, tmp_path_factory) -> tuple[Path, str]:
    """`python scripts/evaluate.py ...` run once, end to end, as a user runs it."""
    output_dir = tmp_path_factory.mktemp("evaluate-out")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), *_argv(files, output_dir)],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return output_dir, result.stdout


def _report(output_dir: Path) -> dict:
    return json.loads((output_dir / "report.json").read_text())


def test_the_report_has_one_entry_per_condition_file_and_seed(script_run):
    report = _report(script_run[0])
    assert set(report["condition_sets"]) == {"small", "nine"}
    for name, count in (("small", len(SMALL_SET)), ("nine", len(NINE_SET))):
        result = report["condition_sets"][name]
        assert set(result["per_seed"]) == {str(seed) for seed in SEEDS}
        assert all(seed["num_images"] == count for seed in result["per_seed"].values())
        values = [result["accuracy_mean"], result["accuracy_std"], result["exact_match_mean"]]
        values += [m[key] for m in result["per_seed"].values() for key in ("accuracy", "exact_match")]
        assert all(0.0 <= value <= 1.0 for value in values)
        assert set(result["per_label_recall"]) == set(LabelVocabulary().labels)
    assert 0.0 <= report["mean_accuracy"] <= 1.0


def test_the_report_records_the_settings_and_the_seconds_per_image(script_run, files):
    report = _report(script_run[0])
    settings = report["settings"]
    assert settings["scheduler"] == DEFAULT_SAMPLER.split(",")[0]  # the sampler the pipeline was saved with
    assert settings["num_inference_steps"] == STEPS
    assert settings["seeds"] == list(SEEDS) and settings["guidance_scale"] == 1.0
    assert (settings["guidance_start"], settings["guidance_stop"]) == (0.0, 1.0)  # the pipeline's: every step
    assert settings["evaluator_checkpoint"] == str(files["evaluator.pth"])
    assert settings["device"] == "cpu" and settings["dtype"] == "fp32"
    assert report["num_images"] == (len(SMALL_SET) + len(NINE_SET)) * len(SEEDS)
    assert report["seconds_per_image"] > 0


def test_the_script_prints_the_accuracy_table(script_run):
    stdout = script_run[1]
    assert "accuracy (mean ± std)" in stdout and "s per image" in stdout
    assert any(line.startswith("small") for line in stdout.splitlines())


def test_grids_have_eight_columns_one_per_condition_file_and_seed(script_run):
    output_dir = script_run[0]
    for name in ("small", "nine"):
        for seed in SEEDS:
            assert (output_dir / f"grid_{name}_seed{seed}.png").is_file()
    assert Image.open(output_dir / "grid_nine_seed0.png").size == (8 * SIZE, 2 * SIZE)
    assert Image.open(output_dir / "grid_small_seed1.png").size == (3 * SIZE, SIZE)


def test_the_denoising_figure_is_written_as_one_row(script_run):
    figure = Image.open(script_run[0] / "denoising_process.png")
    # STEPS + 1 states exist (noise, then after each step); all of them fit in the 10 frames asked for.
    assert figure.size == ((STEPS + 1) * SIZE, SIZE)


def test_the_denoising_figure_shows_ten_frames_from_noise_to_image(files):
    pipeline = load_pipeline(str(files["pipeline"]))
    figure = denoising_figure(pipeline, ["red sphere", "cyan cylinder", "cyan cube"], 10, num_inference_steps=9,
                              guidance_scale=1.0)  # fmt: skip
    assert figure.size == (10 * SIZE, SIZE)
    first, last = figure.crop((0, 0, SIZE, SIZE)), figure.crop((9 * SIZE, 0, 10 * SIZE, SIZE))
    assert first.tobytes() != last.tobytes()


def test_the_scheduler_choice_is_recorded_and_changes_the_images(script_run, files, tmp_path):
    import_script("evaluate").main(_argv(files, tmp_path, "--scheduler", "ddim", conditions=["small.json"], seeds=[0]))
    assert _report(tmp_path)["settings"]["scheduler"] == "ddim"
    ddim_grid = Image.open(tmp_path / "grid_small_seed0.png").tobytes()
    assert ddim_grid != Image.open(script_run[0] / "grid_small_seed0.png").tobytes()


def test_set_sampler_keeps_the_noise_schedule(files):
    pipeline = load_pipeline(str(files["pipeline"]))
    schedule = pipeline.scheduler.config.beta_schedule, pipeline.scheduler.config.num_train_timesteps
    set_sampler(pipeline, "ddim")
    assert isinstance(pipeline.scheduler, DDIMScheduler)
    assert (pipeline.scheduler.config.beta_schedule, pipeline.scheduler.config.num_train_timesteps) == schedule


def test_evaluate_reports_the_judge_ceiling_per_condition_file(files, tmp_path, capsys):
    import_script("evaluate").main(_argv(files, tmp_path, "--judge_ceiling"))

    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["judge_ceiling"]) == {"small", "nine"}
    assert report["judge_ceiling"]["small"]["num_images"] == 3 * 10
    assert "the evaluator on true renders of the same lists (the ceiling): small " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("--scheduler", "dpmsolver"), "unknown sampler 'dpmsolver'; did you mean 'dpmsolver++'?"),
        (("--scheduler", "ddim,etta=1"), "ddim has no setting 'etta'; did you mean 'eta'?"),
        (("--conditions", "missing.json"), "condition file missing.json does not exist"),
        (("--device", "tpu"), "--device 'tpu' is not supported"),
        (("--guidance_start", "0.9", "--guidance_stop", "0.5"), "--guidance_start 0.9 is after --guidance_stop 0.5"),
    ],
)
def test_bad_settings_fail_with_one_line(files, tmp_path, change, expected):
    with pytest.raises(SystemExit) as error:
        import_script("evaluate").main(_argv(files, tmp_path, *change))
    message = str(error.value.code)
    assert expected in message and "\n" not in message
    assert not (tmp_path / "report.json").exists()


def test_an_unknown_label_in_a_condition_file_fails_with_one_line_naming_the_closest(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["red cube"], ["red sphre"]]))
    with pytest.raises(SystemExit) as error:
        import_script("evaluate").main(_argv(files, tmp_path / "out", "--conditions", str(bad)))
    message = str(error.value.code)
    assert "entry 1" in message and "'red sphere'" in message and "\n" not in message


def test_results_do_not_depend_on_the_batch_size_beyond_rounding(files):
    pipeline = load_pipeline(str(files["pipeline"]))
    evaluator = load_evaluator(files["evaluator.pth"])
    sets = {"small": SMALL_SET, "more": [["gray cube"], ["blue cylinder", "red cube"]]}
    settings = {"seeds": [3], "num_inference_steps": STEPS, "guidance_scale": 2.0, "progress": False}
    by_two = evaluate_pipeline(pipeline, evaluator, sets, batch_size=2, keep_images=True, **settings)
    by_four = evaluate_pipeline(pipeline, evaluator, sets, batch_size=4, keep_images=True, **settings)
    assert by_two.report["condition_sets"] == by_four.report["condition_sets"]
    # Per-image generators fix every draw; only the kernels' float rounding may differ with the batch shape.
    for key, images in by_two.images.items():
        for mine, theirs in zip(images, by_four.images[key]):
            assert np.abs(np.asarray(mine, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 2


def test_a_slice_of_the_items_scores_as_it_does_in_the_full_run(files):
    """What lets the conditions be split across processes: each record depends only on its own item."""
    pipeline = load_pipeline(str(files["pipeline"]))
    evaluator = load_evaluator(files["evaluator.pth"])
    items = evaluation_items({"small": SMALL_SET}, seeds=[0])
    settings = {"num_inference_steps": STEPS, "guidance_scale": 1.0, "progress": False}
    full = generate_and_score(pipeline, evaluator, items, batch_size=3, **settings)
    odd = generate_and_score(pipeline, evaluator, items[1::2], batch_size=3, **settings)
    torch.testing.assert_close(torch.tensor(odd[0]["probs"]), torch.tensor(full[1]["probs"]))


def test_training_evaluates_on_the_training_folders_condition_files_by_default(tiny_iclevr_dir):
    expected = [tiny_iclevr_dir / "test.json", tiny_iclevr_dir / "new_test.json"]
    assert default_condition_files(tiny_iclevr_dir) == expected


# ---- the evaluation inside train_conditional.py ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_run(files, tiny_iclevr_dir, tmp_path_factory) -> Path:
    """Two optimiser steps, evaluating after each one, on two small condition files."""
    output_dir = tmp_path_factory.mktemp("train") / "run"
    launch_training(
        "--train_data_dir", str(tiny_iclevr_dir), "--model_config_name_or_path", "tiny", "--resolution", str(SIZE),
        "--train_batch_size", "8", "--max_train_steps", "2", "--validation_steps", "1", "--lr_warmup_steps", "0",
        "--validation_inference_steps", str(STEPS), "--report_to", "tensorboard", "--output_dir", str(output_dir),
        "--evaluator_checkpoint", str(files["evaluator.pth"]),
        "--evaluation_conditions", str(files["small.json"]), str(files["nine.json"]),
    )  # fmt: skip
    return output_dir


def test_training_keeps_the_best_pipeline_with_its_step_and_accuracies(training_run):
    best = training_run / "best"
    info = json.loads((best / "best.json").read_text())
    assert info["step"] in (1, 2)
    assert set(info["accuracy"]) == {"small", "nine"} and 0.0 <= info["mean_accuracy"] <= 1.0
    assert load_pipeline(str(best)).vocabulary == LabelVocabulary()
    assert not list(training_run.glob(".best.tmp-*"))  # written beside best/ and swapped in


def test_a_resumed_run_whose_best_json_does_not_read_starts_the_best_over(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text("{cut short")

    evaluation = TrainingEvaluation(build_evaluator(), {}, tmp_path, num_inference_steps=1, guidance_scale=1.0,
                                    seeds=[0], batch_size=1, keep_previous_best=True)  # fmt: skip

    assert evaluation.best_accuracy == -1.0  # the next evaluation replaces best/


def test_training_logs_the_accuracy_per_condition_file_to_tensorboard(training_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for event_file in (training_run / "logs").rglob("events.out.tfevents*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = [event.step for event in accumulator.Scalars(tag)]
    for tag in ("evaluation/small/accuracy", "evaluation/nine/accuracy", "evaluation/small/exact_match",
                "evaluation/mean_accuracy"):  # fmt: skip
        assert scalars.get(tag) == [1, 2], tag

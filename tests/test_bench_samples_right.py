"""benchmarks/bench_samples_right.py: samples.png's eight lists judged whole (the right count and every shape its own);
a tiny pipeline and a real (untrained) evaluator checkpoint."""

import json

import pytest

from conftest import import_script
from training.evaluator import build_evaluator, save_evaluator
from training.sampling import VALIDATION_LABELS

bench = import_script("bench_samples_right", "benchmarks")


@pytest.fixture(scope="module")
def evaluator_path(tmp_path_factory):
    return save_evaluator(build_evaluator(), tmp_path_factory.mktemp("evaluator") / "checkpoint.pth")


def run(pipeline_dir, evaluator_path, tmp_path, *extra: str) -> dict:
    output = tmp_path / "right.json"
    bench.main(["--pipeline", str(pipeline_dir), "--evaluator_checkpoint", str(evaluator_path),
                "--seeds", "0", "1", "--num_inference_steps", "2", "--output_json", str(output), *extra])  # fmt: skip
    (row,) = json.loads(output.read_text())["rows"]
    return row


def test_every_list_of_samples_png_is_drawn_once_per_seed_and_judged(tiny_pipeline_dir, evaluator_path, tmp_path,
                                                                     capsys):  # fmt: skip
    row = run(tiny_pipeline_dir, evaluator_path, tmp_path, "--guidance_scale", "2")
    assert row["images"] == 2 * len(VALIDATION_LABELS)
    assert row["lists"] == [", ".join(names) for names in VALIDATION_LABELS]
    for count, shapes, whole in zip(row["right_count_per_list"], row["right_shapes_per_list"],
                                    row["right_whole_per_list"]):  # fmt: skip
        assert 0 <= whole <= min(count, shapes) <= 2
    assert f"| {tiny_pipeline_dir} | 2 | 2 | {row['images']} |" in capsys.readouterr().out


def test_an_image_is_right_whole_only_with_both_the_count_and_the_shapes(tiny_pipeline_dir, evaluator_path, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    # Every image counted as one object and every shape judged its own: only the one-label lists are right whole.
    monkeypatch.setattr(bench, "count_objects_by_colour", lambda image: 1)
    monkeypatch.setattr(bench, "drawn_with_its_shape", lambda *args: True)
    row = run(tiny_pipeline_dir, evaluator_path, tmp_path)
    singles = [2 if len(names) == 1 else 0 for names in VALIDATION_LABELS]
    assert row["right_count_per_list"] == singles
    assert row["right_shapes_per_list"] == [2] * len(VALIDATION_LABELS)
    assert row["right_whole_per_list"] == singles


def test_each_seeds_samples_png_tells_whether_most_of_its_lists_have_the_right_count(
        tiny_pipeline_dir, evaluator_path, tmp_path, monkeypatch, capsys):  # fmt: skip
    # Seed 0's images all counted right, seed 1's all counted as one object: only its one-label lists are right.
    counts = iter([len(names) for names in VALIDATION_LABELS] + [1] * len(VALIDATION_LABELS))
    monkeypatch.setattr(bench, "count_objects_by_colour", lambda image: next(counts))
    monkeypatch.setattr(bench, "drawn_with_its_shape", lambda *args: True)
    row = run(tiny_pipeline_dir, evaluator_path, tmp_path)
    singles = sum(len(names) == 1 for names in VALIDATION_LABELS)
    assert 0 < singles <= len(VALIDATION_LABELS) // 2
    assert row["right_count_per_seed"] == row["right_whole_per_seed"] == [len(VALIDATION_LABELS), singles]
    assert bench.most_lists(row, "count") == bench.most_lists(row, "whole") == 1
    assert capsys.readouterr().out.rstrip().endswith("| 1 / 1 of 2 |")


def test_a_missing_pipeline_is_refused_before_the_evaluator_loads_or_any_sampling(tiny_pipeline_dir, tmp_path):
    output = tmp_path / "right.json"
    with pytest.raises(SystemExit, match=r"^error: --pipeline .*missing: no pipeline there"):
        bench.main(["--pipeline", str(tiny_pipeline_dir), str(tmp_path / "missing"),
                    "--evaluator_checkpoint", str(tmp_path / "missing.pth"), "--output_json", str(output)])  # fmt: skip
    assert not output.exists()

"""benchmarks/bench_shape_binding.py: each requested object of samples.png's multi-object lists against its colour's
other shapes, judged by the evaluator; a tiny pipeline and a real (untrained) evaluator checkpoint."""

import json

import pytest

from conftest import import_script
from training.evaluator import build_evaluator, save_evaluator
from training.sampling import VALIDATION_LABELS

bench = import_script("bench_shape_binding", "benchmarks")


@pytest.fixture(scope="module")
def evaluator_path(tmp_path_factory):
    return save_evaluator(build_evaluator(), tmp_path_factory.mktemp("evaluator") / "checkpoint.pth")


def test_every_object_of_the_multi_object_lists_is_judged_once_per_seed(
    tiny_pipeline_dir, evaluator_path, tmp_path, capsys
):
    output = tmp_path / "binding.json"
    bench.main(["--pipeline", str(tiny_pipeline_dir), "--evaluator_checkpoint", str(evaluator_path),
                "--seeds", "0", "1", "--num_inference_steps", "2", "--output_json", str(output)])  # fmt: skip
    (row,) = json.loads(output.read_text())["rows"]
    lists = [names for names in VALIDATION_LABELS if len(names) > 1]
    assert row["images"] == 2 * len(lists)
    for shape in bench.SHAPES:
        wanted = sum(label.endswith(shape) for names in lists for label in names)
        assert row["asked"][shape] == 2 * wanted and 0 <= row["bound"][shape] <= row["asked"][shape]
    assert f"| {tiny_pipeline_dir} | 4 | 2 | {row['images']} |" in capsys.readouterr().out


def test_a_missing_evaluator_checkpoint_fails_with_one_line(tiny_pipeline_dir, tmp_path):
    with pytest.raises(SystemExit, match="^error: .*missing.pth"):
        bench.main(["--pipeline", str(tiny_pipeline_dir), "--evaluator_checkpoint", str(tmp_path / "missing.pth")])


def test_a_missing_pipeline_is_refused_before_the_evaluator_loads_or_any_sampling(tiny_pipeline_dir, tmp_path):
    output = tmp_path / "binding.json"
    with pytest.raises(SystemExit, match=r"^error: --pipeline .*missing: no pipeline there"):
        bench.main(["--pipeline", str(tiny_pipeline_dir), str(tmp_path / "missing"),
                    "--evaluator_checkpoint", str(tmp_path / "missing.pth"), "--output_json", str(output)])  # fmt: skip
    assert not output.exists()


def test_a_misspelt_flag_names_the_closest_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--pipeline", "p", "--evaluator_checkpoint", "e", "--guidance_sacle", "2"])
    assert exit_info.value.code == 1
    assert "did you mean --guidance_scale?" in capsys.readouterr().err

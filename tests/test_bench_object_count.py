"""benchmarks/bench_object_count.py on a tiny pipeline: every label asked for alone per seed, the counter's
reliability on renders beside it, a table and a JSON record."""

import json

import pytest

from conftest import import_script


def test_bench_object_count_scores_every_single_label_per_seed(tiny_pipeline_dir, tmp_path, capsys):
    output = tmp_path / "counts.json"
    import_script("bench_object_count", "benchmarks").main(
        ["--pipeline", str(tiny_pipeline_dir), "--seeds", "0", "1", "--calibration_scenes", "4",
         "--output_json", str(output)]  # fmt: skip
    )
    record = json.loads(output.read_text())
    (row,) = record["rows"]
    assert row["images"] == 2 * 24 and row["resolution"] == 32
    assert 0.0 <= row["drawn_as_one"] + row["drawn_as_two_or_more"] <= 1.0
    # Lone rendered objects are always counted once; the table says so beside the pipeline's figures.
    assert record["counter_reliability"]["32"]["1"] == 1.0
    table = capsys.readouterr().out
    assert f"| {tiny_pipeline_dir} | 4 | 48 |" in table and "| 100% / " in table  # the pipeline's default guidance


def test_guidance_scale_reaches_the_pipeline_and_the_record(tiny_pipeline_dir, tmp_path, monkeypatch):
    from pipeline.pipeline_iclevr import ICLEVRPipeline

    weights = []
    call = ICLEVRPipeline.__call__

    def spy(self, *args, **kwargs):
        weights.append(kwargs["guidance_scale"])
        return call(self, *args, **kwargs)

    monkeypatch.setattr(ICLEVRPipeline, "__call__", spy)
    output = tmp_path / "counts.json"
    import_script("bench_object_count", "benchmarks").main(
        ["--pipeline", str(tiny_pipeline_dir), "--seeds", "0", "--guidance_scale", "2.5",
         "--calibration_scenes", "2", "--output_json", str(output)]  # fmt: skip
    )
    assert weights == [2.5]
    assert json.loads(output.read_text())["rows"][0]["guidance_scale"] == 2.5


def test_a_missing_pipeline_stops_before_any_sampling_with_one_line(tiny_pipeline_dir, tmp_path):
    output = tmp_path / "counts.json"
    with pytest.raises(SystemExit, match=r"^error: --pipeline .*missing: no pipeline there"):
        import_script("bench_object_count", "benchmarks").main(
            ["--pipeline", str(tiny_pipeline_dir), str(tmp_path / "missing"), "--output_json", str(output)]
        )
    assert not output.exists()

"""benchmarks/bench_object_count.py on a tiny pipeline: every label asked for alone per seed, samples.png's lists
per seed, each counter's reliability on renders beside its figures, two tables and a JSON record."""

import json

import numpy as np
import pytest
from accelerate import Accelerator
from diffusers import DDPMScheduler

from conftest import import_script
from training.pipeline_loading import load_pipeline
from training.sampling import VALIDATION_LABELS
from training.validation import Validation


def test_bench_object_count_scores_every_single_label_per_seed(tiny_pipeline_dir, tmp_path, capsys):
    output = tmp_path / "counts.json"
    import_script("bench_object_count", "benchmarks").main(
        ["--pipeline", str(tiny_pipeline_dir), "--seeds", "0", "1", "--num_inference_steps", "2",
         "--calibration_scenes", "4", "--output_json", str(output)]  # fmt: skip
    )
    record = json.loads(output.read_text())
    (row,) = record["rows"]
    assert row["images"] == 2 * 24 and row["resolution"] == 32
    assert 0.0 <= row["drawn_as_one"] + row["drawn_as_two_or_more"] <= 1.0
    # Lone rendered objects are always counted once; the table says so beside the pipeline's figures.
    assert record["counter_reliability"]["32"]["1"] == 1.0
    table = capsys.readouterr().out
    assert f"| {tiny_pipeline_dir} | 4 | 2 | 48 |" in table and "| 100% / " in table  # the default guidance


def test_bench_object_count_counts_samples_png_lists_per_seed_beside_the_colour_counter_on_renders(
    tiny_pipeline_dir, tmp_path, capsys
):
    output = tmp_path / "counts.json"
    import_script("bench_object_count", "benchmarks").main(
        ["--pipeline", str(tiny_pipeline_dir), "--seeds", "0", "1", "--num_inference_steps", "2",
         "--calibration_scenes", "2", "--calibration_renders_per_list", "3", "--output_json", str(output)]  # fmt: skip
    )
    record = json.loads(output.read_text())
    lists = record["rows"][0]["sample_lists"]
    assert lists["lists"] == [", ".join(names) for names in VALIDATION_LABELS]
    assert lists["images"] == 2 * 8 and all(0 <= right <= 2 for right in lists["right_per_list"])
    assert lists["right_count"] == sum(lists["right_per_list"]) / 16
    assert record["list_counter_reliability"]["32"] >= 0.75  # 24 true renders, 1 to 3 objects each
    table = capsys.readouterr().out
    assert f"| {tiny_pipeline_dir} | 4 | 2 | 16 | {lists['right_count']:.1%} |" in table


def test_the_counted_lists_are_the_images_of_samples_png_for_that_seed(tiny_pipeline_dir, tmp_path, monkeypatch):
    bench = import_script("bench_object_count", "benchmarks")
    counted = []
    monkeypatch.setattr(bench, "count_objects_by_colour", lambda image: counted.append(image) or 0)
    bench.main(["--pipeline", str(tiny_pipeline_dir), "--seeds", "3", "--num_inference_steps", "2",
                "--calibration_scenes", "1", "--calibration_renders_per_list", "1"])  # fmt: skip
    pipe = load_pipeline(str(tiny_pipeline_dir))
    # a training run with --seed 3 --validation_inference_steps 2 and the default --validation_guidance_scale
    validation = Validation(Accelerator(cpu=True), DDPMScheduler(), pipe.vocabulary, tmp_path,
                            num_inference_steps=2, guidance_scale=4.0, seed=3)
    samples = validation.sample(pipe)
    assert len(samples) == 8
    for image, sample in zip(counted, samples):  # the first 8 counted are the seed's images, then the renders
        np.testing.assert_array_equal((image * 255).round().astype(np.uint8), np.asarray(sample))


def test_guidance_its_interval_and_steps_reach_the_pipeline_and_the_record(tiny_pipeline_dir, tmp_path, monkeypatch):
    from pipeline.pipeline_iclevr import ICLEVRPipeline

    settings = []
    call = ICLEVRPipeline.__call__
    names = ("guidance_scale", "guidance_start", "guidance_stop", "num_inference_steps")

    def spy(self, *args, **kwargs):
        settings.append(tuple(kwargs[name] for name in names))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(ICLEVRPipeline, "__call__", spy)
    output = tmp_path / "counts.json"
    import_script("bench_object_count", "benchmarks").main(
        ["--pipeline", str(tiny_pipeline_dir), "--seeds", "0", "--guidance_scale", "2.5", "--guidance_stop", "0.5",
         "--num_inference_steps", "3", "--calibration_scenes", "2", "--output_json", str(output)]  # fmt: skip
    )
    assert settings == [(2.5, 0.0, 0.5, 3), (2.5, 0.0, 0.5, 3)]  # the single labels, then samples.png's lists
    row = json.loads(output.read_text())["rows"][0]
    assert tuple(row[name] for name in names) == (2.5, 0.0, 0.5, 3)


def test_a_reversed_guidance_interval_stops_before_any_sampling_with_one_line(tiny_pipeline_dir, tmp_path):
    output = tmp_path / "counts.json"
    with pytest.raises(SystemExit, match=r"^error: --guidance_start 0.8 is after --guidance_stop 0.2; "):
        import_script("bench_object_count", "benchmarks").main(
            ["--pipeline", str(tiny_pipeline_dir), "--guidance_start", "0.8", "--guidance_stop", "0.2",
             "--output_json", str(output)]  # fmt: skip
        )
    assert not output.exists()


def test_a_missing_pipeline_stops_before_any_sampling_with_one_line(tiny_pipeline_dir, tmp_path):
    output = tmp_path / "counts.json"
    with pytest.raises(SystemExit, match=r"^error: --pipeline .*missing: no pipeline there"):
        import_script("bench_object_count", "benchmarks").main(
            ["--pipeline", str(tiny_pipeline_dir), str(tmp_path / "missing"), "--output_json", str(output)]
        )
    assert not output.exists()

"""scripts/generate.py end to end on a tiny pipeline: one PNG per image named by its labels and seed, the captioned
grid, the manifest, reproducibility, and one-line errors before any work."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, import_script
from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training import bf16_support
from training.hub import push_pipeline_to_hub

STEPS = "2"
FILES = {"00_red-sphere+cyan-cube_seed3.png", "00_red-sphere+cyan-cube_seed4.png", "01_gray-cube_seed3.png",
         "01_gray-cube_seed4.png"}  # fmt: skip


def _argv(pipeline: Path, output_dir: Path, *extra: str) -> list[str]:
    # A fixed thread count: another count sums floats in another order, which a busy machine would make `auto` pick.
    return ["--pipeline", str(pipeline), "--labels", "red sphere, cyan cube", "--labels", "gray cube",
            "--num_images_per_prompt", "2", "--seed", "3", "--num_inference_steps", STEPS, "--device", "cpu",
            "--cpu_threads", "1", "--output_dir", str(output_dir), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def script_run(tiny_pipeline_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python scripts/generate.py ...` run once, as a user runs it."""
    output_dir = tmp_path_factory.mktemp("generate") / "out"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "generate.py"),
                             *_argv(tiny_pipeline_dir, output_dir)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return output_dir, result


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_one_png_per_image_named_by_its_list_labels_and_seed_beside_the_grid_and_manifest(script_run):
    output_dir, _ = script_run

    assert {p.name for p in output_dir.iterdir()} == FILES | {"grid.png", "manifest.json"}
    assert all(Image.open(output_dir / name).size == (32, 32) for name in FILES)


def test_the_manifest_records_labels_seeds_sampler_settings_model_and_timing(script_run, tiny_pipeline_dir):
    output_dir, _ = script_run
    manifest = json.loads((output_dir / "manifest.json").read_text())

    assert manifest["model"] == {"id": str(tiny_pipeline_dir), "revision": None}
    assert manifest["sampler"] == "sde-dpmsolver++"  # the one the pipeline was saved with
    assert (manifest["num_inference_steps"], manifest["seed"]) == (2, 3)
    assert manifest["guidance_scale"] == DEFAULT_GUIDANCE_SCALE  # left to the pipeline's own default
    assert (manifest["guidance_start"], manifest["guidance_stop"]) == (0.0, 1.0)  # guided at every step
    assert manifest["seconds_per_image"] > 0
    assert [(image["file"], image["labels"], image["seed"]) for image in manifest["images"]] == [
        ("00_red-sphere+cyan-cube_seed3.png", ["red sphere", "cyan cube"], 3),
        ("00_red-sphere+cyan-cube_seed4.png", ["red sphere", "cyan cube"], 4),
        ("01_gray-cube_seed3.png", ["gray cube"], 3),
        ("01_gray-cube_seed4.png", ["gray cube"], 4),
    ]


def test_the_grid_has_one_row_per_label_list_with_its_caption_above_its_images(script_run):
    output_dir, _ = script_run
    grid = Image.open(output_dir / "grid.png").convert("RGB")
    row_height = grid.height // 2
    caption_height = row_height - 128  # cells are enlarged to 128 px

    for row, name in enumerate(["00_red-sphere+cyan-cube_seed4.png", "01_gray-cube_seed4.png"]):
        top = row * row_height
        cell = grid.crop((128, top + caption_height, 256, top + row_height))
        enlarged = Image.open(output_dir / name).convert("RGB").resize((128, 128), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(cell), np.asarray(enlarged))
        assert np.asarray(grid.crop((0, top, grid.width, top + caption_height))).min() < 128  # caption text


def test_num_images_per_prompt_gives_distinct_images_per_list(script_run):
    output_dir, _ = script_run

    for stem in ("00_red-sphere+cyan-cube", "01_gray-cube"):
        assert np.abs(_pixels(output_dir / f"{stem}_seed3.png") - _pixels(output_dir / f"{stem}_seed4.png")).max() > 64


def test_the_same_seed_gives_identical_pngs(script_run, tiny_pipeline_dir, tmp_path):
    output_dir, _ = script_run

    import_script("generate").main(_argv(tiny_pipeline_dir, tmp_path))

    assert all((tmp_path / name).read_bytes() == (output_dir / name).read_bytes() for name in FILES)


def test_an_image_is_made_again_alone_from_the_labels_and_seed_in_its_name(script_run, tiny_pipeline_dir, tmp_path):
    output_dir, _ = script_run

    import_script("generate").main(["--pipeline", str(tiny_pipeline_dir), "--labels", "gray cube", "--seed", "4",
                                    "--num_inference_steps", STEPS, "--output_dir", str(tmp_path)])  # fmt: skip

    # Another batch size may round differently in the last bit, nothing more.
    alone, in_batch = _pixels(tmp_path / "00_gray-cube_seed4.png"), _pixels(output_dir / "01_gray-cube_seed4.png")
    assert np.abs(alone - in_batch).max() <= 2


def test_the_script_shows_a_progress_bar_and_a_summary(script_run):
    _, result = script_run

    assert "denoising" in result.stderr and f"| {STEPS}/{STEPS} [" in result.stderr  # both lists in one call
    assert "4 images" in result.stdout


def test_dtype_bf16_generates_and_is_recorded(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(bf16_support, "cpu_has_native_bf16", lambda: True)
    import_script("generate").main(_argv(tiny_pipeline_dir, tmp_path, "--dtype", "bf16"))

    assert json.loads((tmp_path / "manifest.json").read_text())["dtype"] == "bf16"
    assert all(Image.open(tmp_path / name).size == (32, 32) for name in FILES)


def test_dtype_bf16_on_a_cpu_without_native_bfloat16_samples_in_fp32_and_says_so(
    tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(bf16_support, "cpu_has_native_bf16", lambda: False)
    import_script("generate").main(_argv(tiny_pipeline_dir, tmp_path, "--dtype", "bf16"))

    assert json.loads((tmp_path / "manifest.json").read_text())["dtype"] == "fp32"
    assert "WARNING: --dtype bf16: this CPU has no native bfloat16" in capsys.readouterr().err


@pytest.mark.parametrize("change, expected", [
    (["--labels", "red cubes"], "'red cubes' is not a label; did you mean 'red cube'?"),
    (["--labels", "red sphere, red sphere"], "'red sphere' appears 2 times"),
    (["--labels", "red cube, gray cube, blue cube, green cube"], "at most 3 objects"),
    (["--scheduler", "dpm"], "unknown sampler 'dpm'; did you mean"),
    (["--device", "tpu"], "--device 'tpu' is not supported"),
    (["--output_dir", "/sys/kernel/iclevr-test"], "cannot write in"),
    (["--guidance_start", "0.6", "--guidance_stop", "0.4"], "--guidance_start 0.6 is after --guidance_stop 0.4"),
])  # fmt: skip
def test_bad_input_fails_in_one_line_before_the_weights_load(tiny_pipeline_dir, tmp_path, change, expected):
    # Only model_index.json: loading the weights would fail, so the error shows the input was checked first.
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copyfile(tiny_pipeline_dir / "model_index.json", config_only / "model_index.json")

    with pytest.raises(SystemExit) as exit_info:
        import_script("generate").main(_argv(config_only, tmp_path / "out", *change))

    message = str(exit_info.value)
    assert message.startswith("error: ") and expected in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_a_hub_pipeline_is_recorded_with_the_commit_it_was_read_at(tiny_pipeline_dir, hub_repo_id, tmp_path):
    commit = push_pipeline_to_hub(tiny_pipeline_dir, hub_repo_id)

    import_script("generate").main(["--pipeline", hub_repo_id, "--labels", "gray cube", "--num_inference_steps", STEPS,
                                    "--output_dir", str(tmp_path)])  # fmt: skip

    assert json.loads((tmp_path / "manifest.json").read_text())["model"] == {"id": hub_repo_id, "revision": commit.oid}


def test_a_bad_label_in_a_conditions_file_names_the_file_and_entry(tiny_pipeline_dir, tmp_path):
    conditions = tmp_path / "test.json"
    conditions.write_text(json.dumps([["red cube"], ["blue spheres"]]))

    with pytest.raises(SystemExit, match=r"test.json: entry 1: 'blue spheres' is not a label; did you mean"):
        import_script("generate").main(_argv(tiny_pipeline_dir, tmp_path / "out", "--conditions", str(conditions)))

"""The synthetic i-CLEVR renderer writes the real i-CLEVR layout, deterministically, with readable objects."""

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import import_script
from pipeline.vocabulary import COLOURS, DEFAULT_LABELS, SHAPES, LabelVocabulary
from training import synthetic_iclevr
from training.synthetic_iclevr import SceneObject, render_dataset, render_scene, sample_scenes



def _load(directory: Path, name: str):
    return json.loads((directory / name).read_text())


def _hashes(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def sixty_scene_dir(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("sixty") / "data"
    render_dataset(output_dir, num_scenes=60, seed=3, num_workers=1, progress=False)
    return output_dir


def test_render_writes_the_real_iclevr_layout(tiny_iclevr_dir):
    assert sorted(p.name for p in tiny_iclevr_dir.iterdir()) == [
        "iclevr",
        "new_test.json",
        "objects.json",
        "test.json",
        "train.json",
    ]
    expected = {f"CLEVR_train_{scene:06d}_{step}.png" for scene in range(12) for step in range(3)}
    assert {p.name for p in (tiny_iclevr_dir / "iclevr").iterdir()} == expected
    assert set(_load(tiny_iclevr_dir, "train.json")) == expected


def test_images_are_320x240_rgb(tiny_iclevr_dir):
    for path in sorted((tiny_iclevr_dir / "iclevr").glob("*.png"))[:6]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (320, 240)


def test_each_scene_step_adds_one_object_to_the_previous_list(tiny_iclevr_dir):
    train = _load(tiny_iclevr_dir, "train.json")
    for scene in range(12):
        steps = [train[f"CLEVR_train_{scene:06d}_{step}.png"] for step in range(3)]
        assert [len(labels) for labels in steps] == [1, 2, 3]
        assert steps[1][:1] == steps[0] and steps[2][:2] == steps[1]


def test_no_label_repeats_within_a_scene(tiny_iclevr_dir):
    for labels in _load(tiny_iclevr_dir, "train.json").values():
        assert len(set(labels)) == len(labels)


def test_every_label_is_a_vocabulary_name(tiny_iclevr_dir):
    vocabulary = LabelVocabulary()
    for name in ("train.json", "test.json", "new_test.json"):
        data = _load(tiny_iclevr_dir, name)
        for labels in data.values() if isinstance(data, dict) else data:
            vocabulary.validate(labels)


def test_objects_json_is_the_vocabulary(tiny_iclevr_dir):
    assert _load(tiny_iclevr_dir, "objects.json") == LabelVocabulary().to_objects_json()
    assert LabelVocabulary.from_objects_json(tiny_iclevr_dir / "objects.json").labels == list(DEFAULT_LABELS)


def test_objects_json_matches_the_real_one(tiny_iclevr_dir, shared_iclevr):
    assert _load(tiny_iclevr_dir, "objects.json") == _load(shared_iclevr, "objects.json")


def test_test_and_new_test_hold_32_lists(tiny_iclevr_dir):
    assert len(_load(tiny_iclevr_dir, "test.json")) == 32
    new_test = _load(tiny_iclevr_dir, "new_test.json")
    assert len(new_test) == 32 and all(len(labels) in (2, 3) for labels in new_test)


def test_test_lists_appear_in_train(sixty_scene_dir):
    seen = {frozenset(labels) for labels in _load(sixty_scene_dir, "train.json").values()}
    assert all(frozenset(labels) in seen for labels in _load(sixty_scene_dir, "test.json"))
    assert len({frozenset(labels) for labels in _load(sixty_scene_dir, "test.json")}) == 32


def test_new_test_lists_pair_objects_of_one_colour_like_the_real_new_test(sixty_scene_dir):
    for labels in _load(sixty_scene_dir, "new_test.json"):
        colours = [label.split(" ")[0] for label in labels]
        assert len(set(colours)) < len(colours), labels


def test_training_scenes_draw_every_same_colour_pair_like_the_real_train_json():
    # The real train.json holds every real new_test list as a scene; no combination may be missing from ours.
    pairs = {frozenset((f"{c} {a}", f"{c} {b}")) for c in COLOURS for a, b in itertools.combinations(SHAPES, 2)}
    seen = set()
    for scene in sample_scenes(1500, seed=0):
        seen |= {frozenset(pair) for pair in itertools.combinations([obj.label for obj in scene], 2)}

    assert pairs <= seen


def test_same_arguments_give_byte_identical_files_for_any_worker_count(tmp_path):
    render_dataset(tmp_path / "a", num_scenes=4, seed=5, num_workers=1, progress=False)
    render_dataset(tmp_path / "b", num_scenes=4, seed=5, num_workers=2, progress=False)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")


def test_different_seeds_give_different_files(tmp_path):
    render_dataset(tmp_path / "a", num_scenes=2, seed=0, num_workers=1, progress=False)
    render_dataset(tmp_path / "b", num_scenes=2, seed=1, num_workers=1, progress=False)
    first, second = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert first["objects.json"] == second["objects.json"]
    assert first["train.json"] != second["train.json"]
    assert first["iclevr/CLEVR_train_000000_2.png"] != second["iclevr/CLEVR_train_000000_2.png"]


def test_an_interrupted_render_leaves_no_folder(tmp_path, monkeypatch):
    def fail(objects):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_iclevr, "render_scene", fail)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(tmp_path / "data", num_scenes=2, num_workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_render_dataset_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        render_dataset(tmp_path, num_scenes=1, num_workers=1, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_render_dataset_rejects_zero_scenes(tmp_path):
    with pytest.raises(ValueError, match="num_scenes must be a positive integer"):
        render_dataset(tmp_path / "data", num_scenes=0, progress=False)


def test_cli_refuses_a_non_empty_output_dir(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        import_script("make_synthetic_iclevr").main(["--output_dir", str(tmp_path), "--num_scenes", "1"])
    assert exit_info.value.code == 1
    [error] = capsys.readouterr().err.strip().splitlines()
    assert "is not empty" in error and "--overwrite" in error


def test_cli_rejects_zero_scenes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        import_script("make_synthetic_iclevr").main(["--output_dir", str(tmp_path / "data"), "--num_scenes", "0"])
    assert "--num_scenes: must be >= 1, got 0" in capsys.readouterr().err


def test_cli_renders_and_saves_a_preview_grid(tmp_path, capsys):
    preview = tmp_path / "grid.png"
    import_script("make_synthetic_iclevr").main(
        ["--output_dir", str(tmp_path / "data"), "--num_scenes", "2", "--num_workers", "1", "--preview", str(preview)]
    )
    assert "images/s" in capsys.readouterr().out
    assert len(_load(tmp_path / "data", "train.json")) == 6
    with Image.open(preview) as grid:
        assert grid.size == (8 * 64, 64)


def _count(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 60) -> int:
    pixels = np.asarray(image, dtype=np.int32)
    return int((np.abs(pixels - np.array(colour)).max(axis=-1) < tolerance).sum())


def test_a_red_cube_image_has_many_red_pixels_and_no_blue_ones():
    image = render_scene([SceneObject("red cube", "small", (0.0, 0.0), rotation=30.0)])
    assert _count(image, (173, 35, 35)) > 800
    assert _count(image, (42, 75, 215)) == 0


def test_small_objects_stay_visible_at_64x64():
    for label in ("blue sphere", "yellow cylinder", "green cube"):
        colour = synthetic_iclevr.RGB[label.split(" ")[0]]
        # The farthest placement a small object can get: the top of its allowed floor region.
        obj = SceneObject(label, "small", (0.0, 2.35), rotation=45.0)
        thumbnail = render_scene([obj]).resize((64, 64), Image.Resampling.BICUBIC)
        assert _count(thumbnail, colour) >= 25, label


def test_scenes_of_five_objects_are_drawn_one_more_object_per_image(tmp_path):
    output_dir = tmp_path / "five"
    render_dataset(output_dir, num_scenes=4, seed=5, num_workers=1, progress=False, objects_per_scene=5)
    train = _load(output_dir, "train.json")
    assert len(train) == 20
    for scene in range(4):
        lists = [train[f"CLEVR_train_{scene:06d}_{step}.png"] for step in range(5)]
        assert [len(labels) for labels in lists] == [1, 2, 3, 4, 5]
        assert all(lists[step] == lists[4][: step + 1] for step in range(5))  # each a prefix of the full scene
        assert len(set(lists[4])) == 5


def test_objects_per_scene_outside_one_to_five_is_refused(tmp_path):
    with pytest.raises(ValueError, match="between 1 and 5"):
        render_dataset(tmp_path / "six", num_scenes=1, objects_per_scene=6, progress=False)

"""The data layer on real renders, real `datasets` copies and the real i-CLEVR label files."""

import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from pipeline.vocabulary import DEFAULT_LABELS, LabelVocabulary
from training import data, synthetic_iclevr
from training.data import (
    DataError,
    ICLEVRTrainingSet,
    builtin_synthetic_dir,
    default_cache_dir,
    load_condition_file,
    load_train_dataset,
    load_training_set,
    preprocess_dataset,
    vocabulary_for,
)

RESOLUTION = 16  # small: the tests check behaviour, not image quality


@pytest.fixture
def folder(tiny_iclevr_dir, tmp_path) -> Path:
    """A private copy of the tiny render that a test may damage."""
    return Path(shutil.copytree(tiny_iclevr_dir, tmp_path / "iclevr-copy"))


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def train_json(folder: Path) -> dict:
    return json.loads((folder / "train.json").read_text())


def cache_entries(cache: Path) -> list[str]:
    """Everything under cache/preprocessed, hidden temporary folders included."""
    root = cache / "preprocessed"
    return sorted(os.listdir(root)) if root.is_dir() else []


def assert_one_line_error(call, *fragments: str) -> str:
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


# ------------------------------------------------------------------------------------------------- sources


def test_folder_with_images_in_iclevr_subfolder_gives_images_and_label_lists(tiny_iclevr_dir):
    dataset = load_train_dataset(tiny_iclevr_dir)

    expected = train_json(tiny_iclevr_dir)
    assert dataset.column_names == ["image", "labels"]
    assert len(dataset) == len(expected) == 36
    assert list(dataset["labels"]) == list(expected.values())
    assert dataset[0]["image"].size == (320, 240)


def test_folder_with_images_beside_train_json_gives_the_same_pixels(folder, tiny_iclevr_dir, cache):
    for png in (folder / "iclevr").iterdir():
        png.rename(folder / png.name)
    (folder / "iclevr").rmdir()

    flat = load_training_set(folder, resolution=RESOLUTION, cache_dir=cache)
    nested = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)

    np.testing.assert_array_equal(flat.images, nested.images)
    assert flat.label_lists == nested.label_lists


def test_saved_dataset_loads_by_path_with_the_same_pixels(tiny_iclevr_dir, tmp_path, cache):
    load_train_dataset(tiny_iclevr_dir).save_to_disk(str(tmp_path / "saved"))

    saved = load_training_set(dataset_name=str(tmp_path / "saved"), resolution=RESOLUTION, cache_dir=cache)
    folder = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)

    np.testing.assert_array_equal(saved.images, folder.images)
    assert saved.label_lists == folder.label_lists


def test_saved_dataset_dict_uses_its_train_split(tiny_iclevr_dir, tmp_path):
    dataset = load_train_dataset(tiny_iclevr_dir)
    datasets.DatasetDict({"train": dataset, "test": dataset.select(range(3))}).save_to_disk(str(tmp_path / "dict"))

    assert len(load_train_dataset(dataset_name=str(tmp_path / "dict"))) == 36


def test_loading_a_saved_dataset_writes_nothing_into_its_folder(tiny_iclevr_dir, tmp_path, cache):
    load_train_dataset(tiny_iclevr_dir).save_to_disk(str(tmp_path / "saved"))
    before = sorted(os.listdir(tmp_path / "saved"))

    load_training_set(dataset_name=str(tmp_path / "saved"), resolution=RESOLUTION, cache_dir=cache)

    assert sorted(os.listdir(tmp_path / "saved")) == before


def test_other_column_names_are_chosen_with_image_and_label_column(tiny_iclevr_dir, tmp_path):
    renamed = load_train_dataset(tiny_iclevr_dir).rename_columns({"image": "picture", "labels": "objects"})
    renamed.save_to_disk(str(tmp_path / "renamed"))

    dataset = load_train_dataset(dataset_name=str(tmp_path / "renamed"), image_column="picture", label_column="objects")

    assert dataset.column_names == ["image", "labels"]


def test_missing_column_error_names_the_closest_column(tiny_iclevr_dir, tmp_path):
    load_train_dataset(tiny_iclevr_dir).rename_columns({"labels": "label_names"}).save_to_disk(str(tmp_path / "d"))

    assert_one_line_error(
        lambda: load_train_dataset(dataset_name=str(tmp_path / "d"), label_column="label_nmes"),
        "'label_nmes'",
        "did you mean 'label_names'",
    )


def test_builtin_synthetic_set_is_rendered_once_then_reused(cache, monkeypatch):
    first = load_train_dataset(cache_dir=cache, num_synthetic_scenes=2, synthetic_seed=5)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered twice")

    monkeypatch.setattr("training.synthetic_iclevr.render_dataset", no_render)
    second = load_train_dataset(cache_dir=cache, num_synthetic_scenes=2, synthetic_seed=5)

    assert (cache / f"synthetic-iclevr-v{synthetic_iclevr.RENDERER_VERSION}-seed5-2" / "train.json").is_file()
    assert len(first) == len(second) == 6


def test_a_new_renderer_version_renders_anew_instead_of_reusing_an_old_render(cache, monkeypatch):
    old = builtin_synthetic_dir(cache, num_scenes=2, seed=5)
    monkeypatch.setattr("training.synthetic_iclevr.RENDERER_VERSION", synthetic_iclevr.RENDERER_VERSION + 1)

    new = builtin_synthetic_dir(cache, num_scenes=2, seed=5)

    assert new != old and (new / "train.json").is_file() and (old / "train.json").is_file()


def test_default_cache_dir_follows_iclevr_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ICLEVR_CACHE", str(tmp_path / "elsewhere"))

    assert default_cache_dir() == tmp_path / "elsewhere"


def test_vocabulary_comes_from_objects_json(folder):
    reordered = list(reversed(DEFAULT_LABELS))
    (folder / "objects.json").write_text(json.dumps({label: i for i, label in enumerate(reordered)}))

    assert vocabulary_for(folder).labels == reordered


# ------------------------------------------------------------------------------------------ real label files


def test_real_condition_files_give_32_label_lists(shared_iclevr):
    for name in ("test.json", "new_test.json"):
        conditions = load_condition_file(shared_iclevr / name, LabelVocabulary())
        assert len(conditions) == 32
        assert all(isinstance(names, list) and names for names in conditions)


def test_real_train_json_label_lists_all_validate(shared_iclevr):
    vocabulary = vocabulary_for(shared_iclevr)
    mapping = json.loads((shared_iclevr / "train.json").read_text())

    assert len(mapping) == 18009
    assert all(vocabulary.validate(names) for names in mapping.values())


def test_real_objects_json_is_the_default_vocabulary(shared_iclevr):
    assert vocabulary_for(shared_iclevr) == LabelVocabulary()


# ------------------------------------------------------------------------------------------ preprocessing cache


def test_preprocessed_pixels_are_uint8_at_the_resolution(tiny_iclevr_dir, cache):
    preprocessed = preprocess_dataset(load_train_dataset(tiny_iclevr_dir), RESOLUTION, cache)
    training_set = ICLEVRTrainingSet(preprocessed)

    assert preprocessed.features["pixel_values"].shape == (RESOLUTION, RESOLUTION, 3)
    assert training_set.images.dtype == np.uint8
    assert training_set.images.shape == (36, RESOLUTION, RESOLUTION, 3)


def test_second_load_reuses_the_cache_without_decoding_images(tiny_iclevr_dir, cache, monkeypatch):
    first = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)
    entries = cache_entries(cache)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded again")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    second = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)

    np.testing.assert_array_equal(first.images, second.images)
    assert cache_entries(cache) == entries and len(entries) == 1


def test_each_resolution_gets_its_own_cache_entry(tiny_iclevr_dir, cache):
    load_training_set(tiny_iclevr_dir, resolution=8, cache_dir=cache)
    load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)

    assert [entry.rsplit("-", 1)[1] for entry in cache_entries(cache)] in (["16", "8"], ["8", "16"])


def test_replacing_an_image_invalidates_the_cache(folder, cache):
    before = load_training_set(folder, resolution=RESOLUTION, cache_dir=cache)
    first = next(iter(train_json(folder)))
    PIL.Image.new("RGB", (320, 240), (255, 0, 0)).save(folder / "iclevr" / first)

    after = load_training_set(folder, resolution=RESOLUTION, cache_dir=cache)

    assert len(cache_entries(cache)) == 2
    assert (after.images[0] == [255, 0, 0]).all() and not (before.images[0] == [255, 0, 0]).all()


# ------------------------------------------------------------------------------------------- training items


def test_training_items_are_float_tensors_in_minus_one_to_one(tiny_iclevr_dir, cache):
    item = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)[0]

    assert item["pixel_values"].dtype == torch.float32
    assert item["pixel_values"].shape == (3, RESOLUTION, RESOLUTION)
    assert item["pixel_values"].min() >= -1.0 and item["pixel_values"].max() <= 1.0
    assert item["class_labels"].dtype == torch.float32 and item["class_labels"].shape == (24,)


def test_class_labels_are_the_multi_hot_label_lists(tiny_iclevr_dir, cache):
    training_set = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)
    vocabulary = training_set.vocabulary

    for index in range(len(training_set)):
        assert vocabulary.decode(training_set[index]["class_labels"]) == sorted(
            training_set.label_lists[index], key=vocabulary.index
        )


def test_random_flip_mirrors_images_left_right_differently_each_epoch(tiny_iclevr_dir, cache):
    plain = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)[0]["pixel_values"]
    flipping = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache, random_flip=True)

    seen = []
    for epoch in range(20):
        flipping.set_epoch(epoch)
        seen.append(flipping[0]["pixel_values"])

    assert all(torch.equal(x, plain) or torch.equal(x, plain.flip(-1)) for x in seen)
    assert any(torch.equal(x, plain) for x in seen) and any(torch.equal(x, plain.flip(-1)) for x in seen)


def test_random_flips_depend_only_on_seed_epoch_and_index(tiny_iclevr_dir, cache):
    first = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache, random_flip=True, flip_seed=3)
    second = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache, random_flip=True, flip_seed=3)
    first.set_epoch(5)
    second.set_epoch(5)
    torch.manual_seed(1)  # a running RNG must not matter
    a = [first[i]["pixel_values"] for i in range(len(first))]
    torch.manual_seed(2)
    b = [second[i]["pixel_values"] for i in reversed(range(len(second)))][::-1]

    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_items_batch_through_a_dataloader(tiny_iclevr_dir, cache):
    training_set = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)

    batch = next(iter(torch.utils.data.DataLoader(training_set, batch_size=8, shuffle=True)))

    assert batch["pixel_values"].shape == (8, 3, RESOLUTION, RESOLUTION)
    assert batch["class_labels"].shape == (8, 24)


def test_same_colour_scenes_are_shown_repeats_times_per_epoch_and_the_rest_once(tiny_iclevr_dir, cache):
    plain = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)
    repeated = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache, same_colour_repeats=3)
    same_colour = [i for i, labels in enumerate(plain.label_lists) if len({n.split()[0] for n in labels}) < len(labels)]
    assert 0 < len(same_colour) < plain.num_images  # the tiny render has both kinds

    shown = [pixels_index(plain, repeated[position]["pixel_values"]) for position in range(len(repeated))]

    assert repeated.num_images == plain.num_images == 36
    assert len(repeated) == 36 + 2 * len(same_colour)
    assert sorted(shown) == sorted(list(range(36)) + 2 * same_colour)
    assert all(torch.equal(repeated[p]["class_labels"], plain[i]["class_labels"]) for p, i in enumerate(shown))


def pixels_index(training_set: ICLEVRTrainingSet, pixels: torch.Tensor) -> int:
    """Which of the set's distinct images these pixels are."""
    matches = [i for i in range(training_set.num_images) if torch.equal(training_set[i]["pixel_values"], pixels)]
    assert len(matches) == 1
    return matches[0]


def test_one_repeat_keeps_the_plain_order_and_flips(tiny_iclevr_dir, cache):
    plain = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache, random_flip=True)
    once = load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache, random_flip=True,
                             same_colour_repeats=1)

    assert len(once) == len(plain) == 36
    assert all(torch.equal(once[i]["pixel_values"], plain[i]["pixel_values"]) for i in range(36))


def test_labels_without_an_iclevr_colour_word_repeat_nothing(tmp_path):
    labels = [["apple"], ["apple", "pear"], ["big dog", "big cat"]]
    images = [PIL.Image.new("RGB", (8, 8), "red")] * 3
    datasets.Dataset.from_dict({"image": images, "labels": labels}).cast_column("image", datasets.Image()).save_to_disk(
        tmp_path / "other")

    training_set = load_training_set(dataset_name=str(tmp_path / "other"), resolution=RESOLUTION,
                                     cache_dir=tmp_path / "c", vocabulary=LabelVocabulary(["apple", "pear", "big dog",
                                     "big cat"]), same_colour_repeats=3)  # fmt: skip

    assert len(training_set) == training_set.num_images == 3


# ---------------------------------------------------------------------------------------------- bad inputs


def test_condition_file_error_names_the_file_and_the_entry(tmp_path):
    path = tmp_path / "conditions.json"
    path.write_text(json.dumps([["red cube"], ["red cube", "bleu sphere"]]))

    assert_one_line_error(
        lambda: load_condition_file(path, LabelVocabulary()), str(path), "entry 1", "did you mean 'blue sphere'"
    )


def _remove_train_json(folder: Path) -> None:
    (folder / "train.json").unlink()


def _remove_image_folder(folder: Path) -> None:
    shutil.rmtree(folder / "iclevr")


def _remove_two_images(folder: Path) -> None:
    for name in list(train_json(folder))[4:6]:
        (folder / "iclevr" / name).unlink()


def _text_instead_of_image(folder: Path) -> None:
    (folder / "iclevr" / list(train_json(folder))[7]).write_text("not an image")


def _truncated_image(folder: Path) -> None:
    path = folder / "iclevr" / list(train_json(folder))[7]
    path.write_bytes(path.read_bytes()[:200])


def _unknown_label(folder: Path) -> None:
    mapping = train_json(folder)
    mapping[list(mapping)[3]] = ["red cube", "purpel sphere"]
    (folder / "train.json").write_text(json.dumps(mapping))


def _train_json_is_a_list(folder: Path) -> None:
    (folder / "train.json").write_text(json.dumps(list(train_json(folder).values())))


def _label_list_is_a_string(folder: Path) -> None:
    mapping = train_json(folder)
    mapping[list(mapping)[2]] = "red cube"
    (folder / "train.json").write_text(json.dumps(mapping))


def _bad_objects_json(folder: Path) -> None:
    (folder / "objects.json").write_text(json.dumps({"red cube": 0, "blue cube": 5}))


BAD_FOLDERS = {
    "missing train.json": (_remove_train_json, ["no train.json"]),
    "missing image folder": (_remove_image_folder, ["no image folder", "iclevr"]),
    "listed image absent": (_remove_two_images, ["2 of the 36 images", "CLEVR_train_"]),
    "text file as image": (_text_instead_of_image, ["is not a readable image", "CLEVR_train_"]),
    "truncated image": (_truncated_image, ["is not a readable image", "CLEVR_train_"]),
    "label not in vocabulary": (_unknown_label, ["train.json", "CLEVR_train_", "did you mean 'purple sphere'"]),
    "train.json not a mapping": (_train_json_is_a_list, ["must map image names to label lists", "list"]),
    "label list not a list": (_label_list_is_a_string, ["train.json", "CLEVR_train_", "list of label names"]),
    "bad objects.json": (_bad_objects_json, ["objects.json", "indices"]),
}


@pytest.mark.parametrize("damage, fragments", BAD_FOLDERS.values(), ids=BAD_FOLDERS.keys())
def test_bad_folder_gives_one_line_error_and_no_cache_entry(folder, cache, damage, fragments):
    damage(folder)

    assert_one_line_error(lambda: load_training_set(folder, resolution=RESOLUTION, cache_dir=cache), *fragments)
    assert cache_entries(cache) == []


def test_unloadable_dataset_name_gives_one_line_error(tmp_path, cache):
    assert_one_line_error(
        lambda: load_training_set(dataset_name=str(tmp_path / "nowhere"), cache_dir=cache),
        "neither a folder written by save_to_disk",
    )
    assert cache_entries(cache) == []


@pytest.mark.parametrize("resolution, suggestion", [(60, "try 64"), (4, "try 8"), (0, "try 8")])
def test_bad_resolution_gives_one_line_error_and_no_cache_entry(tiny_iclevr_dir, cache, resolution, suggestion):
    assert_one_line_error(
        lambda: load_training_set(tiny_iclevr_dir, resolution=resolution, cache_dir=cache), "multiple of 8", suggestion
    )
    assert not cache.exists()


def test_interrupted_preprocessing_leaves_no_cache_entry(tiny_iclevr_dir, cache, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "resize_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_training_set(tiny_iclevr_dir, resolution=RESOLUTION, cache_dir=cache)

    assert cache_entries(cache) == []

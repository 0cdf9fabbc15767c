"""The data layer: i-CLEVR sources -> a validated `datasets.Dataset` -> a cached, resized copy -> a torch Dataset.

Sources (exactly one is used):
  * `train_data_dir`: an i-CLEVR folder as the course distributes it (or as `training.synthetic_iclevr` renders it):
    `train.json` (image name -> label list), optional `objects.json`, the PNGs in `DIR/iclevr/` or in `DIR/`;
  * `dataset_name`: a Hub data set id, or a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
  * nothing: the built-in synthetic i-CLEVR, rendered once into the cache folder.

Decoding and resizing 320x240 PNGs costs far more than a training step on small models, so every image is
resized once per resolution and cached as uint8 arrays; an epoch then only converts arrays to tensors.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import datasets
import httpx
import numpy as np
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from PIL import Image, UnidentifiedImageError

from pipeline.vocabulary import DEFAULT_LABELS, LabelError, LabelVocabulary
from training import synthetic_iclevr
from training.atomic_folders import remove_stale, temporary_folder
from training.cli import closest
from training.errors import UserError
from training.scene_weighting import epoch_order

IMAGE_COLUMN = "image"
LABEL_COLUMN = "labels"
PIXEL_COLUMN = "pixel_values"
IMAGE_SUBFOLDER = "iclevr"
TEMPORARY_PREFIX = ".tmp-"  # preprocessed copies being written, in cache_dir/preprocessed
DEFAULT_SYNTHETIC_SCENES = 6003  # the real i-CLEVR's scene count: 18009 images
DEFAULT_SYNTHETIC_SEED = 0
# Folder images are referenced by path; the table below is what a loaded training set looks like.
TRAIN_FEATURES = datasets.Features(
    {IMAGE_COLUMN: datasets.Image(), LABEL_COLUMN: datasets.List(datasets.Value("string"))}
)


class DataError(UserError, ValueError):
    """Bad training data or data arguments; the message is one line saying what was wrong and what is allowed."""


def default_cache_dir() -> Path:
    """Where rendered and preprocessed data live: $ICLEVR_CACHE if set, else ~/.cache/iclevr-diffusion."""
    return Path(os.environ.get("ICLEVR_CACHE") or Path.home() / ".cache" / "iclevr-diffusion")


def check_resolution(resolution: int) -> int:
    """The UNet halves the image three times, so the side must be a multiple of 8 (and at least 8)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8 or resolution % 8:
        suggestion = max(8, 8 * round(resolution / 8)) if isinstance(resolution, (int, float)) else 64
        raise DataError(f"resolution must be a multiple of 8 and at least 8, got {resolution!r}; try {suggestion}")
    return resolution


# ----------------------------------------------------------------------------------------------- vocabulary


def vocabulary_for(
    train_data_dir: str | Path | None = None, vocabulary: LabelVocabulary | None = None
) -> LabelVocabulary:
    """The vocabulary the data uses: the folder's `objects.json` when present, else `vocabulary` or the default.

    A given `vocabulary` must agree with the folder's objects.json: label indices are the model's input order.
    """
    objects_json = Path(train_data_dir) / "objects.json" if train_data_dir is not None else None
    if objects_json is None or not objects_json.is_file():
        return vocabulary if vocabulary is not None else LabelVocabulary()
    try:
        found = LabelVocabulary.from_objects_json(objects_json)
    except LabelError as error:
        raise DataError(str(error)) from None
    if vocabulary is not None and vocabulary != found:
        raise DataError(
            f"{objects_json} orders its {len(found)} labels differently from the given vocabulary "
            f"({len(vocabulary)} labels); use the vocabulary from objects.json or a folder that matches the model"
        )
    return vocabulary if vocabulary is not None else found  # a given vocabulary keeps its max_objects


def load_condition_file(path: str | Path, vocabulary: LabelVocabulary | None = None) -> list[list[str]]:
    """Reads a `test.json`-style file (a JSON list of label lists) and validates every entry."""
    path = Path(path)
    vocabulary = vocabulary if vocabulary is not None else LabelVocabulary()
    entries = _read_json(path, 'a JSON list of label lists, like [["red cube"], ["blue sphere", "gray cylinder"]]')
    if not isinstance(entries, list) or not entries:
        raise DataError(f'{path} must hold a non-empty JSON list of label lists, like [["red cube"], ["blue sphere"]]')
    checked = []
    for index, names in enumerate(entries):
        try:
            checked.append(_validate_labels(vocabulary, names))
        except _EntryError as error:
            raise DataError(f"{path}: entry {index}: {error.message}") from None
    return checked


# ------------------------------------------------------------------------------------------ training data set


def load_train_dataset(
    train_data_dir: str | Path | None = None,
    dataset_name: str | None = None,
    image_column: str = IMAGE_COLUMN,
    label_column: str = LABEL_COLUMN,
    cache_dir: str | Path | None = None,
    vocabulary: LabelVocabulary | None = None,
    *,
    num_synthetic_scenes: int = DEFAULT_SYNTHETIC_SCENES,
    synthetic_seed: int = DEFAULT_SYNTHETIC_SEED,
    revision: str | None = None,
) -> datasets.Dataset:
    """The training set as a `datasets.Dataset` with columns "image" (datasets.Image) and "labels" (list of str).

    Give `train_data_dir` (an i-CLEVR folder) or `dataset_name` (Hub id or save_to_disk folder), or neither for
    the built-in synthetic i-CLEVR (`num_synthetic_scenes` scenes from `synthetic_seed`, rendered once into the
    cache). `revision` pins a Hub data set to a commit. Every label list is validated through the vocabulary (see
    `vocabulary_for`).
    """
    if train_data_dir is not None and dataset_name is not None:
        raise DataError("give either train_data_dir (an i-CLEVR folder) or dataset_name (a data set), not both")
    if dataset_name is not None:
        vocabulary = vocabulary if vocabulary is not None else LabelVocabulary()
        return _load_named_dataset(dataset_name, image_column, label_column, vocabulary, revision)
    if train_data_dir is None:
        train_data_dir = builtin_synthetic_dir(cache_dir, num_synthetic_scenes, synthetic_seed)
    return _load_iclevr_folder(Path(train_data_dir), vocabulary_for(train_data_dir, vocabulary))


def builtin_synthetic_dir(
    cache_dir: str | Path | None = None,
    num_scenes: int = DEFAULT_SYNTHETIC_SCENES,
    seed: int = DEFAULT_SYNTHETIC_SEED,
    objects_per_scene: int = synthetic_iclevr.OBJECTS_PER_SCENE,
) -> Path:
    """The built-in synthetic i-CLEVR folder, rendered on first use (the renderer writes it atomically)."""
    name = f"synthetic-iclevr-v{synthetic_iclevr.RENDERER_VERSION}-seed{seed}-{num_scenes}"
    if objects_per_scene != synthetic_iclevr.OBJECTS_PER_SCENE:
        name += f"-objects{objects_per_scene}"
    folder = Path(cache_dir or default_cache_dir()) / name
    if not (folder / "train.json").is_file():
        print(f"Rendering the built-in synthetic i-CLEVR ({num_scenes} scenes of up to {objects_per_scene} objects, "
              f"seed {seed}) into {folder} (once)")
        synthetic_iclevr.render_dataset(folder, num_scenes=num_scenes, seed=seed, objects_per_scene=objects_per_scene)
    return folder


def _load_iclevr_folder(folder: Path, vocabulary: LabelVocabulary) -> datasets.Dataset:
    if not folder.is_dir():
        raise DataError(f"train_data_dir {folder} is not a folder; give the i-CLEVR folder that holds train.json")
    train_json = folder / "train.json"
    if not train_json.is_file():
        raise DataError(
            f"{folder} has no train.json; an i-CLEVR folder holds train.json (image name -> label list), "
            f"objects.json and the images in {IMAGE_SUBFOLDER}/ or beside train.json"
        )
    mapping = _read_json(
        train_json, 'a mapping of image names to label lists, like {"CLEVR_train_000000_0.png": ["red cube"]}'
    )
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(
            f'{train_json} must map image names to label lists, like {{"CLEVR_train_000000_0.png": ["red cube"]}}; '
            f"found {'an empty mapping' if isinstance(mapping, dict) else 'a JSON ' + type(mapping).__name__}"
        )
    names = list(mapping)
    label_lists = []
    # A label missing from a custom objects.json is reported as such, not as a misspelling.
    custom = folder / "objects.json" if tuple(vocabulary.labels) != DEFAULT_LABELS else None
    for name in names:
        try:
            label_lists.append(_validate_labels(vocabulary, mapping[name], custom))
        except _EntryError as error:
            raise DataError(f"{train_json}: image {name!r}: {error.message}") from None

    # The course keeps images in DIR/iclevr/; renders and hand-made copies may keep them beside train.json.
    image_dir = folder / IMAGE_SUBFOLDER if (folder / IMAGE_SUBFOLDER).is_dir() else folder
    paths = [image_dir / name for name in names]
    stats = []  # sizes and modification times make the cache key follow re-rendered or replaced images
    missing = []
    for path in paths:
        try:
            stat = path.stat()
            stats.append((stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            missing.append(path.name)
    if len(missing) == len(paths) and image_dir == folder:
        raise DataError(
            f"no image folder: {folder / IMAGE_SUBFOLDER} does not exist and {folder} holds none of the "
            f"{len(paths)} images listed in train.json; put the images in {IMAGE_SUBFOLDER}/ beside train.json"
        )
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(paths)} images listed in {train_json} are missing from {image_dir}, "
            f"first {missing[0]!r}; put every listed image there or remove its entry from train.json"
        )
    columns = {IMAGE_COLUMN: [str(path) for path in paths], LABEL_COLUMN: label_lists}
    key = hashlib.sha256(json.dumps([columns[IMAGE_COLUMN], label_lists, stats]).encode()).hexdigest()[:32]
    # A transform is the public way to set a fingerprint; the default one would only hash paths, not contents.
    return datasets.Dataset.from_dict(columns, features=TRAIN_FEATURES).select_columns(
        [IMAGE_COLUMN, LABEL_COLUMN], new_fingerprint=key
    )


def _load_named_dataset(
    dataset_name: str, image_column: str, label_column: str, vocabulary: LabelVocabulary, revision: str | None
) -> datasets.Dataset:
    local = Path(dataset_name)
    if (local / "train.json").is_file():
        raise DataError(
            f"dataset_name {dataset_name!r} is an i-CLEVR folder (it holds train.json): pass it as train_data_dir"
        )
    if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
        dataset = datasets.load_from_disk(str(local))
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                splits = list(dataset)
                raise DataError(
                    f"{dataset_name} has no 'train' split (it has {splits}); save the training split as 'train'"
                )
            dataset = dataset["train"]
    else:
        try:
            dataset = datasets.load_dataset(dataset_name, split="train", revision=revision)
        except Exception as error:  # network, missing repo, no train split, bad files: all mean "cannot load"
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise DataError(
                f"dataset_name {dataset_name!r} is neither a folder written by save_to_disk nor a data set "
                f"datasets.load_dataset can load with a 'train' split ({type(error).__name__}: {reason})"
            ) from error

    for role, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in dataset.column_names:
            raise DataError(
                f"{dataset_name} has no column {column!r} ({role}); did you mean "
                f"{closest(column, dataset.column_names)!r}? columns: {', '.join(dataset.column_names)}"
            )
    image_feature, label_feature = dataset.features[image_column], dataset.features[label_column]
    if not isinstance(image_feature, datasets.Image):
        raise DataError(
            f"{dataset_name} column {image_column!r} holds {image_feature}, not images; "
            f"give the column of datasets.Image values as image_column"
        )
    if not (
        isinstance(label_feature, (datasets.List, datasets.LargeList))
        and isinstance(label_feature.feature, datasets.Value)
        and label_feature.feature.dtype in ("string", "large_string")
    ):
        raise DataError(
            f"{dataset_name} column {label_column!r} holds {label_feature}; label_column must hold one list of "
            f"label names per image, like ['red cube', 'blue sphere']"
        )
    for row, names in enumerate(dataset[label_column]):
        try:
            _validate_labels(vocabulary, names)
        except _EntryError as error:
            raise DataError(f"{dataset_name}: row {row} of column {label_column!r}: {error.message}") from None

    dataset = dataset.select_columns([image_column, label_column])
    renames = {old: new for old, new in ((image_column, IMAGE_COLUMN), (label_column, LABEL_COLUMN)) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    if dataset.features[IMAGE_COLUMN].decode is False:
        dataset = dataset.cast_column(IMAGE_COLUMN, datasets.Image())
    return dataset


# ------------------------------------------------------------------------------------------ preprocessing cache


def preprocess_dataset(
    dataset: datasets.Dataset,
    resolution: int,
    cache_dir: str | Path | None = None,
    *,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """The data set resized to `resolution` x `resolution` RGB uint8 ("pixel_values", HxWx3) plus "labels".

    Cached in `cache_dir/preprocessed/<fingerprint>-<resolution>`: a later call with the same data reuses it and
    decodes no PNG. The copy is written in a temporary folder and renamed, so a failure leaves no partial entry; the
    temporary folders of runs that were killed are removed by the next call.
    `num_proc` defaults to the CPU count (at most 8) for large data sets.
    """
    check_resolution(resolution)
    for column in (IMAGE_COLUMN, LABEL_COLUMN):
        if column not in dataset.column_names:
            raise DataError(
                f"preprocess_dataset needs columns {IMAGE_COLUMN!r} and {LABEL_COLUMN!r}, found "
                f"{dataset.column_names}; load the data with load_train_dataset"
            )
    root = Path(cache_dir or default_cache_dir()) / "preprocessed"
    final = root / f"{dataset._fingerprint}-{resolution}"
    if (final / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(final))
    remove_stale(root, TEMPORARY_PREFIX)  # what killed preprocessing runs left, whatever data they were for

    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if len(dataset) >= 2000 else 1
    features = datasets.Features(
        {
            PIXEL_COLUMN: datasets.Array3D(shape=(resolution, resolution, 3), dtype="uint8"),
            LABEL_COLUMN: datasets.List(datasets.Value("string")),
        }
    )
    with temporary_folder(root, f"{TEMPORARY_PREFIX}{final.name}-") as work:
        # decode=False hands us the path/bytes, so a bad file can be named; the map output goes into our temp
        # folder, never beside the source data (a save_to_disk folder would otherwise receive cache files).
        resized = dataset.cast_column(IMAGE_COLUMN, datasets.Image(decode=False)).map(
            _resize_batch,
            batched=True,
            batch_size=100,
            writer_batch_size=100,
            with_indices=True,
            fn_kwargs={"resolution": resolution},
            remove_columns=[c for c in dataset.column_names if c != LABEL_COLUMN],
            features=features,
            num_proc=num_proc if num_proc > 1 else None,
            cache_file_name=str(work / "resized.arrow"),
            desc=f"Resizing {len(dataset)} images to {resolution}x{resolution} (once)",
        )
        resized.save_to_disk(str(work / "dataset"))
        del resized
        try:
            os.replace(work / "dataset", final)
        except OSError:
            if not (final / "dataset_info.json").is_file():  # not a concurrent writer that finished first
                raise
    return datasets.load_from_disk(str(final))


def _resize_batch(batch: dict[str, list], indices: list[int], resolution: int) -> dict[str, Any]:
    pixels = np.empty((len(indices), resolution, resolution, 3), dtype=np.uint8)
    for i, (image, row) in enumerate(zip(batch[IMAGE_COLUMN], indices)):
        pixels[i] = resize_image(_open_image(image, row), resolution)
    return {PIXEL_COLUMN: pixels}


def _open_image(image: dict[str, Any], row: int) -> Image.Image:
    name = image.get("path") or f"row {row}"
    try:
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        with Image.open(source) as opened:
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        detail = type(error).__name__ if str(name) in str(error) else f"{type(error).__name__}: {error}"
        raise DataError(
            f"{name} is not a readable image ({detail}); replace it with a valid PNG or remove its entry"
        ) from None


def resize_image(image: Image.Image, resolution: int) -> np.ndarray:
    """RGB image -> (resolution, resolution, 3) uint8, antialiased.

    The 4:3 frame is squashed to a square rather than cropped, as the course's evaluator was trained that way
    and a crop could cut off objects at the edges.
    """
    image = image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


# ----------------------------------------------------------------------------------------------- torch side


def to_pixel_values(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1], what the UNet and the evaluator take."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class ICLEVRTrainingSet(torch.utils.data.Dataset):
    """The preprocessed images held in memory as one uint8 array, with their multi-hot labels.

    Items are {"pixel_values": float32 (3, H, W) in [-1, 1], "class_labels": float32 (len(vocabulary),)}.
    `random_flip` mirrors images left-right with probability 1/2 (i-CLEVR labels carry no positions). Which images
    flip depends only on (`flip_seed`, epoch, index), never on a running RNG, so a run resumed mid-epoch flips exactly
    what the uninterrupted run flipped; call `set_epoch` at the start of every epoch. `same_colour_repeats` > 1
    shows each image with two objects of one colour that many times per epoch (see training/scene_weighting.py);
    `len()` counts those positions, `num_images` the distinct images.
    """

    def __init__(
        self,
        preprocessed: datasets.Dataset,
        vocabulary: LabelVocabulary | None = None,
        random_flip: bool = False,
        flip_seed: int = 0,
        source: dict[str, Any] | None = None,
        same_colour_repeats: int = 1,
    ):
        missing = [c for c in (PIXEL_COLUMN, LABEL_COLUMN) if c not in preprocessed.column_names]
        if missing:
            raise DataError(
                f"ICLEVRTrainingSet needs a preprocessed data set with columns {PIXEL_COLUMN!r} and "
                f"{LABEL_COLUMN!r}, missing {missing}; build it with preprocess_dataset"
            )
        self.vocabulary = vocabulary if vocabulary is not None else LabelVocabulary()
        self.source: dict[str, Any] = source or {}  # where the images came from (see data_source)
        self.random_flip = random_flip
        self.flip_seed = flip_seed
        self.images: np.ndarray = np.ascontiguousarray(
            preprocessed.with_format("numpy", columns=[PIXEL_COLUMN], dtype=np.uint8)[:][PIXEL_COLUMN]
        )
        self.label_lists: list[list[str]] = [list(names) for names in preprocessed[LABEL_COLUMN]]
        try:
            self.class_labels = self.vocabulary.encode_batch(self.label_lists)
        except LabelError as error:
            raise DataError(f"preprocessed labels do not fit the vocabulary: {error}") from None
        try:
            self.order = epoch_order(self.label_lists, same_colour_repeats)
        except ValueError as error:
            raise DataError(str(error)) from None
        self.resolution = int(self.images.shape[1])
        self.set_epoch(0)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Draws this epoch's flips (DataLoader workers copy the set when an epoch's iteration starts)."""
        self._flips = np.random.default_rng([self.flip_seed, epoch]).random(len(self.order)) < 0.5

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        index = self.order[position]
        pixels = to_pixel_values(self.images[index])
        if self.random_flip and self._flips[position]:
            pixels = pixels.flip(-1)
        return {"pixel_values": pixels, "class_labels": self.class_labels[index]}


def load_training_set(
    train_data_dir: str | Path | None = None,
    dataset_name: str | None = None,
    image_column: str = IMAGE_COLUMN,
    label_column: str = LABEL_COLUMN,
    resolution: int = 64,
    random_flip: bool = False,
    cache_dir: str | Path | None = None,
    vocabulary: LabelVocabulary | None = None,
    *,
    flip_seed: int = 0,
    num_synthetic_scenes: int = DEFAULT_SYNTHETIC_SCENES,
    synthetic_seed: int = DEFAULT_SYNTHETIC_SEED,
    num_proc: int | None = None,
    revision: str | None = None,
    same_colour_repeats: int = 1,
) -> ICLEVRTrainingSet:
    """Source -> validated data set -> cached resize -> in-memory torch Dataset (see `load_train_dataset`).

    The returned set's `.vocabulary` is the one the data uses (objects.json when the folder has one), and its
    `.source` says where the images came from (`data_source`). A Hub data set is read at `revision`, or at the
    commit its main branch points to now, resolved once so that the recorded commit is the one that was read.
    """
    check_resolution(resolution)  # before any rendering or loading, so a typo fails fast
    if dataset_name is None:
        vocabulary = vocabulary_for(train_data_dir, vocabulary)
    elif revision is None and not Path(dataset_name).is_dir():
        revision = hub_commit(dataset_name)
    dataset = load_train_dataset(
        train_data_dir,
        dataset_name,
        image_column,
        label_column,
        cache_dir,
        vocabulary,
        num_synthetic_scenes=num_synthetic_scenes,
        synthetic_seed=synthetic_seed,
        revision=revision,
    )
    preprocessed = preprocess_dataset(dataset, resolution, cache_dir, num_proc=num_proc)
    source = data_source(train_data_dir, dataset_name, revision, num_synthetic_scenes, synthetic_seed)
    return ICLEVRTrainingSet(preprocessed, vocabulary, random_flip=random_flip, flip_seed=flip_seed, source=source,
                             same_colour_repeats=same_colour_repeats)


def hub_commit(dataset_name: str) -> str | None:
    """The commit a Hub data set's main branch points to; None when the Hub cannot be reached (offline, read from
    the cache) or the name is not a Hub data set (loading then says why)."""
    try:
        return HfApi().dataset_info(dataset_name).sha
    except (HfHubHTTPError, httpx.HTTPError, OfflineModeIsEnabled, HFValidationError):
        return None


def data_source(
    train_data_dir: str | Path | None,
    dataset_name: str | None,
    revision: str | None = None,
    num_synthetic_scenes: int = DEFAULT_SYNTHETIC_SCENES,
    synthetic_seed: int = DEFAULT_SYNTHETIC_SEED,
) -> dict[str, Any]:
    """Where training images came from, for training_args.json and the model card: "synthetic" (the built-in
    render), "folder" (an i-CLEVR folder), "saved" (a save_to_disk folder) or "hub" (with the commit read)."""
    if dataset_name is not None:
        if Path(dataset_name).is_dir():
            return {"source": "saved", "path": str(Path(dataset_name).resolve())}
        return {"source": "hub", "dataset": dataset_name, "revision": revision}
    if train_data_dir is not None:
        return {"source": "folder", "path": str(Path(train_data_dir).resolve())}
    return {
        "source": "synthetic",
        "scenes": num_synthetic_scenes,
        "seed": synthetic_seed,
        "renderer_version": synthetic_iclevr.RENDERER_VERSION,
    }


# ----------------------------------------------------------------------------------------------------- helpers


class _EntryError(Exception):
    """One bad entry; the caller adds which file/row it came from."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _validate_labels(vocabulary: LabelVocabulary, names: object, objects_json: Path | None = None) -> list[str]:
    """`objects_json`: the custom objects.json the vocabulary came from, named when a label is not in it."""
    if not isinstance(names, (list, tuple)):
        raise _EntryError(f"expected a list of label names like ['red cube'], got {json.dumps(names)[:80]}")
    unknown = next((name for name in names if isinstance(name, str) and name not in vocabulary), None)
    if objects_json is not None and unknown is not None:
        if unknown in DEFAULT_LABELS:
            raise _EntryError(
                f"{unknown!r} is an i-CLEVR label but {objects_json} does not list it; add it to objects.json "
                f"(with the next free index, {len(vocabulary)}) or remove it from this entry"
            )
        raise _EntryError(
            f"{unknown!r} is not one of the {len(vocabulary)} labels of {objects_json} (the closest is "
            f"{vocabulary.closest(unknown)!r}); fix the entry, or add the label to objects.json if it is new"
        )
    try:
        return vocabulary.validate(names)
    except LabelError as error:
        raise _EntryError(str(error)) from None


def _read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; expected {expected}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); expected {expected}") from None

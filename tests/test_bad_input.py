"""The bad-input matrix: every mistake a careless or unlucky user can make with train_conditional.py and the scripts
ends in one line, `error: ...`, with exit status 1 and no traceback; nothing is created or changed on disk, no
temporary folder is left, and nothing planted in a checkpoint, evaluator, pipeline or export runs.

Each case runs its command in this process, as `python script.py ARGS` would (`main(argv)`; train_conditional.py's
`run(argv)` is the single-process launch without the launcher), so a case costs milliseconds, not a launch's
seconds. The tests at the end go through a real `accelerate launch`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import huggingface_hub.constants
import pytest
from accelerate.state import AcceleratorState

from conftest import REPO_ROOT, import_script
from payloads import plant
from training.evaluator import build_evaluator, save_evaluator
from training.export import export_pipeline
from training_runs import run_launch, train_conditional, train_in_process

UNWRITABLE = "/sys/kernel/iclevr-test"  # sysfs takes no new files, not even from root
SCRIPTS = ("evaluate", "push_to_hub", "push_dataset_to_hub", "make_synthetic_iclevr", "train_evaluator")
LEFTOVERS = (".tmp-*", ".*.tmp-*", "*.partial*", "*.deleting", ".*.old-*")


# ---- the shared, never-modified inputs ----------------------------------------------------------------------------


@dataclass
class Inputs:
    data: Path  # a tiny i-CLEVR folder (36 images)
    run: Path  # a finished tiny run: the pipeline and checkpoint-1, checkpoint-2 (with EMA)
    evaluator: Path
    export: Path  # the run exported by push_to_hub.py --export_dir
    datasets: Path  # folders written by save_to_disk, one per way a data set can be wrong


def _save_datasets(folder: Path, images: list[str]) -> Path:
    image = datasets.Image()
    variants = {
        "no-image-column": datasets.Dataset.from_dict({"picture": images, "labels": [["red cube"]] * 2}),
        "int-labels": datasets.Dataset.from_dict({"image": images, "labels": [[1], [2]]}).cast_column("image", image),
        "text-images": datasets.Dataset.from_dict({"image": ["a", "b"], "labels": [["red cube"]] * 2}),
        "unknown-label": datasets.Dataset.from_dict({"image": images, "labels": [["red cubes"], ["gray cube"]]})
        .cast_column("image", image),
        "no-train-split": datasets.DatasetDict({"validation": datasets.Dataset.from_dict(
            {"image": images, "labels": [["red cube"]] * 2}).cast_column("image", image)}),
    }  # fmt: skip
    for name, dataset in variants.items():
        dataset.save_to_disk(str(folder / name))
    return folder


@pytest.fixture(scope="module")
def inputs(tiny_iclevr_dir, tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("bad-input")
    run = root / "run"
    train_in_process(*_flags(TRAIN), "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(run),
                     "--use_ema", "--checkpointing_steps", "1")  # fmt: skip
    evaluator = save_evaluator(build_evaluator(), root / "evaluator" / "checkpoint.pth")
    images = [str(p) for p in sorted((tiny_iclevr_dir / "iclevr").iterdir())[:2]]
    return Inputs(tiny_iclevr_dir, run, evaluator, export_pipeline(run, root / "export"),
                  _save_datasets(root / "datasets", images))  # fmt: skip


# ---- one case: a command line, what it must say, and a clean disk afterwards ---------------------------------------


class Env:
    """A case's own folder (`tmp`), damaged copies of the shared inputs, and a marker that only a payload creates."""

    def __init__(self, tmp: Path, inputs: Inputs, monkeypatch: pytest.MonkeyPatch, hub_server):
        self.tmp, self.inputs, self.monkeypatch, self.hub_server = tmp, inputs, monkeypatch, hub_server
        self.out = tmp / "out"  # an output folder that must never appear
        self.marker = tmp / "payload-ran"

    def copy(self, source: Path, edits: dict[str, Any] | None = None, name: str | None = None) -> str:
        """A copy of `source` with `edits` ({relative path: bytes, text, JSON value, callable(path) or None to
        delete}); returns its path."""
        target = self.tmp / (name or source.name)
        if not target.exists():
            shutil.copytree(source, target)
        for relative, content in (edits or {}).items():
            path = target / relative
            if content is None:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            elif callable(content):
                content(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(target)

    def data(self, edits: dict[str, Any]) -> str:
        return self.copy(self.inputs.data, edits)

    def train_json(self, mapping: Any) -> str:
        return self.copy(self.inputs.data, {"train.json": mapping})

    def run(self, edits: dict[str, Any] | None = None) -> str:
        return self.copy(self.inputs.run, edits)

    def file(self, name: str, content: Any) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(
            content if isinstance(content, str) else json.dumps(content))  # fmt: skip
        return str(path)

    def payload(self, name: str = "payload.pth") -> str:
        return str(plant(self.tmp / name, self.marker))

    def plant(self, path: Path) -> None:
        plant(path, self.marker)

    def closed_hub(self) -> None:
        """Points huggingface_hub and datasets at a loopback port where nothing listens."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
        self.monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        self.monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


TRAIN = {"--model_config_name_or_path": "tiny", "--resolution": "8", "--train_batch_size": "4",
         "--max_train_steps": "2", "--lr_warmup_steps": "0", "--validation_steps": "100",
         "--validation_inference_steps": "1", "--report_to": "none"}  # fmt: skip


def _base(script: str, env: Env) -> dict[str, Any]:
    i = env.inputs
    return {
        "train": {**TRAIN, "--train_data_dir": str(i.data), "--output_dir": str(env.out)},
        "evaluate": {"--pipeline": str(i.run), "--conditions": str(i.data / "test.json"),
                     "--evaluator_checkpoint": str(i.evaluator), "--output_dir": str(env.out), "--seeds": "0",
                     "--num_inference_steps": "1", "--batch_size": "4"},
        "push_to_hub": {"--model_dir": str(i.run), "--export_dir": str(env.out)},
        "push_dataset_to_hub": {"--train_data_dir": str(i.data), "--hub_dataset_id": f"tester/d-{uuid.uuid4().hex}"},
        "make_synthetic_iclevr": {"--output_dir": str(env.out), "--num_scenes": "1", "--num_workers": "1"},
        "train_evaluator": {"--output_path": str(env.out / "checkpoint.pth"), "--train_data_dir": str(i.data),
                            "--epochs": "1", "--batch_size": "8"},
    }[script]  # fmt: skip


def _flags(options: dict[str, Any]) -> list[str]:
    argv = []
    for flag, value in options.items():
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


@dataclass
class Case:
    script: str
    flags: Callable[[Env], dict[str, Any]]  # over the script's base flags; None removes one
    expected: str  # in the error line
    started: bool = False  # fails after the run started: progress bars and logs may come before the line


def case(id: str, script: str, flags: Callable[[Env], dict[str, Any]], expected: str, **kwargs: Any):
    return pytest.param(Case(script, flags, expected, **kwargs), id=id)


# ---- the cases ----------------------------------------------------------------------------------------------------

_two_images = {"CLEVR_train_000000_0.png": ["gray cube"], "CLEVR_train_000000_1.png": ["gray cube", "red cube"]}


def _with_labels(labels: Any) -> dict[str, Any]:
    return {"CLEVR_train_000000_0.png": labels}


def _objects(env: Env, mapping: Any) -> str:
    return env.copy(env.inputs.data, {"objects.json": mapping})


def _custom_objects_without_red_cube(env: Env) -> str:
    labels = [label for label in json.loads((env.inputs.data / "objects.json").read_text()) if label != "red cube"]
    return env.copy(env.inputs.data, {"objects.json": {label: i for i, label in enumerate(labels)},
                                      "train.json": {"CLEVR_train_000000_0.png": ["gray cube", "red cube"]}})


def _checkpoint(env: Env, edits: dict[str, Any]) -> dict[str, Any]:
    """Resume the run's checkpoint-2 (given by path), damaged by `edits` relative to it."""
    run = env.run({f"checkpoint-2/{key}": value for key, value in edits.items()})
    return {"--output_dir": run, "--resume_from_checkpoint": f"{run}/checkpoint-2", "--use_ema": True}


def _payload_in(name: str) -> Callable[[Env], dict[str, Any]]:
    return lambda env: _checkpoint(env, {name: lambda path: env.plant(path)})


def _drop_ema_key(path: Path) -> None:
    config = json.loads(path.read_text())
    del config["optimization_step"]
    path.write_text(json.dumps(config))


def _drop_ema_tensor(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    del tensors[sorted(tensors)[0]]
    save_file(tensors, path)


def _model_config(env: Env, config: Any) -> dict[str, Any]:
    return {"--model_config_name_or_path": env.file("model.json", config)}


def _exported_with_planted_code(env: Env) -> str:
    code = f"open({str(env.marker)!r}, 'w').close()\n"
    return env.copy(env.inputs.export, {"pipeline_iclevr.py": code, "unet/conditional_unet.py": code,
                                        "vocabulary.py": code})  # fmt: skip


def _pickled_unet(env: Env) -> str:
    return env.run({"unet/diffusion_pytorch_model.safetensors": None,
                    "unet/diffusion_pytorch_model.bin": lambda path: env.plant(path)})  # fmt: skip


def _index(env: Env, change: dict[str, Any]) -> str:
    index = json.loads((env.inputs.run / "model_index.json").read_text())
    return env.run({"model_index.json": {**index, **change}})


def _single_scene(env: Env) -> str:
    return env.train_json({f"CLEVR_train_000000_{i}.png": ["gray cube"] for i in range(3)})


def _reordered_objects(env: Env) -> str:
    labels = list(json.loads((env.inputs.data / "objects.json").read_text()))[::-1]
    return env.copy(env.inputs.data, {"objects.json": {label: i for i, label in enumerate(labels)}}, "validation")


def _non_empty(env: Env) -> str:
    env.file("out/keep.txt", "mine")
    return str(env.out)


def _file_at_out(env: Env) -> str:
    env.out.write_text("not a folder")
    return str(env.out)


def _closed(env: Env, flags: dict[str, Any]) -> dict[str, Any]:
    env.closed_hub()
    return flags


def _http_500(env: Env) -> dict[str, Any]:
    repo = f"tester/m-{uuid.uuid4().hex[:12]}"
    env.hub_server.fail_next("POST", f"/api/models/{repo}/commit/", status=500)
    return {"--hub_model_id": repo}


def _torch_file(env: Env, name: str, value: Any) -> str:
    import torch

    torch.save(value, env.tmp / name)
    return str(env.tmp / name)


def _payload_evaluator(env: Env) -> dict[str, Any]:
    return {"--evaluator_checkpoint": env.payload()}


T, E, P = "train", "evaluate", "push_to_hub"
CASES = [
    # -- train_conditional.py: the data folder and train.json
    case("train: --train_data_dir does not exist", T, lambda e: {"--train_data_dir": str(e.tmp / "nope")},
         "is not a folder"),
    case("train: --train_data_dir is a file", T, lambda e: {"--train_data_dir": e.file("data", "x")},
         "is not a folder"),
    case("train: no train.json", T, lambda e: {"--train_data_dir": e.data({"train.json": None})}, "has no train.json"),
    case("train: train.json is not JSON", T, lambda e: {"--train_data_dir": e.train_json("{not json")},
         "is not valid JSON"),
    case("train: train.json is binary", T, lambda e: {"--train_data_dir": e.train_json(b"\x89PNG\xff\xfe")},
         "is not valid JSON"),
    case("train: train.json is a list", T, lambda e: {"--train_data_dir": e.train_json([["red cube"]])},
         "must map image names to label lists"),
    case("train: train.json is empty", T, lambda e: {"--train_data_dir": e.train_json({})}, "an empty mapping"),
    case("train: a label list is a string", T, lambda e: {"--train_data_dir": e.train_json(_with_labels("red cube"))},
         "expected a list of label names"),
    case("train: a misspelt label", T, lambda e: {"--train_data_dir": e.train_json(_with_labels(["red cubes"]))},
         "did you mean 'red cube'"),
    case("train: four objects", T, lambda e: {"--train_data_dir": e.train_json(
        _with_labels(["red cube", "gray cube", "blue cube", "green cube"]))}, "at most 3 objects"),
    case("train: a repeated label", T, lambda e: {"--train_data_dir": e.train_json(_with_labels(["red cube"] * 2))},
         "appears 2 times"),
    case("train: an empty label list", T, lambda e: {"--train_data_dir": e.train_json(_with_labels([]))},
         "a label list is empty"),
    case("train: a label that is a number", T, lambda e: {"--train_data_dir": e.train_json(_with_labels([3]))},
         "is not a label"),
    case("train: no image folder", T, lambda e: {"--train_data_dir": e.data({"iclevr": None})}, "no image folder"),
    case("train: one image missing", T, lambda e: {"--train_data_dir": e.data(
        {"iclevr/CLEVR_train_000001_2.png": None})}, "are missing from"),
    case("train: train.json lists an image that is not there", T, lambda e: {"--train_data_dir": e.train_json(
        {**_two_images, "CLEVR_train_999999_0.png": ["red cube"]})}, "'CLEVR_train_999999_0.png'"),
    case("train: a corrupt image", T, lambda e: {"--train_data_dir": e.data(
        {"iclevr/CLEVR_train_000001_2.png": b"garbage"})}, "is not a readable image", started=True),
    case("train: a truncated image", T, lambda e: {"--train_data_dir": e.data(
        {"iclevr/CLEVR_train_000002_0.png": truncate})}, "is not a readable image", started=True),
    case("train: an empty image file", T, lambda e: {"--train_data_dir": e.data(
        {"iclevr/CLEVR_train_000003_1.png": b""})}, "is not a readable image", started=True),
    # -- objects.json
    case("train: objects.json is not JSON", T, lambda e: {"--train_data_dir": _objects(e, "{oops")},
         "is not valid JSON"),
    case("train: objects.json is a list", T, lambda e: {"--train_data_dir": _objects(e, ["red cube"])},
         "must map label names to integer indices"),
    case("train: objects.json indices are text", T, lambda e: {"--train_data_dir": _objects(e, {"red cube": "0"})},
         "must map label names to integer indices"),
    case("train: objects.json skips an index", T, lambda e: {"--train_data_dir": _objects(
        e, {"gray cube": 0, "red cube": 2})}, "indices must be 0..1"),
    case("train: objects.json repeats an index", T, lambda e: {"--train_data_dir": _objects(
        e, {"gray cube": 0, "red cube": 0})}, "indices must be 0..1"),
    case("train: a label missing from a custom objects.json", T, lambda e: {
        "--train_data_dir": _custom_objects_without_red_cube(e)}, "objects.json does not list it"),
    # -- the model preset or config file, the resolution
    case("train: an unknown preset", T, lambda e: {"--model_config_name_or_path": "tinyy"}, "did you mean 'tiny'"),
    case("train: a config file that is not JSON", T, lambda e: _model_config(e, "{"), "is not valid JSON"),
    case("train: a config file with an unknown key", T, lambda e: _model_config(e, {"block_out_chanels": [32]}),
         "did you mean 'block_out_channels'"),
    case("train: a config file of another class", T, lambda e: _model_config(e, {"_class_name": "UNet2DModel"}),
         "configures a UNet2DModel"),
    case("train: a config value of the wrong kind", T, lambda e: _model_config(e, {"block_out_channels": "wide"}),
         "does not build a ConditionalUNet2DModel"),
    case("train: a resolution the model cannot halve", T, lambda e: _model_config(
        e, {"block_out_channels": [32] * 5, "down_block_types": ["DownBlock2D"] * 5,
            "up_block_types": ["UpBlock2D"] * 5, "norm_num_groups": 8}), "must be a multiple of 16"),
    case("train: --resolution 30", T, lambda e: {"--resolution": "30"}, "--resolution must be a multiple of 8"),
    case("train: --resolution 1024", T, lambda e: {"--resolution": "1024"}, "larger than the i-CLEVR images"),
    case("train: a model whose checkpoint cannot fit on the disk", T, lambda e: _model_config(
        e, {"block_out_channels": [2**17, 2**17], "down_block_types": ["DownBlock2D"] * 2,
            "up_block_types": ["UpBlock2D"] * 2, "mid_block_attention": False}), "free some space"),
    # -- --dataset_name and its columns
    case("train: a data set that exists nowhere", T, lambda e: {"--train_data_dir": None,
                                                               "--dataset_name": "tester/no-such-data"},
         "neither a folder written by save_to_disk", started=True),
    case("train: an i-CLEVR folder given as --dataset_name", T, lambda e: {
        "--train_data_dir": None, "--dataset_name": str(e.inputs.data)}, "pass it as train_data_dir"),
    case("train: a data set without the image column", T, lambda e: {
        "--train_data_dir": None, "--dataset_name": str(e.inputs.datasets / "no-image-column")},
         "has no column 'image'"),
    case("train: --image_column misspelt", T, lambda e: {
        "--train_data_dir": None, "--dataset_name": str(e.inputs.datasets / "no-image-column"),
        "--image_column": "pictures"}, "did you mean 'picture'"),
    case("train: labels that are numbers", T, lambda e: {
        "--train_data_dir": None, "--dataset_name": str(e.inputs.datasets / "int-labels")},
         "label_column must hold one list"),
    case("train: an image column of text", T, lambda e: {
        "--train_data_dir": None, "--dataset_name": str(e.inputs.datasets / "text-images")}, "not images"),
    case("train: a data set with an unknown label", T, lambda e: {
        "--train_data_dir": None, "--dataset_name": str(e.inputs.datasets / "unknown-label")}, "row 0 of column"),
    case("train: a data set without a train split", T, lambda e: {
        "--train_data_dir": None, "--dataset_name": str(e.inputs.datasets / "no-train-split")},
         "has no 'train' split"),
    case("train: both --train_data_dir and --dataset_name", T, lambda e: {"--dataset_name": "tester/x"},
         "give either --train_data_dir or --dataset_name"),
    # -- --resume_from_checkpoint
    case("train: resume from a folder that does not exist", T, lambda e: {
        "--resume_from_checkpoint": str(e.tmp / "checkpoint-9")}, "no such folder"),
    case("train: resume from a file", T, lambda e: {"--resume_from_checkpoint": e.file("checkpoint-9", "x")},
         "no such folder"),
    case("train: resume from a folder that is not a checkpoint", T, lambda e: {
        "--resume_from_checkpoint": e.run(), "--use_ema": True}, "is not a checkpoint folder"),
    case("train: a truncated model.safetensors", T, lambda e: _checkpoint(e, {"model.safetensors": truncate}),
         "model.safetensors cannot be read"),
    case("train: a truncated optimizer.bin", T, lambda e: _checkpoint(e, {"optimizer.bin": truncate}),
         "optimizer.bin cannot be read safely"),
    case("train: an empty scheduler.bin", T, lambda e: _checkpoint(e, {"scheduler.bin": b""}),
         "scheduler.bin cannot be read safely"),
    case("train: no random states", T, lambda e: _checkpoint(e, {"random_states_0.pkl": None}),
         "has no random_states_0.pkl"),
    case("train: no checkpoint.json", T, lambda e: _checkpoint(e, {"checkpoint.json": None}),
         "has no checkpoint.json"),
    case("train: checkpoint.json is not JSON", T, lambda e: _checkpoint(e, {"checkpoint.json": "{"}),
         "is not valid JSON"),
    case("train: an EMA config without its step", T, lambda e: _checkpoint(e, {"unet_ema/config.json":
                                                                                _drop_ema_key}),
         "lack a valid 'optimization_step'"),
    case("train: no EMA weights", T, lambda e: _checkpoint(e, {"unet_ema/diffusion_pytorch_model.safetensors": None}),
         "is incomplete: no diffusion_pytorch_model.safetensors"),
    case("train: EMA weights missing a tensor", T, lambda e: _checkpoint(
        e, {"unet_ema/diffusion_pytorch_model.safetensors": _drop_ema_tensor}), "do not fit the model: 1 missing"),
    case("train: a checkpoint of the tiny preset resumed with cpu", T, lambda e: {
        **_checkpoint(e, {}), "--model_config_name_or_path": "cpu"}, "this run trains the cpu model"),
    case("train: a checkpoint of resolution 8 resumed at 16", T, lambda e: {**_checkpoint(e, {}), "--resolution": "16"},
         "written for the tiny model at resolution 8"),
    case("train: a checkpoint with EMA resumed without", T, lambda e: {**_checkpoint(e, {}), "--use_ema": False},
         "without EMA"),
    case("train: latest when no checkpoint reads back", T, lambda e: {
        "--output_dir": e.run({"checkpoint-1/optimizer.bin": truncate, "checkpoint-2/model.safetensors": truncate}),
        "--resume_from_checkpoint": "latest", "--use_ema": True}, "can be resumed from"),
    case("train: latest is another run's", T, lambda e: {"--output_dir": e.run(), "--resume_from_checkpoint": "latest",
                                                         "--use_ema": True, "--resolution": "16"}, "was written for"),
    case("train: a payload in optimizer.bin", T, _payload_in("optimizer.bin"), "optimizer.bin cannot be read safely"),
    case("train: a payload in scheduler.bin", T, _payload_in("scheduler.bin"), "scheduler.bin cannot be read safely"),
    case("train: a payload in random_states_0.pkl", T, _payload_in("random_states_0.pkl"), "cannot be read safely"),
    case("train: a payload as custom_checkpoint_0.pkl", T, _payload_in("custom_checkpoint_0.pkl"),
         "never writes and never loads"),
    case("train: a payload as scaler.pt", T, _payload_in("scaler.pt"), "scaler.pt cannot be read safely"),
    case("train: a payload as sampler.bin", T, _payload_in("sampler.bin"), "sampler.bin cannot be read safely"),
    case("train: a payload in model.safetensors", T, _payload_in("model.safetensors"),
         "model.safetensors cannot be read"),
    case("train: a payload in the EMA weights", T, _payload_in("unet_ema/diffusion_pytorch_model.safetensors"),
         "EMA weights"),
    case("train: a payload in the EMA config", T, _payload_in("unet_ema/config.json"), "are not valid JSON"),
    case("train: a payload in checkpoint.json", T, _payload_in("checkpoint.json"), "is not valid JSON"),
    # -- --output_dir
    case("train: --output_dir is a file", T, lambda e: {"--output_dir": _file_at_out(e)}, "is a file, not a folder"),
    case("train: --output_dir inside a file", T, lambda e: {"--output_dir": f"{_file_at_out(e)}/run"},
         "is a file, not a folder"),
    case("train: --output_dir cannot be written", T, lambda e: {"--output_dir": UNWRITABLE}, "cannot write in"),
    # -- --evaluator_checkpoint and --evaluation_conditions
    case("train: the evaluator does not exist", T, lambda e: {"--evaluator_checkpoint": str(e.tmp / "none.pth")},
         "does not exist"),
    case("train: the evaluator is a folder", T, lambda e: {"--evaluator_checkpoint": str(e.tmp)}, "does not exist"),
    case("train: a payload as the evaluator", T, _payload_evaluator, "cannot be read safely"),
    case("train: a truncated evaluator", T, lambda e: {"--evaluator_checkpoint": e.copy(
        e.inputs.evaluator.parent, {"checkpoint.pth": truncate}) + "/checkpoint.pth"}, "cannot be read safely"),
    case("train: an empty evaluator file", T, lambda e: {"--evaluator_checkpoint": e.file("empty.pth", b"")},
         "cannot be read safely"),
    case("train: an evaluator file of another layout", T, lambda e: {"--evaluator_checkpoint": _torch_file(
        e, "list.pth", [1, 2])}, "not a dict with a 'model' entry"),
    case("train: a condition file that does not exist", T, lambda e: {
        "--evaluator_checkpoint": str(e.inputs.evaluator), "--evaluation_conditions": [str(e.tmp / "t.json")]},
         "does not exist"),
    case("train: a condition file with an unknown label", T, lambda e: {
        "--evaluator_checkpoint": str(e.inputs.evaluator),
        "--evaluation_conditions": [e.file("t.json", [["red sphre"]])]}, "did you mean 'red sphere'"),
    # -- the Hub flags
    case("train: --push_to_hub without an id", T, lambda e: {"--push_to_hub": True}, "needs --hub_model_id"),
    case("train: a Hub id with a space", T, lambda e: {"--push_to_hub": True, "--hub_model_id": "me/bad name"},
         "is not a Hub repo id"),
    case("train: a Hub id without namespace", T, lambda e: {"--push_to_hub": True, "--hub_model_id": "model"},
         "has no namespace"),
    case("train: --hub_model_id without --push_to_hub", T, lambda e: {"--hub_model_id": "me/model"},
         "take effect with --push_to_hub"),
    # -- other flags
    case("train: a misspelt flag", T, lambda e: {"--train_batchsize": "8"}, "did you mean --train_batch_size?"),
    case("train: --train_batch_size 0", T, lambda e: {"--train_batch_size": "0"}, "must be a positive integer"),
    case("train: --label_dropout 1.5", T, lambda e: {"--label_dropout": "1.5"}, "must be in [0, 1)"),
    case("train: --mixed_precision fp8", T, lambda e: {"--mixed_precision": "fp8"}, "invalid choice: 'fp8'"),
    case("train: --lr_scheduler unknown", T, lambda e: {"--lr_scheduler": "cosin"}, "invalid choice: 'cosin'"),
    case("train: --learning_rate text", T, lambda e: {"--learning_rate": "fast"}, "invalid positive_float value"),
    case("train: --learning_rate negative", T, lambda e: {"--learning_rate": "-0.001"}, "must be a positive number"),
    case("train: --seed negative", T, lambda e: {"--seed": "-1"}, "must be 0 or more"),
    case("train: --dataloader_num_workers negative", T, lambda e: {"--dataloader_num_workers": "-1"},
         "must be 0 or more"),
    case("train: --lr_warmup_steps negative", T, lambda e: {"--lr_warmup_steps": "-5"}, "must be 0 or more"),
    case("train: --adam_beta1 above 1", T, lambda e: {"--adam_beta1": "1.5"}, "must be in [0, 1)"),
    case("train: --checkpoints_total_limit 0", T, lambda e: {"--checkpoints_total_limit": "0"},
         "must be a positive integer"),
    case("train: --report_to unknown", T, lambda e: {"--report_to": "mlflow"}, "invalid choice: 'mlflow'"),
    case("train: --tracker_run_name without W&B", T, lambda e: {"--tracker_run_name": "x"}, "W&B only"),
    case("train: conditions without an evaluator", T, lambda e: {"--evaluation_conditions": ["t.json"]},
         "needs --evaluator_checkpoint"),
    case("train: seeds without an evaluator", T, lambda e: {"--evaluation_seeds": ["0", "1"]},
         "needs --evaluator_checkpoint"),
    case("train: --evaluation_seeds negative", T, lambda e: {"--evaluator_checkpoint": str(e.inputs.evaluator),
                                                              "--evaluation_seeds": ["-1"]}, "must be 0 or more"),
    case("train: --cpu_threads 0", T, lambda e: {"--cpu_threads": "0"}, "must be 'auto' or a positive number"),
    case("train: --cpu_threads text", T, lambda e: {"--cpu_threads": "all"}, "must be 'auto' or a positive number"),
    # -- the objective's flags
    case("train: --prediction_type unknown", T, lambda e: {"--prediction_type": "v"}, "invalid choice: 'v'"),
    case("train: --snr_gamma 0", T, lambda e: {"--snr_gamma": "0"}, "must be a positive number or 'none'"),
    case("train: --snr_gamma nan", T, lambda e: {"--snr_gamma": "nan"}, "must be a positive number or 'none'"),
    case("train: --timestep_bias_strategy unknown", T, lambda e: {"--timestep_bias_strategy": "late"},
         "invalid choice: 'late'"),
    case("train: --timestep_bias_multiplier 0", T, lambda e: {"--timestep_bias_multiplier": "0"},
         "must be a positive number"),
    case("train: --timestep_bias_multiplier inf", T, lambda e: {"--timestep_bias_multiplier": "inf"},
         "give a finite number"),
    case("train: --timestep_bias_portion 1", T, lambda e: {"--timestep_bias_portion": "1"},
         "must be between 0 and 1"),
    case("train: a timestep bias range beyond the schedule", T, lambda e: {
        "--timestep_bias_strategy": "range", "--timestep_bias_begin": "900", "--timestep_bias_end": "2000"},
         "0 <= begin < end <= --num_train_timesteps"),
    case("train: a v_prediction checkpoint resumed with epsilon", T, lambda e: {
        **_checkpoint(e, {}), "--prediction_type": "epsilon"}, "predicting v_prediction"),
    # -- scripts/evaluate.py
    case("evaluate: the pipeline folder does not exist", E, lambda e: {"--pipeline": str(e.tmp / "run")},
         "no pipeline there"),
    case("evaluate: a checkpoint given as the pipeline", E, lambda e: {"--pipeline": f"{e.inputs.run}/checkpoint-2"},
         "no pipeline there"),
    case("evaluate: model_index.json is not JSON", E, lambda e: {"--pipeline": e.run({"model_index.json": "{"})},
         "is not valid JSON"),
    case("evaluate: a pipeline of another class", E, lambda e: {
        "--pipeline": _index(e, {"_class_name": "DDPMPipeline"})}, "does not describe an ICLEVRPipeline"),
    case("evaluate: a scheduler that is not one", E, lambda e: {"--pipeline": _index(
        e, {"scheduler": ["diffusers", "UNet2DModel"]})}, "is not a diffusers scheduler"),
    case("evaluate: pickled unet weights (a payload)", E, lambda e: {"--pipeline": _pickled_unet(e)},
         "cannot load the pipeline"),
    case("evaluate: truncated unet weights", E, lambda e: {"--pipeline": e.run(
        {"unet/diffusion_pytorch_model.safetensors": truncate})}, "cannot load the pipeline"),
    case("evaluate: an export with planted code, then a bad condition", E, lambda e: {
        "--pipeline": _exported_with_planted_code(e), "--conditions": [e.file("c.json", [["red sphre"]])]},
         "did you mean 'red sphere'"),
    case("evaluate: a Hub id that does not exist", E, lambda e: {"--pipeline": "tester/no-such-pipeline"},
         "cannot load the pipeline 'tester/no-such-pipeline'"),
    case("evaluate: a Hub that cannot be reached", E, lambda e: _closed(e, {"--pipeline": "tester/pipeline"}),
         "cannot load the pipeline 'tester/pipeline'"),
    case("evaluate: a condition file that does not exist", E, lambda e: {"--conditions": str(e.tmp / "c.json")},
         "does not exist"),
    case("evaluate: a condition file that is not JSON", E, lambda e: {"--conditions": e.file("c.json", "[[")},
         "is not valid JSON"),
    case("evaluate: an empty condition file", E, lambda e: {"--conditions": e.file("c.json", [])},
         "must hold a non-empty JSON list"),
    case("evaluate: two condition files of one name", E, lambda e: {"--conditions": [
        e.file("a/test.json", [["red cube"]]), e.file("b/test.json", [["red cube"]])]}, "rename one"),
    case("evaluate: the evaluator does not exist", E, lambda e: {"--evaluator_checkpoint": str(e.tmp / "x.pth")},
         "does not exist"),
    case("evaluate: a payload as the evaluator", E, _payload_evaluator, "cannot be read safely"),
    case("evaluate: an unknown scheduler", E, lambda e: {"--scheduler": "dpm"}, "did you mean"),
    case("evaluate: an unknown sampler setting", E, lambda e: {"--scheduler": "ddim,etta=1"}, "did you mean 'eta'"),
    case("evaluate: a sampler setting without a value", E, lambda e: {"--scheduler": "ddim,eta"},
         "must look like key=value"),
    case("evaluate: a sampler setting's bad value", E, lambda e: {"--scheduler": "dpmsolver++,solver_order=many"},
         "cannot sample"),
    case("evaluate: a sampler setting of another sampler", E, lambda e: {"--scheduler": "unipc,eta=1"},
         "applies to DDIMScheduler only"),
    case("evaluate: --seeds negative", E, lambda e: {"--seeds": "-1"}, "must be 0 or more"),
    case("evaluate: --cpu_threads 0", E, lambda e: {"--cpu_threads": "0"}, "must be 'auto' or a positive number"),
    case("evaluate: an unknown device", E, lambda e: {"--device": "tpu"}, "is not supported"),
    case("evaluate: --output_dir is a file", E, lambda e: {"--output_dir": _file_at_out(e)}, "is a file, not a folder"),
    case("evaluate: --output_dir cannot be written", E, lambda e: {"--output_dir": UNWRITABLE}, "cannot write in"),
    case("evaluate: --num_inference_steps 0", E, lambda e: {"--num_inference_steps": "0"}, "must be a positive"),
    case("evaluate: --seeds missing its values", E, lambda e: {"--seeds": []}, "expected at least one argument"),
    # -- scripts/push_to_hub.py
    case("push: the model folder does not exist", P, lambda e: {"--model_dir": str(e.tmp / "run")},
         "is not a folder"),
    case("push: a checkpoint given as the model", P, lambda e: {"--model_dir": f"{e.inputs.run}/checkpoint-2"},
         "has no model_index.json"),
    case("push: model_index.json is not JSON", P, lambda e: {"--model_dir": e.run({"model_index.json": "{"})},
         "is not valid JSON"),
    case("push: a pipeline of another class", P, lambda e: {"--model_dir": _index(e, {"_class_name": "DDPMPipeline"})},
         "only ICLEVRPipeline folders can be exported"),
    case("push: pickled weights, over an earlier export", P, lambda e: {
        "--model_dir": _pickled_unet(e), "--export_dir": e.copy(e.inputs.export)}, "holds pickled weights"),
    case("push: an export folder that holds something else", P, lambda e: {"--export_dir": _non_empty(e)},
         "is not an earlier export"),
    case("push: the export folder is the model folder", P, lambda e: {"--export_dir": str(e.inputs.run)},
         "is model_dir itself"),
    case("push: the export folder cannot be written", P, lambda e: {"--export_dir": f"{UNWRITABLE}/export"},
         "cannot write in"),
    case("push: the evaluation report does not exist", P, lambda e: {"--evaluation_report": str(e.tmp / "r.json")},
         "does not exist"),
    case("push: the evaluation report is not JSON", P, lambda e: {"--evaluation_report": e.file("r.json", "{")},
         "is not valid JSON"),
    case("push: neither a Hub id nor an export folder", P, lambda e: {"--export_dir": None},
         "give --hub_model_id to push, or --export_dir"),
    case("push: a branch without a Hub id", P, lambda e: {"--hub_revision": "v1"}, "need --hub_model_id"),
    case("push: a Hub id with a space", P, lambda e: {"--hub_model_id": "me/bad name"}, "is not a Hub repo id"),
    case("push: a Hub that cannot be reached", P, lambda e: _closed(e, {"--hub_model_id": "tester/m",
                                                                         "--export_dir": None}),
         f"the export is intact in {tempfile.gettempdir()}"),
    case("push: a Hub that cannot be reached, with --export_dir", P, lambda e: _closed(
        e, {"--hub_model_id": "tester/m", "--export_dir": str(e.tmp / "export")}), "the export is intact in"),
    case("push: the Hub answers 500", P, lambda e: {**_http_500(e), "--export_dir": None}, "HTTP 500",
         started=True),  # after the upload's progress bars
    # -- scripts/push_dataset_to_hub.py
    case("push dataset: the folder does not exist", "push_dataset_to_hub", lambda e: {
        "--train_data_dir": str(e.tmp / "nope")}, "is not a folder"),
    case("push dataset: train.json is not JSON", "push_dataset_to_hub", lambda e: {
        "--train_data_dir": e.train_json("{")}, "is not valid JSON"),
    case("push dataset: a Hub id without namespace", "push_dataset_to_hub", lambda e: {"--hub_dataset_id": "data"},
         "has no namespace"),
    case("push dataset: a Hub that cannot be reached", "push_dataset_to_hub", lambda e: _closed(e, {}),
         "ConnectError"),
    # -- scripts/make_synthetic_iclevr.py
    case("render: --output_dir is not empty", "make_synthetic_iclevr", lambda e: {"--output_dir": _non_empty(e)},
         "is not empty"),
    case("render: --output_dir is a file", "make_synthetic_iclevr", lambda e: {"--output_dir": _file_at_out(e)},
         "is a file"),
    case("render: --num_scenes 0", "make_synthetic_iclevr", lambda e: {"--num_scenes": "0"}, "must be >= 1"),
    case("render: --objects_per_scene 6", "make_synthetic_iclevr", lambda e: {"--objects_per_scene": "6"},
         "invalid choice: 6"),
    case("render: --output_dir cannot be written", "make_synthetic_iclevr", lambda e: {"--output_dir": UNWRITABLE},
         "cannot write in"),
    case("render: --preview cannot be written", "make_synthetic_iclevr", lambda e: {
        "--preview": f"{UNWRITABLE}/grid.png"}, "cannot write in"),
    # -- scripts/train_evaluator.py
    case("evaluator: --output_path is a folder", "train_evaluator", lambda e: {"--output_path": str(e.tmp)},
         "is a folder"),
    case("evaluator: --output_path cannot be written", "train_evaluator", lambda e: {
        "--output_path": f"{UNWRITABLE}/checkpoint.pth"}, "cannot write in"),
    case("evaluator: the data folder does not exist", "train_evaluator", lambda e: {
        "--train_data_dir": str(e.tmp / "nope")}, "is not a folder"),
    case("evaluator: two data sources", "train_evaluator", lambda e: {"--dataset_name": "tester/x"}, "not both"),
    case("evaluator: --validation_fraction 1.5", "train_evaluator", lambda e: {"--validation_fraction": "1.5"},
         "must be between 0 and 1"),
    case("evaluator: an unknown device", "train_evaluator", lambda e: {"--device": "gpu0"}, "is not a device"),
    case("evaluator: --low_resolution_fraction 2", "train_evaluator", lambda e: {"--low_resolution_fraction": "2"},
         "must be between 0 and 1"),
    case("evaluator: --synthetic_seed negative", "train_evaluator", lambda e: {"--synthetic_seed": "-1"},
         "must be 0 or more"),
    case("evaluator: --cpu_threads 0", "train_evaluator", lambda e: {"--cpu_threads": "0"},
         "must be 'auto' or a positive number"),
    case("evaluator: validation labels in another order", "train_evaluator", lambda e: {
        "--validation_data_dir": _reordered_objects(e)}, "orders its 24 labels differently", started=True),
    case("evaluator: a single scene", "train_evaluator", lambda e: {"--train_data_dir": _single_scene(e)},
         "holds a single scene", started=True),
]


# ---- running a case -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def commands() -> dict[str, Callable[[list[str]], Any]]:
    return {"train": train_conditional().run, **{name: import_script(name).main for name in SCRIPTS}}


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and modification time."""
    return {str(p): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}  # fmt: skip


def _temporary_exports() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("iclevr-export-*")}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_ends_in_one_error_line_and_leaves_nothing_behind(case, inputs, commands, tmp_path, monkeypatch,
                                                                   hub_server, capsys):  # fmt: skip
    env = Env(tmp_path, inputs, monkeypatch, hub_server)
    argv = _flags({**_base(case.script, env), **case.flags(env)})
    before, shared, exports = _state(tmp_path), [_state(p) for p in (inputs.data, inputs.run)], _temporary_exports()
    code, message, handlers = 0, None, list(logging.root.handlers)
    try:
        commands[case.script](argv)
    except SystemExit as exit_info:  # as the interpreter would: a message goes to stderr, status 1
        code, message = (1, exit_info.code) if isinstance(exit_info.code, str) else (exit_info.code, None)
    finally:  # what a process would drop when it ends: Accelerate's state, a log handler bound to this capture
        AcceleratorState._reset_state(reset_partial_state=True)
        logging.root.handlers[:] = handlers
    err = capsys.readouterr().err + (f"{message}\n" if message else "")

    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1, err[-2000:]
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 or case.started, err[-2000:]
    assert case.expected in errors[0], errors[0]
    assert not env.marker.exists(), "a planted payload ran"
    after = _state(tmp_path)
    changed = [path for path in after.keys() | before.keys() if after.get(path) != before.get(path)]
    # Only a complete export that the message names (a failed push keeps it) may have been written.
    kept = {str(p) for path in changed for p in Path(path).parents if f"intact in {p}:" in errors[0]}
    assert all(any(path.startswith(k) for k in kept) for path in changed), f"files created or changed: {changed}"
    assert all((Path(k) / "model_index.json").is_file() for k in kept)
    assert [_state(p) for p in (inputs.data, inputs.run)] == shared
    cache = Path(os.environ["ICLEVR_CACHE"])
    assert not [p for pattern in LEFTOVERS for p in cache.rglob(pattern)], "a temporary folder was left"
    for kept in _temporary_exports() - exports:  # only one that the message names, and then it is complete
        assert kept in errors[0] and (Path(tempfile.gettempdir()) / kept / "pipeline" / "model_index.json").is_file()
        shutil.rmtree(Path(tempfile.gettempdir()) / kept)


def test_the_matrix_covers_every_command_and_at_least_the_probed_76_kinds():
    scripts = {param.values[0].script for param in CASES}
    assert scripts == {"train", *SCRIPTS} and len(CASES) >= 76


def test_an_export_ships_this_checkouts_code_never_the_folders(inputs, tmp_path):
    model_dir = Path(shutil.copytree(inputs.run, tmp_path / "run"))
    (model_dir / "unet" / "planted.py").write_text("raise SystemExit('planted')\n")

    export = export_pipeline(model_dir, tmp_path / "export")

    assert not (export / "unet" / "planted.py").exists()
    assert (export / "unet" / "conditional_unet.py").read_bytes() == (
        REPO_ROOT / "pipeline" / "conditional_unet.py").read_bytes()


# ---- through a real `accelerate launch` ---------------------------------------------------------------------------


def _launch(*args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", *(["--quiet"] if quiet else []),
               "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no",
               str(REPO_ROOT / "train_conditional.py"), *_flags(TRAIN), *args]  # fmt: skip
    return run_launch(command)


def test_accelerate_launch_quiet_prints_exactly_the_one_line(inputs, tmp_path):
    data = shutil.copytree(inputs.data, tmp_path / "data")
    (data / "train.json").unlink()

    result = _launch("--train_data_dir", str(data), "--output_dir", str(tmp_path / "out"))

    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {data} has no train.json; an i-CLEVR folder holds train.json (image " \
        "name -> label list), objects.json and the images in iclevr/ or beside train.json"
    assert not (tmp_path / "out").exists()


def test_accelerate_launch_with_a_planted_checkpoint_prints_one_line_and_runs_nothing(inputs, tmp_path):
    run, marker = shutil.copytree(inputs.run, tmp_path / "run"), tmp_path / "ran"
    plant(run / "checkpoint-2" / "optimizer.bin", marker)

    result = _launch("--train_data_dir", str(inputs.data), "--output_dir", str(run), "--use_ema",
                     "--resume_from_checkpoint", str(run / "checkpoint-2"))  # fmt: skip

    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 1 and line.startswith("error: ")
    assert "checkpoint-2/optimizer.bin cannot be read safely" in line and not marker.exists()


def test_without_quiet_accelerate_adds_its_own_traceback_after_the_line(inputs, tmp_path):
    result = _launch("--train_data_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out"), quiet=False)

    first, *wrapper = result.stderr.strip().splitlines()
    assert result.returncode == 1 and first.startswith("error: train_data_dir")
    # What accelerate adds (its own traceback, since 1.16 after a copy of the child's stderr) ends in its error.
    assert "Traceback (most recent call last):" in wrapper and "CalledProcessError" in wrapper[-1]
    assert "accelerate" in "".join(wrapper) and "train_conditional.py\", line" not in "".join(wrapper)

"""W&B tracking in train_conditional.py, read back from the offline run files that `wandb sync` would upload:
the config, per-step scalars, captioned validation grids, evaluation scores, the denoising figure, the pipeline
artifact, the run name, and a resumed training continuing the same W&B run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image
from wandb.proto import wandb_internal_pb2

from training.args import parse_args
from training.evaluator import build_evaluator, save_evaluator
from training.sampling import VALIDATION_LABELS
from training.tracking import logged_scalars
from training_runs import launch_training

LEARNING_RATE = 3e-4
CONDITIONS = [["red cube"], ["blue sphere", "gray cylinder"], ["cyan cube", "red sphere", "yellow cylinder"]]
TINY_RUN = [
    "--model_config_name_or_path", "tiny",
    "--resolution", "32",
    "--train_batch_size", "4",
    "--max_train_steps", "4",
    "--learning_rate", str(LEARNING_RATE),
    "--lr_warmup_steps", "1",
    "--checkpointing_steps", "2",
    "--validation_steps", "2",
    "--validation_inference_steps", "2",
    "--use_ema",
]  # fmt: skip
CAPTIONS = [", ".join(names) for names in VALIDATION_LABELS]



# ------------------------------------------------------------------------------ reading an offline W&B run

# A .wandb file is a 7-byte header (":W&B", version, magic) and then LevelDB-log framing: 32 KiB blocks of chunks,
# each with a 7-byte header (CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last), whose joined
# payloads are serialised wandb `Record` protobufs.
_BLOCK, _CHUNK_HEADER = 32 * 1024, 7


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, payload, position = [], b"", 7
    while position + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # a block's tail too short for a header is zero padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + _CHUNK_HEADER])
        chunk = data[position + _CHUNK_HEADER : position + _CHUNK_HEADER + length]
        position += _CHUNK_HEADER + length
        if kind == 0:
            continue
        payload = chunk if kind in (1, 2) else payload + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
    return records


@dataclass
class OfflineRun:
    folder: Path
    run: wandb_internal_pb2.RunRecord = None
    config: dict = field(default_factory=dict)
    history: dict[int, dict] = field(default_factory=dict)
    artifacts: list[wandb_internal_pb2.ArtifactRecord] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> "OfflineRun":
        (log,) = folder.glob("run-*.wandb")
        run = cls(folder)
        for record in read_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.run = record.run
            elif kind == "config":
                run.config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                items = record.history.item
                row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in items}
                run.history[record.history.step.num] = row
            elif kind == "artifact":
                run.artifacts.append(record.artifact)
        return run

    def values(self, key: str) -> dict[int, object]:
        return {step: row[key] for step, row in sorted(self.history.items()) if key in row}

    def images(self, key: str, step: int) -> list[tuple[Path, str]]:
        """(media file, caption) of the images logged under `key` at `step`."""
        row = self.history[step]
        files = row[f"{key}/filenames"]
        return [(self.folder / "files" / name, caption) for name, caption in zip(files, row[f"{key}/captions"])]


def offline_runs(output_dir: Path) -> list[OfflineRun]:
    return [OfflineRun.read(folder) for folder in sorted((output_dir / "logs" / "wandb").glob("offline-run-*"))]


# ----------------------------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def evaluation_files(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("wandb-evaluation")
    save_evaluator(build_evaluator(), root / "evaluator.pth")
    (root / "cond.json").write_text(json.dumps(CONDITIONS))
    return ["--evaluator_checkpoint", str(root / "evaluator.pth"), "--evaluation_conditions", str(root / "cond.json")]


@pytest.fixture(scope="module")
def first_run(tiny_iclevr_dir, evaluation_files, tmp_path_factory) -> Path:
    """W&B and TensorBoard, evaluation at every validation, the pipeline artifact, a run name."""
    output_dir = tmp_path_factory.mktemp("wandb") / "run"
    launch_training(*TINY_RUN, *evaluation_files, "--train_data_dir", str(tiny_iclevr_dir),
                    "--output_dir", str(output_dir), "--report_to", "all", "--tracker_run_name", "tiny-wandb-run",
                    "--log_pipeline_artifact")
    return output_dir


@pytest.fixture(scope="module")
def wandb_run(first_run) -> OfflineRun:
    (run,) = offline_runs(first_run)
    return run


@pytest.fixture(scope="module")
def resumed_run(first_run, tiny_iclevr_dir, tmp_path_factory) -> Path:
    """Training resumed from the first run's checkpoint-2 into another folder."""
    output_dir = tmp_path_factory.mktemp("wandb-resumed") / "run"
    launch_training(*TINY_RUN, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
                    "--report_to", "wandb", "--validation_steps", "100",
                    "--resume_from_checkpoint", str(first_run / "checkpoint-2"))
    return output_dir



# ---------------------------------------------------------------------------------------------------- tests


def test_config_holds_the_flags_and_the_settings_resolved_at_launch(wandb_run):
    assert wandb_run.config["learning_rate"] == LEARNING_RATE
    assert wandb_run.config["resolution"] == 32
    assert wandb_run.config["use_ema"] is True
    assert wandb_run.config["num_processes"] == 1
    assert wandb_run.config["images_per_update"] == 4


def test_loss_lr_grad_norm_throughput_and_epoch_arrive_every_step_with_the_values_tensorboard_got(
    wandb_run, first_run
):
    for key in ("loss", "lr", "grad_norm", "images_per_second", "epoch"):
        logged = wandb_run.values(key)
        assert sorted(logged) == [1, 2, 3, 4], key
        # TensorBoard keeps float32; W&B the exact float.
        assert logged == pytest.approx(logged_scalars(first_run, key), rel=1e-6), key
    assert wandb_run.values("lr")[1] == pytest.approx(LEARNING_RATE)


def test_validation_grids_arrive_as_images_captioned_with_their_label_lists(wandb_run):
    for step in (2, 4):
        images = wandb_run.images("validation", step)
        assert [caption for _, caption in images] == CAPTIONS
        assert all(Image.open(path).size == (32, 32) for path, _ in images)


def test_evaluation_accuracy_per_condition_file_arrives_at_every_validation(wandb_run, first_run):
    for key in ("evaluation/cond/accuracy", "evaluation/cond/exact_match", "evaluation/mean_accuracy"):
        assert sorted(wandb_run.values(key)) == [2, 4], key
    best = json.loads((first_run / "best" / "best.json").read_text())
    assert wandb_run.values("evaluation/cond/accuracy")[best["step"]] == pytest.approx(best["accuracy"]["cond"])


def test_the_denoising_figure_of_the_final_pipeline_is_logged_at_the_last_step_and_saved(wandb_run, first_run):
    ((path, caption),) = wandb_run.images("denoising_process", 4)
    saved = Image.open(first_run / "denoising_process.png")

    assert caption == CAPTIONS[0]
    assert Image.open(path).size == saved.size == (3 * 32, 32)  # noise, 1 step, final image


def test_the_saved_pipeline_is_logged_as_a_model_artifact_without_checkpoints(wandb_run, first_run):
    (artifact,) = wandb_run.artifacts
    entries = {entry.path: entry.digest for entry in artifact.manifest.contents}

    assert artifact.type == "model"
    assert sorted(entries) == ["model_index.json", "scheduler/scheduler_config.json", "unet/conditional_unet.py",
                               "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]  # fmt: skip
    weights = (first_run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    md5 = base64.b64encode(hashlib.md5(weights).digest()).decode()  # W&B's manifest digest
    assert entries["unet/diffusion_pytorch_model.safetensors"] == md5


def test_the_run_carries_the_tracker_run_name(wandb_run, first_run):
    assert wandb_run.run.display_name == "tiny-wandb-run"
    assert (first_run / "wandb_run_id.txt").read_text().strip() == wandb_run.run.run_id


def test_training_resumed_from_a_checkpoint_logs_its_steps_into_the_same_wandb_run(wandb_run, resumed_run):
    (resumed,) = offline_runs(resumed_run)

    assert resumed.run.run_id == wandb_run.run.run_id
    assert sorted(resumed.values("loss")) == [3, 4]
    assert resumed.values("loss") == pytest.approx({step: wandb_run.values("loss")[step] for step in (3, 4)})
    assert (resumed_run / "wandb_run_id.txt").read_text().strip() == wandb_run.run.run_id


def test_wandb_only_flags_without_wandb_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--log_pipeline_artifact", "--report_to", "tensorboard"])
    assert "--log_pipeline_artifact: W&B only; add --report_to wandb" in capsys.readouterr().err

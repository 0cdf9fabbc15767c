"""The Hub: a trained pipeline pushed as a self-describing repo and loaded by plain diffusers in other code; the data
set pushed and trained from. Everything real (huggingface_hub, diffusers, datasets, HTTP) against the loopback Hub."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from huggingface_hub import HfApi
from PIL import Image

from conftest import REPO_ROOT, import_script
from pipeline import ICLEVRPipeline, LabelVocabulary
from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS
from training.data import load_train_dataset, load_training_set
from training.export import ExportError, export_pipeline, make_self_describing
from training.hub import HubError, push_dataset_to_hub, push_pipeline_to_hub
from training.model_card import evaluation_markdown
from training.model_presets import create_model
from training.sampling import build_pipeline
from training_runs import launch_training

PIPELINE_FILES = {
    "model_index.json", "pipeline_iclevr.py", "conditional_unet.py", "vocabulary.py", "README.md", "samples.png",
    "training_args.json", "scheduler/scheduler_config.json", "unet/config.json", "unet/conditional_unet.py",
    "unet/diffusion_pytorch_model.safetensors",
    # the demo, which a Space runs: the app, the code it imports from the checkout, what the Space installs
    "scripts/demo.py", "training/__init__.py", "training/bf16_support.py", "training/cli.py", "training/errors.py",
    "training/inference.py", "training/samplers.py",
    "requirements.txt",
}
REPORT = {"test.json": {"accuracy": {"mean": 0.8125, "std": 0.0125}},
          "new_test.json": {"accuracy": {"mean": 0.75, "std": 0.02}}}

# Loads a pipeline the way other code would: plain diffusers, in a process that cannot import this repo.
LOAD_SCRIPT = """
import importlib.util, inspect, json, sys
from diffusers import DiffusionPipeline
from diffusers.utils import HF_MODULES_CACHE

source, revision = sys.argv[1], sys.argv[2] or None
importable = [name for name in ("pipeline", "training") if importlib.util.find_spec(name) is not None]
pipe = DiffusionPipeline.from_pretrained(source, trust_remote_code=True, revision=revision)
pipe.set_progress_bar_config(disable=True)
image = pipe(labels=[["red sphere"]], num_inference_steps=2).images[0]
try:
    pipe(labels=[["red cubes"]], num_inference_steps=1)
except ValueError as error:  # what code outside the repo can catch, with the class the pipeline exposes
    label_error = {"message": str(error), "is_pipe_label_error": isinstance(error, pipe.LabelError)}
print(json.dumps({"class": type(pipe).__name__, "pipeline_file": inspect.getfile(type(pipe)),
                  "unet_file": inspect.getfile(type(pipe.unet)), "modules_cache": HF_MODULES_CACHE,
                  "image_size": list(image.size), "sys_path": sys.path, "repo_importable": importable,
                  "label_error": label_error}))
"""


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _save_tiny_pipeline(folder: Path, seed: int) -> Path:
    """What a training run leaves in --output_dir: the pipeline, samples.png, training_args.json, and run clutter."""
    torch.manual_seed(seed)
    model = create_model("tiny", sample_size=32)
    build_pipeline(model, DDPMScheduler(num_train_timesteps=1000), LabelVocabulary()).save_pretrained(folder)
    Image.new("RGB", (8 * 34, 34), "white").save(folder / "samples.png")
    (folder / "training_args.json").write_text(json.dumps({"model_config_name_or_path": "tiny", "resolution": 32,
                                                           "max_train_steps": 2, "dataset_name": None}))
    for clutter in ("checkpoint-2/model.safetensors", "logs/events.out", "validation/step-000002.png"):
        (folder / clutter).parent.mkdir(parents=True, exist_ok=True)
        (folder / clutter).write_bytes(b"not for the Hub")
    return folder


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory) -> Path:
    return _save_tiny_pipeline(tmp_path_factory.mktemp("trained") / "iclevr-ddpm", seed=0)


@pytest.fixture
def model_dir(trained_dir, tmp_path) -> Path:
    """A private copy of the training output, for tests that add files to it."""
    return Path(shutil.copytree(trained_dir, tmp_path / "iclevr-ddpm"))


def _load_outside_the_repo(tmp_path: Path, source: str, revision: str | None = None, **extra_env: str) -> dict:
    script = tmp_path / "load_pipeline.py"
    script.write_text(LOAD_SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), source, revision or ""], cwd=tmp_path,
                            env={**env, **extra_env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_loaded_from_remote_code(loaded: dict) -> None:
    assert loaded["class"] == "ICLEVRPipeline"
    assert loaded["image_size"] == [32, 32]
    assert loaded["repo_importable"] == []
    assert str(REPO_ROOT) not in loaded["sys_path"]
    for code_file in (loaded["pipeline_file"], loaded["unet_file"]):
        assert Path(code_file).is_relative_to(loaded["modules_cache"])


# ---- loading in other code --------------------------------------------------------------------------------------


def test_pushed_pipeline_loads_and_generates_in_a_fresh_process_outside_the_repo(trained_dir, hub_repo_id, tmp_path):
    commit = push_pipeline_to_hub(trained_dir, hub_repo_id)

    loaded = _load_outside_the_repo(tmp_path, hub_repo_id, revision=commit.oid)

    _assert_loaded_from_remote_code(loaded)


def test_exported_folder_loads_offline_in_a_fresh_process_outside_the_repo(trained_dir, tmp_path):
    folder = export_pipeline(trained_dir, tmp_path / "export")

    loaded = _load_outside_the_repo(tmp_path, str(folder), HF_HUB_OFFLINE="1")

    _assert_loaded_from_remote_code(loaded)


def test_a_bad_label_in_other_code_is_a_value_error_whose_class_the_pipeline_exposes(trained_dir, tmp_path):
    folder = export_pipeline(trained_dir, tmp_path / "export")

    loaded = _load_outside_the_repo(tmp_path, str(folder), HF_HUB_OFFLINE="1")

    assert loaded["label_error"]["is_pipe_label_error"]
    assert "'red cubes' is not a label; did you mean 'red cube'?" in loaded["label_error"]["message"]


# ---- what is exported and pushed --------------------------------------------------------------------------------


def test_export_holds_the_pipeline_code_weights_and_card_but_no_run_clutter(trained_dir, tmp_path):
    folder = export_pipeline(trained_dir, tmp_path / "export")

    assert set(_tree(folder)) == PIPELINE_FILES
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_iclevr", "ICLEVRPipeline"]
    assert index["unet"] == ["conditional_unet", "ConditionalUNet2DModel"]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert (folder / "pipeline_iclevr.py").read_bytes() == (REPO_ROOT / "pipeline" / "pipeline_iclevr.py").read_bytes()


def test_export_leaves_the_training_output_unchanged_and_loadable_with_iclevr_pipeline(model_dir, tmp_path):
    before = _tree(model_dir)

    export_pipeline(model_dir, tmp_path / "export")

    assert _tree(model_dir) == before
    assert isinstance(ICLEVRPipeline.from_pretrained(model_dir), ICLEVRPipeline)


def test_make_self_describing_in_place_is_idempotent_and_loads_with_diffusion_pipeline(model_dir):
    make_self_describing(model_dir)
    first = _tree(model_dir)
    make_self_describing(model_dir)

    assert _tree(model_dir) == first
    pipe = DiffusionPipeline.from_pretrained(model_dir, trust_remote_code=True)
    assert type(pipe).__name__ == "ICLEVRPipeline" and pipe.vocabulary.labels == LabelVocabulary().labels


def test_model_card_shows_the_loading_snippet_labels_training_settings_and_evaluation(model_dir, tmp_path):
    (model_dir / "report.json").write_text(json.dumps(REPORT))

    card = (export_pipeline(model_dir, tmp_path / "export", hub_model_id="tester/iclevr", revision="exp")
            / "README.md").read_text()

    assert 'DiffusionPipeline.from_pretrained("tester/iclevr", trust_remote_code=True, revision="exp")' in card
    assert "library_name: diffusers" in card
    assert "23: yellow cylinder" in card
    assert "![Samples](samples.png)" in card and "1. red sphere, cyan cylinder, cyan cube" in card
    assert "| `model_config_name_or_path` | tiny |" in card
    assert "| test.json | 0.8125 ± 0.0125 |" in card


def test_model_card_names_the_label_embeddings_starting_norm_only_when_one_was_set(model_dir, tmp_path):
    plain = (export_pipeline(model_dir, tmp_path / "plain") / "README.md").read_text()
    training_args = json.loads((model_dir / "training_args.json").read_text())
    (model_dir / "training_args.json").write_text(json.dumps({**training_args, "label_embedding_norm": 8.0}))

    card = (export_pipeline(model_dir, tmp_path / "norm8") / "README.md").read_text()

    assert "label embeddings' starting norm" not in plain
    assert "label embeddings' starting norm: 8" in card


def test_model_card_says_with_which_steps_and_guidance_samples_png_was_drawn(model_dir, tmp_path):
    plain = (export_pipeline(model_dir, tmp_path / "plain") / "README.md").read_text()
    training_args = json.loads((model_dir / "training_args.json").read_text())
    (model_dir / "training_args.json").write_text(json.dumps({**training_args, "validation_inference_steps": 25,
                                                              "validation_guidance_scale": 2.0}))

    card = (export_pipeline(model_dir, tmp_path / "guided") / "README.md").read_text()

    assert "Drawn by the saved sampler" not in plain  # a folder whose training flags do not say
    assert ("Drawn by the saved sampler with 25 steps and guidance 2, one image per list. Label lists of the grid"
            in card)
    # the pipeline's own defaults stay as they are
    assert (f"`num_inference_steps` (default {DEFAULT_INFERENCE_STEPS}), `guidance_scale` (default "
            f"{DEFAULT_GUIDANCE_SCALE};") in card


def test_model_card_says_whether_the_residual_branches_started_at_zero(model_dir, tmp_path):
    training_args = json.loads((model_dir / "training_args.json").read_text())
    (model_dir / "training_args.json").write_text(json.dumps({**training_args, "zero_init_residual": True}))

    card = (export_pipeline(model_dir, tmp_path / "zero") / "README.md").read_text()

    assert "residual branches start at zero: True" in card


def test_model_card_gives_the_min_snr_offset_the_model_trained_with(model_dir, tmp_path):
    training_args = json.loads((model_dir / "training_args.json").read_text())
    (model_dir / "training_args.json").write_text(json.dumps({**training_args, "snr_offset": 0.5}))

    card = (export_pipeline(model_dir, tmp_path / "offset") / "README.md").read_text()

    assert "Min-SNR offset: 0.5" in card


def test_model_card_says_what_was_trained_and_on_which_data_beside_the_flags(model_dir, tmp_path):
    trained = {"steps": 2, "epochs": 0.4, "images_seen": 16,
               "data": {"source": "hub", "dataset": "tester/shapes", "revision": "abc123", "images": 36}}
    (model_dir / "training_args.json").write_text(json.dumps({"model_config_name_or_path": "tiny", "resolution": 32,
                                                              "num_train_epochs": 100, "trained": trained}))

    card = (export_pipeline(model_dir, tmp_path / "export") / "README.md").read_text()

    assert ("Trained for 2 optimiser steps (0.4 epochs, 16 images seen) on the 36 images of the Hub data set "
            "[tester/shapes](https://huggingface.co/datasets/tester/shapes) at revision `abc123`.") in card
    assert "epochs: 100" not in card and "| `num_train_epochs` | 100 |" in card  # a flag, listed as one
    assert "| `trained` |" not in card


def test_a_hub_data_set_is_recorded_with_the_commit_it_was_read_at(tiny_iclevr_dir, hub_repo_id, tmp_path):
    commit = push_dataset_to_hub(tiny_iclevr_dir, hub_repo_id)

    train_set = load_training_set(dataset_name=hub_repo_id, resolution=32, cache_dir=tmp_path)

    assert train_set.source == {"source": "hub", "dataset": hub_repo_id, "revision": commit.oid}


def test_a_hub_data_set_given_a_revision_is_read_at_that_commit_after_main_moved_on(tiny_iclevr_dir, hub_repo_id,
                                                                                   tmp_path):
    first = push_dataset_to_hub(tiny_iclevr_dir, hub_repo_id)
    smaller = tmp_path / "smaller"
    shutil.copytree(tiny_iclevr_dir, smaller)
    entries = json.loads((smaller / "train.json").read_text())
    (smaller / "train.json").write_text(json.dumps(dict(list(entries.items())[:5])))
    push_dataset_to_hub(smaller, hub_repo_id)

    pinned = load_training_set(dataset_name=hub_repo_id, resolution=32, cache_dir=tmp_path, revision=first.oid)
    latest = load_training_set(dataset_name=hub_repo_id, resolution=32, cache_dir=tmp_path)

    assert (len(pinned), pinned.source["revision"]) == (len(entries), first.oid)
    assert len(latest) == 5 and latest.source["revision"] != first.oid


def test_evaluate_py_reports_become_one_row_per_condition_set_with_mean_and_std():
    recall = dict.fromkeys(LabelVocabulary().labels, 0.5)
    report = {"settings": {"scheduler": "dpmsolver++", "seeds": [0, 1], "condition_files": {"test": "test.json"}},
              "condition_sets": {"test": {"num_seeds": 2, "accuracy_mean": 0.5, "accuracy_std": 0.25,
                                          "per_label_recall": recall, "per_seed": {"0": {"accuracy": 0.25}}}},
              "mean_accuracy": 0.5}

    table = evaluation_markdown(report)

    assert "| condition set | num_seeds | accuracy |" in table and "| test | 2 | 0.5 ± 0.25 |" in table
    assert "- mean_accuracy: 0.5" in table and "- settings.seeds: 0, 1" in table
    assert "recall" not in table and "per_seed" not in table


def test_an_unfamiliar_evaluation_report_layout_is_still_rendered():
    report = {"test.json": {"top1": 0.5, "per_seed": [0.5, 0.25]}, "notes": "bf16", "new_test.json": {"top1": 0.75}}

    table = evaluation_markdown(report)

    assert "| condition set | top1 | per_seed |" in table
    assert "| test.json | 0.5 | 0.5, 0.25 |" in table and "| new_test.json | 0.75 |  |" in table
    assert "- notes: bf16" in table


def test_private_flag_reaches_create_repo(trained_dir, hub_server, hub_repo_id):
    push_pipeline_to_hub(trained_dir, hub_repo_id, private=True)

    [create] = [r for r in hub_server.find_requests("POST", "/api/repos/create")
                if r.body["name"] == hub_repo_id.split("/")[1]]
    assert create.body["visibility"] == "private"
    assert HfApi().repo_info(hub_repo_id).private is True


def test_push_to_a_branch_leaves_main_unchanged_and_that_revision_loads(trained_dir, hub_server, hub_repo_id, tmp_path):
    push_pipeline_to_hub(trained_dir, hub_repo_id)
    main_before = hub_server.repo_files(hub_repo_id)
    retrained = _save_tiny_pipeline(tmp_path / "retrained", seed=1)

    push_pipeline_to_hub(retrained, hub_repo_id, revision="experiment")

    assert hub_server.repo_files(hub_repo_id) == main_before
    branch = DiffusionPipeline.from_pretrained(hub_repo_id, trust_remote_code=True, revision="experiment")
    expected = ICLEVRPipeline.from_pretrained(retrained).unet.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in branch.unet.state_dict().items())
    assert 'revision="experiment"' in hub_server.repo_files(hub_repo_id, revision="experiment")["README.md"].decode()


def test_repush_uploads_only_the_files_that_changed(model_dir, hub_server, hub_repo_id):
    push_pipeline_to_hub(model_dir, hub_repo_id)
    uploads_before = len(hub_server.find_requests("PUT", f"/__lfs__/model/{hub_repo_id}/"))
    (model_dir / "report.json").write_text(json.dumps(REPORT))

    push_pipeline_to_hub(model_dir, hub_repo_id)

    *_, second = hub_server.find_requests("POST", f"/api/models/{hub_repo_id}/commit/")
    assert {item["value"]["path"] for item in second.body[1:]} == {"README.md", "report.json"}
    assert len(hub_server.find_requests("PUT", f"/__lfs__/model/{hub_repo_id}/")) == uploads_before


def test_a_push_that_fails_midway_says_why_in_one_line_and_keeps_the_export(model_dir, hub_server, hub_repo_id,
                                                                               tmp_path):
    export_dir = tmp_path / "export"
    model_before = _tree(model_dir)
    hub_server.fail_next("POST", f"/api/models/{hub_repo_id}/commit/", status=500)

    with pytest.raises(HubError) as error:
        push_pipeline_to_hub(model_dir, hub_repo_id, export_dir=export_dir)

    message = str(error.value)
    assert "\n" not in message and "HTTP 500" in message and str(export_dir) in message
    assert set(_tree(export_dir)) == PIPELINE_FILES and _tree(model_dir) == model_before
    push_pipeline_to_hub(model_dir, hub_repo_id, export_dir=export_dir)  # the retry the message suggests
    assert "unet/diffusion_pytorch_model.safetensors" in hub_server.repo_files(hub_repo_id)


# ---- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id, hint", [("iclevr-ddpm", "has no namespace"), ("a/b/c", "namespace/name"),
                                           ("me/bad name", "namespace/name")])
def test_a_bad_hub_id_is_refused_before_anything_is_created(trained_dir, hub_server, repo_id, hint):
    creates = len(hub_server.find_requests("POST", "/api/repos/create"))

    with pytest.raises(HubError, match=hint):
        push_pipeline_to_hub(trained_dir, repo_id)

    assert len(hub_server.find_requests("POST", "/api/repos/create")) == creates


@pytest.mark.parametrize("folder, hint", [("missing", "is not a folder"), ("checkpoint-2", "has no model_index.json")])
def test_a_folder_that_is_not_a_saved_pipeline_is_refused_in_one_line(trained_dir, hub_repo_id, folder, hint):
    with pytest.raises(ExportError, match=hint) as error:
        push_pipeline_to_hub(trained_dir / folder, hub_repo_id)

    assert "\n" not in str(error.value)


def test_a_config_list_that_diffusers_hub_loader_would_misread_is_refused_at_export(model_dir, tmp_path):
    index = json.loads((model_dir / "model_index.json").read_text())
    (model_dir / "model_index.json").write_text(json.dumps({**index, "labels": list(LabelVocabulary().labels)}))

    with pytest.raises(ExportError, match="'labels' is a list, which diffusers' Hub loader would read as a"):
        export_pipeline(model_dir, tmp_path / "export")


def test_push_script_prints_the_commit_url_and_a_pinned_loading_line(trained_dir, hub_repo_id, capsys):
    push_script = import_script("push_to_hub")

    push_script.main(["--model_dir", str(trained_dir), "--hub_model_id", hub_repo_id, "--hub_revision", "v1"])

    out = capsys.readouterr().out
    sha = HfApi().repo_info(hub_repo_id, revision="v1").sha
    assert f"/{hub_repo_id}/commit/{sha}" in out
    assert f"from_pretrained('{hub_repo_id}', trust_remote_code=True, revision='{sha}')" in out


def test_push_script_reports_a_bad_folder_as_one_error_line(tmp_path, hub_repo_id, capsys):
    with pytest.raises(SystemExit) as exit_info:
        import_script("push_to_hub").main(["--model_dir", str(tmp_path), "--hub_model_id", hub_repo_id])

    assert str(exit_info.value).startswith("error: ") and "\n" not in str(exit_info.value)


# ---- the data set ------------------------------------------------------------------------------------------------


def test_pushed_dataset_loads_back_with_the_same_images_and_labels(tiny_iclevr_dir, hub_repo_id):
    push_dataset_to_hub(tiny_iclevr_dir, hub_repo_id)

    loaded = load_train_dataset(dataset_name=hub_repo_id)
    local = load_train_dataset(train_data_dir=tiny_iclevr_dir)

    assert loaded.column_names == ["image", "labels"]
    assert loaded["labels"] == local["labels"]
    assert loaded[5]["image"].tobytes() == local[5]["image"].tobytes()


def test_training_from_a_pushed_dataset_pushes_its_pipeline_with_push_to_hub(tiny_iclevr_dir, hub_repo_id,
                                                                             hub_server, tmp_path):
    import_script("push_dataset_to_hub").main(["--train_data_dir", str(tiny_iclevr_dir),
                                                "--hub_dataset_id", hub_repo_id])
    output_dir = tmp_path / "run"
    model_repo_id = hub_repo_id + "-model"

    launch_training(
        "--dataset_name", hub_repo_id, "--model_config_name_or_path", "tiny", "--resolution", "32",
        "--max_train_steps", "2", "--train_batch_size", "4", "--lr_warmup_steps", "0", "--report_to", "none",
        "--validation_inference_steps", "1", "--output_dir", str(output_dir),
        "--push_to_hub", "--hub_model_id", model_repo_id, "--hub_private_repo",
    )  # fmt: skip

    assert isinstance(ICLEVRPipeline.from_pretrained(output_dir), ICLEVRPipeline)
    pushed = hub_server.repo_files(model_repo_id)
    assert {"model_index.json", "pipeline_iclevr.py", "unet/conditional_unet.py", "README.md"} <= set(pushed)
    assert not any(name.startswith(("checkpoint-", "logs/")) for name in pushed)
    assert HfApi().repo_info(model_repo_id).private is True

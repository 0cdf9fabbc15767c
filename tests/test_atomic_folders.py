"""Temporary folders: what a killed writer (a preprocessing run, an export, a render, a push) leaves is removed by the
next writer, and a folder is swapped in whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diffusers import DDPMScheduler

from conftest import REPO_ROOT
from pipeline import LabelVocabulary
from training.atomic_folders import OTHER_HOST_MAX_AGE, make_temporary_folder, remove_stale, replace_folder
from training.data import load_train_dataset, preprocess_dataset
from training.export import export_pipeline
from training.model_presets import create_model
from training.sampling import build_pipeline

WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from training.atomic_folders import make_temporary_folder
folder = make_temporary_folder(Path(sys.argv[2]), sys.argv[3])
(folder / "half-written").write_text("...")
print(folder, flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A saved tiny pipeline, as a training run leaves it."""
    folder = tmp_path_factory.mktemp("atomic") / "run"
    build_pipeline(create_model("tiny", sample_size=8), DDPMScheduler(), LabelVocabulary()).save_pretrained(folder)
    return folder


def _killed_writer(parent: Path, prefix: str) -> Path:
    """The temporary folder of a real process that was killed while writing it."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(REPO_ROOT), str(parent), prefix],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    folder = Path(process.stdout.readline().strip())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return folder


def test_preprocessing_removes_the_temporary_folder_of_a_killed_run(tiny_iclevr_dir, tmp_path):
    stale = _killed_writer(tmp_path / "preprocessed", ".tmp-0123456789abcdef-16-")

    preprocess_dataset(load_train_dataset(train_data_dir=tiny_iclevr_dir), 8, tmp_path)

    assert stale.parent.is_dir() and not stale.exists()
    assert not list((tmp_path / "preprocessed").glob(".tmp-*"))


def test_an_export_removes_what_a_killed_export_left_and_keeps_a_running_writers(trained_run, tmp_path):
    stale = _killed_writer(tmp_path, ".export.tmp-")
    running = make_temporary_folder(tmp_path, ".export.tmp-")  # this process's: still being written

    export_pipeline(trained_run, tmp_path / "export")

    assert not stale.exists() and running.is_dir()
    assert (tmp_path / "export" / "model_index.json").is_file()


def test_a_temporary_folder_of_another_host_is_removed_only_once_it_is_old(tmp_path):
    other = tmp_path / ".x.tmp-123@another-host@abc"
    other.mkdir()
    assert remove_stale(tmp_path, ".x.tmp-") == [] and other.is_dir()

    old = time.time() - OTHER_HOST_MAX_AGE - 60
    os.utime(other, (old, old))
    assert remove_stale(tmp_path, ".x.tmp-") == [other] and not other.exists()


def test_replace_folder_swaps_a_complete_folder_for_the_old_one(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "old.txt").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "new.txt").write_text("new")

    replace_folder(tmp_path / "new", tmp_path / "target")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert [p.name for p in (tmp_path / "target").iterdir()] == ["new.txt"]


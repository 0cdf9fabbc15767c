"""scripts/demo.py, the Gradio app: started as a user starts it, on a loopback port, then driven through the real
gradio_client and a real headless Chromium; and the copy an export ships, run from inside the exported folder."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from packaging.requirements import Requirement
from PIL import Image

from browser import Chromium, find_chromium, generate_in_page
from conftest import REPO_ROOT, import_script
from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE
from training.export import export_pipeline

SAVED = "saved: sde-dpmsolver++"  # the sampler menu's first entry: the one the pipeline was saved with
START_TIMEOUT = 120  # seconds; torch, diffusers and gradio take ~10 s to import on 2 cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_demo(*args: str, cwd: Path, log: Path) -> Iterator[str]:
    """`python scripts/demo.py ARGS --port P` from `cwd`, until the page answers; its URL. Stopped afterwards."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "scripts/demo.py", *args, "--port", str(port)], cwd=cwd, env=env,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start (exit status {process.poll()}):\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def demo_url(tiny_pipeline_dir, tmp_path_factory) -> Iterator[str]:
    with serve_demo("--pipeline", str(tiny_pipeline_dir), "--device", "cpu", cwd=REPO_ROOT,
                    log=tmp_path_factory.mktemp("demo") / "demo.log") as url:  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def client(demo_url) -> Client:
    return Client(demo_url, verbose=False)


def _generate(client: Client, cubes=(), spheres=(), cylinders=(), sampler=SAVED, steps=2,
              guidance=DEFAULT_GUIDANCE_SCALE, seed=0, num_images=2) -> tuple:  # fmt: skip
    return client.predict(list(cubes), list(spheres), list(cylinders), sampler, steps, guidance, seed, num_images,
                          api_name="/generate")  # fmt: skip


def _pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_generation_returns_the_images_their_denoising_process_and_the_time_taken(client):
    status, gallery, process = _generate(client, cubes=["cyan cube"], spheres=["red sphere"], num_images=2)

    assert [item["caption"] for item in gallery] == ["seed 0", "seed 1"]
    assert all(Image.open(item["image"]).size == (32, 32) for item in gallery)
    # One row per image, from the noise to the image: min(8 frames, 2 steps + 1) columns.
    assert Image.open(process).size == (3 * 32, 2 * 32)
    assert np.array_equal(_pixels(process)[:32, 64:], _pixels(gallery[0]["image"]))
    assert "**cyan cube, red sphere**: 2 images in" in status and "s per image" in status


def test_a_picture_in_the_page_is_made_again_by_generate_py_with_its_seed(client, tiny_pipeline_dir, tmp_path):
    _, gallery, _ = _generate(client, spheres=["red sphere"], seed=5, num_images=2)

    import_script("generate").main(["--pipeline", str(tiny_pipeline_dir), "--labels", "red sphere", "--seed", "5",
                                    "--num_images_per_prompt", "2", "--num_inference_steps", "2",
                                    "--output_dir", str(tmp_path)])  # fmt: skip

    # Two processes may sum floats in another order (thread counts); the last bit of a pixel may differ, no more.
    difference = np.abs(_pixels(gallery[1]["image"]).astype(int) - _pixels(tmp_path / "00_red-sphere_seed6.png"))
    assert difference.max() <= 2


def test_a_sampler_from_the_menu_or_typed_as_a_spec_takes_effect(client):
    images = {sampler: _generate(client, spheres=["red sphere"], sampler=sampler, num_images=1)[1][0]["image"]
              for sampler in (SAVED, "ddim", "ddim,eta=1")}  # fmt: skip

    saved, ddim, ddim_eta = (_pixels(path) for path in images.values())
    assert not np.array_equal(saved, ddim) and not np.array_equal(ddim, ddim_eta)


@pytest.mark.parametrize("objects, sampler, message", [
    ({}, SAVED, "Pick 1 to 3 objects"),
    ({"cubes": ["red cube", "blue cube"], "spheres": ["red sphere", "cyan sphere"]}, SAVED, "at most 3 objects"),
    ({"spheres": ["red sphere", "red sphere"]}, SAVED, "'red sphere' appears 2 times"),
    ({"spheres": ["red sphere"]}, "dpm", "unknown sampler 'dpm'; did you mean"),
    ({"spheres": ["red sphere"]}, "dpmsolver++,solver_type=foo", "cannot sample: foo is not implemented"),
])  # fmt: skip
def test_bad_input_gets_a_message_in_the_page_not_a_traceback(client, objects, sampler, message):
    with pytest.raises(AppError, match=message) as error:
        _generate(client, sampler=sampler, **objects)

    assert "Traceback" not in str(error.value)


def test_the_page_renders_the_controls_and_shows_images_after_generate_in_a_real_browser(demo_url):
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium to drive: install Debian's chromium package (apt-get install chromium)")

    with Chromium(executable) as browser:
        shown = generate_in_page(browser, demo_url, ["red sphere", "cyan cube"], num_images=4)

    assert shown["controls"] == {"pick-cube": 8, "pick-sphere": 8, "pick-cylinder": 8}
    assert "Picked: cyan cube, red sphere" in shown["pick"]  # in the table's order: cubes first
    assert "4 images in" in shown["status"]


def test_the_exported_folder_serves_its_own_model_as_a_gradio_space(tiny_pipeline_dir, tmp_path):
    folder = export_pipeline(tiny_pipeline_dir, tmp_path / "export")
    front_matter = (folder / "README.md").read_text().split("---")[1]

    assert "sdk: gradio" in front_matter and "app_file: scripts/demo.py" in front_matter
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert {"torch", "diffusers"} <= {Requirement(line).name for line in requirements}
    # No --pipeline: the app serves the folder it ships in, with the folder's own pipeline code.
    with serve_demo("--device", "cpu", cwd=folder, log=tmp_path / "demo.log") as url:
        status, gallery, _ = _generate(Client(url, verbose=False), spheres=["red sphere"], num_images=1)

    assert Image.open(gallery[0]["image"]).size == (32, 32) and "1 image in" in status

"""Shared test set-up: repo on sys.path, isolated caches, and small fixtures built from real components."""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ICLEVR = REPO_ROOT.parent / "shared" / "iclevr"
sys.path.insert(0, str(REPO_ROOT))

# Every cache a test could touch lives in one throw-away folder, never in the user's home.
_SCRATCH = Path(tempfile.mkdtemp(prefix="iclevr-tests-"))
os.environ["ICLEVR_CACHE"] = str(_SCRATCH / "iclevr-cache")
os.environ["HF_DATASETS_CACHE"] = str(_SCRATCH / "hf-datasets")
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_DIR"] = str(_SCRATCH / "wandb")
os.environ["WANDB_SILENT"] = "true"


def import_script(name: str, folder: str = "scripts") -> ModuleType:
    """FOLDER/NAME.py (scripts/, benchmarks/ or "." for the repo root) as a module, so a test can call its
    main(argv) in-process. Registered in sys.modules before it runs, as an import would be (dataclasses look their
    module up there)."""
    module_name = name if folder == "." else f"{folder}_{name}"
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads_follow_the_machine_load():
    """In-process tests use the training's thread policy: every core, fewer while other processes are busy."""
    from training.cpu_threads import CpuThreads

    policy = CpuThreads()
    yield policy


@pytest.fixture(autouse=True)
def _cpu_threads_update(_cpu_threads_follow_the_machine_load):
    _cpu_threads_follow_the_machine_load.update()


@pytest.fixture(scope="session")
def shared_iclevr() -> Path:
    """The real i-CLEVR label files beside the repo; tests that need them skip when they are absent."""
    if not (SHARED_ICLEVR / "train.json").is_file():
        pytest.skip(f"real i-CLEVR label files not found in {SHARED_ICLEVR}")
    return SHARED_ICLEVR


@pytest.fixture(scope="session")
def tiny_iclevr_dir(tmp_path_factory) -> Path:
    """A real render of the synthetic i-CLEVR in the course's folder layout: 12 scenes, 36 images."""
    from training.synthetic_iclevr import render_dataset

    output_dir = tmp_path_factory.mktemp("tiny-iclevr") / "iclevr-data"
    render_dataset(output_dir, num_scenes=12, seed=1, num_workers=1, progress=False)
    return output_dir


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """What a training run saves, with an untrained `tiny` UNet at 32x32 and the default sampler."""
    import torch
    from diffusers import DDPMScheduler

    from pipeline import LabelVocabulary
    from training.model_presets import create_model
    from training.sampling import build_pipeline

    folder = tmp_path_factory.mktemp("tiny-pipeline") / "iclevr-ddpm"
    torch.manual_seed(0)
    build_pipeline(create_model("tiny", sample_size=32), DDPMScheduler(), LabelVocabulary()).save_pretrained(folder)
    return folder


# ---- Hub test double (tests/hub_server.py) ------------------------------------------------------------------------
# Every Hub call of the suite goes to a loopback server speaking the Hub protocol. It starts here, at conftest import,
# because huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_DISABLE_XET once, when first imported, and that must
# happen after this block; test subprocesses inherit the variables.
import uuid  # noqa: E402

from tests.hub_server import HubServer, configure_hub_environment, start_hub_server  # noqa: E402

HUB_SERVER = start_hub_server()
configure_hub_environment(HUB_SERVER, _SCRATCH / "hf-home")


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The running Hub test double: `.endpoint`, `.requests`, `.fail_next(...)`, `.repo_files(...)`."""
    return HUB_SERVER


@pytest.fixture
def hub_repo_id() -> str:
    """A repo id no other test uses, in the test double's user namespace (the repo itself is not created)."""
    return f"tester/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _hub_failures_end_with_their_test():
    """A `fail_next` a test armed but did not trigger must not hit the next test."""
    yield
    HUB_SERVER.clear_failures()

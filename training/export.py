"""A saved ICLEVRPipeline folder -> a self-describing folder that plain diffusers loads outside this repo.

`save_pretrained` names this repo's classes by their import path: `"_class_name": "ICLEVRPipeline"` and
`"unet": ["pipeline.conditional_unet", "ConditionalUNet2DModel"]`, which resolve only where `pipeline` is importable.
diffusers 0.42's remote-code loading (pipelines/pipeline_loading_utils.py, utils/dynamic_modules_utils.py) finds:
  * the pipeline class from `"_class_name": ["pipeline_iclevr", "ICLEVRPipeline"]` with `pipeline_iclevr.py` at the
    folder (or repo) root; the files it imports relatively (`conditional_unet.py`, `vocabulary.py`) must sit beside
    it, because diffusers copies them along into its module cache;
  * a custom component from `"unet": ["conditional_unet", "ConditionalUNet2DModel"]` with `unet/conditional_unet.py`
    beside the weights. unet/config.json keeps `"_class_name": "ConditionalUNet2DModel"`: it is compared with the
    class's bare name only; its `"auto_map": {"AutoModel": "conditional_unet.ConditionalUNet2DModel"}` lets
    `AutoModel.from_pretrained(folder/unet, trust_remote_code=True)` load the model alone.
`DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)` then imports that code from copies in
HF_MODULES_CACHE ($HF_HOME/modules/diffusers_modules/).

One folder cannot serve both loaders: once a folder holds its own pipeline file, diffusers loads that file's class
whichever class `from_pretrained` is called on (`_resolve_custom_pipeline_and_cls` runs before the caller's class is
considered), so `ICLEVRPipeline.from_pretrained(folder)` then asks for trust_remote_code and returns the folder's copy
of the class. So `export_pipeline` writes a *separate* folder and never touches the training output, which stays
loadable with `ICLEVRPipeline.from_pretrained`; `make_self_describing` rewrites a folder in place for callers that want
the folder itself loadable by plain diffusers (and then load it with DiffusionPipeline + trust_remote_code, in this
repo too).

`export_pipeline` also ships the demo (`scripts/demo.py` and the code it imports from this checkout) with a
requirements.txt and a README front-matter that lets the Hub run the folder as a Gradio Space.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.utils.dynamic_modules_utils import get_relative_import_files
from packaging.requirements import Requirement

from pipeline import ICLEVRPipeline, LabelVocabulary
from pipeline.vocabulary import DEFAULT_MAX_OBJECTS
from training.atomic_folders import replace_folder, temporary_folder
from training.errors import UserError
from training.model_card import render_model_card
from training.sampling import validation_label_lists

CODE_DIR = Path(inspect.getfile(ICLEVRPipeline)).parent  # the package that ships as remote code
CODE_PACKAGE = CODE_DIR.name
PIPELINE_FILE = Path(inspect.getfile(ICLEVRPipeline))
MODEL_INDEX = "model_index.json"
MODEL_CARD = "README.md"
SAMPLES = "samples.png"  # the training script's final grid of its validation label lists
TRAINING_ARGS = "training_args.json"  # the training script's arguments, vars(args)
EVALUATION_REPORT = "report.json"  # scripts/evaluate.py's report
# Extra files of a training output folder that belong on the Hub; checkpoints, logs, validation grids stay behind.
EXTRA_FILES = (SAMPLES, TRAINING_ARGS)
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
REPO_ROOT = CODE_DIR.parent
# The demo app and what it imports from this checkout (the rest are installed packages; the pipeline code it runs is
# the folder's own), at the same paths, so `python scripts/demo.py` inside the folder serves the folder's model.
DEMO_APP = "scripts/demo.py"
DEMO_FILES = (DEMO_APP, "training/__init__.py", "training/bf16_support.py", "training/cli.py", "training/errors.py",
              "training/inference.py", "training/samplers.py")
# What a Space installs besides gradio (the front-matter's sdk_version): the packages the demo and the pipeline code
# import, pinned as this checkout's requirements.txt pins them.
SPACE_REQUIREMENTS = "requirements.txt"
SPACE_PACKAGES = ("torch", "diffusers", "huggingface_hub", "safetensors", "numpy", "Pillow")


class ExportError(UserError, ValueError):
    """A folder that cannot be exported; the message says what was wrong and what to give instead."""


def read_pipeline_index(model_dir: str | Path) -> dict[str, Any]:
    """model_index.json of an ICLEVRPipeline folder, as save_pretrained or `make_self_describing` wrote it."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExportError(f"model_dir {model_dir} is not a folder; give the --output_dir of a finished training run")
    index_file = model_dir / MODEL_INDEX
    if not index_file.is_file():
        raise ExportError(
            f"{model_dir} has no {MODEL_INDEX}, so it is not a saved pipeline; give the folder that "
            "ICLEVRPipeline.save_pretrained wrote (a training run's --output_dir, not a checkpoint-STEP folder)"
        )
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(
            f"{index_file} is not valid JSON ({error}); re-save the pipeline with save_pretrained"
        ) from None
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if isinstance(class_name, list) and len(class_name) == 2:
        class_name = class_name[1]
    if class_name != ICLEVRPipeline.__name__:
        raise ExportError(
            f"{index_file} describes a {class_name!r} pipeline; only {ICLEVRPipeline.__name__} folders can be exported"
        )
    return index


def _components(index: dict[str, Any]) -> dict[str, list]:
    """Component name -> [library, class] entries (labels and other plain settings are not components)."""
    return {
        name: value
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
    }


def _own_module(library: str) -> str | None:
    """The module name inside `pipeline/` for a component of this repo ("pipeline.conditional_unet" as
    save_pretrained records it, or "conditional_unet" once rewritten), else None."""
    name = library.removeprefix(f"{CODE_PACKAGE}.")
    return name if (CODE_DIR / f"{name}.py").is_file() else None


def _copy_code(module_file: Path, target_dir: Path) -> None:
    """Copies a module and every sibling file it imports relatively (found as diffusers finds them)."""
    for path in sorted({module_file, *map(Path, get_relative_import_files(module_file))}):
        shutil.copyfile(path, target_dir / path.name)


def _check_hub_loadable(index: dict[str, Any], model_dir: Path) -> None:
    """diffusers' Hub download (`_get_custom_components_and_folders`) reads *every* list in model_index.json whose
    first item is a string as a [library, class] component; any other such list would fail there, far from here."""
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or not value or not isinstance(value[0], str):
            continue
        library = value[0]
        if len(value) != 2 or not (library in LOADABLE_CLASSES or (model_dir / name / f"{library}.py").is_file()):
            raise ExportError(
                f"{model_dir / MODEL_INDEX}: {name!r} is a list, which diffusers' Hub loader would read as a "
                f"[library, class] component and fail on; save it as a mapping (e.g. labels as objects.json's "
                f"{{\"gray cube\": 0, ...}}) in the pipeline's config"
            )


def _name_auto_class(component_dir: Path, module: str, class_name: str) -> None:
    """Writes config.json's `auto_map`, through which `diffusers.AutoModel.from_pretrained(component_dir,
    trust_remote_code=True)` finds a custom model's class (a folder saved before the model wrote it lacks it)."""
    config_file = component_dir / "config.json"
    if not config_file.is_file():  # not a model (a custom scheduler has scheduler_config.json)
        return
    config = _read_json_object(config_file, "the component's config")
    auto_map = {**config.get("auto_map", {}), "AutoModel": f"{module}.{class_name}"}
    if config.get("auto_map") != auto_map:  # unchanged files stay byte-identical
        config_file.write_text(json.dumps({**config, "auto_map": auto_map}, indent=2, sort_keys=True) + "\n")


def make_self_describing(model_dir: str | Path) -> Path:
    """Rewrites a saved ICLEVRPipeline folder in place so that plain diffusers can load it anywhere.

    Copies this checkout's pipeline code into the folder (pipeline_iclevr.py and its siblings at the root, each custom
    component's module into its own folder) and rewrites model_index.json to the list form that names those files.
    Idempotent. Afterwards load the folder with `DiffusionPipeline.from_pretrained(model_dir, trust_remote_code=True)`
    (see the module docstring for why `ICLEVRPipeline.from_pretrained` then refuses it).
    """
    model_dir = Path(model_dir)
    index = read_pipeline_index(model_dir)
    for name, (library, class_name) in _components(index).items():
        if library in LOADABLE_CLASSES:
            continue
        module = _own_module(library)
        if module is None:
            raise ExportError(
                f"{model_dir / MODEL_INDEX}: component {name!r} is a {library}.{class_name}, which neither diffusers "
                f"nor this repo's {CODE_PACKAGE}/ package provides; build the pipeline from {CODE_PACKAGE}/ classes"
            )
        if not (model_dir / name).is_dir():
            raise ExportError(f"{model_dir} has no {name}/ folder for its {name!r} component; re-save the pipeline")
        _copy_code(CODE_DIR / f"{module}.py", model_dir / name)
        _name_auto_class(model_dir / name, module, class_name)
        index[name] = [module, class_name]
    _check_hub_loadable(index, model_dir)
    _copy_code(PIPELINE_FILE, model_dir)
    index["_class_name"] = [PIPELINE_FILE.stem, ICLEVRPipeline.__name__]
    # The layout diffusers' save_config writes, so unchanged exports are byte-identical (and not re-uploaded).
    (model_dir / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return model_dir


def _copy_component(source: Path, target: Path) -> None:
    pickled = sorted(p.name for p in source.rglob("*") if p.suffix in PICKLED_WEIGHTS)
    if pickled:
        raise ExportError(
            f"{source} holds pickled weights ({', '.join(pickled)}); only safetensors are exported: re-save the "
            "pipeline with save_pretrained (safetensors is its default)"
        )
    # Code is never copied from the folder: what ships is this checkout's code (make_self_describing).
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON ({error}); it should hold {what}") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path} holds a JSON {type(value).__name__}; it should hold {what} (a JSON object)")
    return value


def _num_parameters(component_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for weights in sorted(component_dir.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as tensors:
            for key in tensors.keys():
                shape = tensors.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def _labels(index: dict[str, Any]) -> list[str]:
    """The vocabulary in model input order; model_index.json keeps it as a list or as objects.json's mapping."""
    labels = index.get("labels") or LabelVocabulary().labels
    return sorted(labels, key=labels.__getitem__) if isinstance(labels, dict) else list(labels)


def add_demo(folder: Path) -> None:
    """Copies the demo and the code it imports into `folder`, with the Space's requirements.txt."""
    for name in DEMO_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, folder / name)
    lines = (line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines())
    pins = {Requirement(line).name: line for line in lines if line}
    (folder / SPACE_REQUIREMENTS).write_text("".join(f"{pins[name]}\n" for name in SPACE_PACKAGES))


def _space_settings() -> dict[str, str]:
    """The README front-matter entries that make the Hub run the folder as a Gradio Space."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {"sdk": "gradio", "sdk_version": importlib.metadata.version("gradio"), "app_file": DEMO_APP,
            "python_version": python}


def write_model_card(folder: str | Path, *, hub_model_id: str | None = None, revision: str | None = None) -> Path:
    """Writes README.md for a self-describing pipeline folder from what the folder holds; returns its path."""
    folder = Path(folder)
    index = read_pipeline_index(folder)
    labels = _labels(index)
    unet_config = _read_json_object(folder / "unet" / "config.json", "the UNet config")
    has_samples = (folder / SAMPLES).is_file()
    training_args = folder / TRAINING_ARGS
    report = folder / EVALUATION_REPORT
    card = render_model_card(
        repo_id=hub_model_id,
        revision=revision,
        labels=labels,
        max_objects=DEFAULT_MAX_OBJECTS,
        unet_config=unet_config,
        num_parameters=_num_parameters(folder / "unet"),
        scheduler=_components(index).get("scheduler", ["", "its scheduler"])[1],
        code_files=sorted(p for p in (p.relative_to(folder).as_posix() for p in folder.glob("**/*.py"))
                          if p not in DEMO_FILES),
        sample_lists=validation_label_lists(LabelVocabulary(labels)) if has_samples else None,
        training_args=_read_json_object(training_args, "the training arguments") if training_args.is_file() else None,
        evaluation=_read_json_object(report, "an evaluation report") if report.is_file() else None,
        space=_space_settings() if (folder / DEMO_APP).is_file() else None,
    )
    card.save(folder / MODEL_CARD)
    return folder / MODEL_CARD


def export_pipeline(
    model_dir: str | Path,
    export_dir: str | Path,
    *,
    hub_model_id: str | None = None,
    revision: str | None = None,
    evaluation_report: str | Path | None = None,
) -> Path:
    """Writes a self-describing copy of a trained pipeline folder to `export_dir` and returns it.

    The copy holds model_index.json, the component folders (safetensors weights, configs, code), the pipeline code,
    samples.png / training_args.json when present, the evaluation report (`evaluation_report`, else
    `model_dir/report.json` when present), the demo (see `add_demo`) and a model card (README.md) whose snippet
    loads `hub_model_id` at `revision` and whose front-matter lets the Hub run the folder as a Space. Nothing else
    of the training output (checkpoints, logs, validation grids) is copied, and `model_dir` is left as it was. An
    `export_dir` holding an earlier export is replaced; any other non-empty folder is refused. The export is written
    beside `export_dir` and swapped in when complete, so a failed export leaves an earlier one as it was.
    """
    model_dir, export_dir = Path(model_dir), Path(export_dir)
    index = read_pipeline_index(model_dir)
    if export_dir.resolve() == model_dir.resolve():
        raise ExportError(f"export_dir {export_dir} is model_dir itself; give a separate folder for the export")
    report = Path(evaluation_report) if evaluation_report is not None else model_dir / EVALUATION_REPORT
    if evaluation_report is not None and not report.is_file():
        raise ExportError(f"evaluation report {report} does not exist; give the report.json that evaluate.py wrote")
    if export_dir.exists():
        if not export_dir.is_dir() or (any(export_dir.iterdir()) and not (export_dir / MODEL_INDEX).is_file()):
            raise ExportError(
                f"export_dir {export_dir} exists and is not an earlier export; give a new or empty folder"
            )
    with temporary_folder(export_dir.parent, f".{export_dir.name}.tmp-") as work:
        shutil.copyfile(model_dir / MODEL_INDEX, work / MODEL_INDEX)
        for name in _components(index):
            if not (model_dir / name).is_dir():
                raise ExportError(f"{model_dir} has no {name}/ folder for its {name!r} component; re-save the pipeline")
            _copy_component(model_dir / name, work / name)
        for extra in EXTRA_FILES:
            if (model_dir / extra).is_file():
                shutil.copyfile(model_dir / extra, work / extra)
        if report.is_file():
            shutil.copyfile(report, work / EVALUATION_REPORT)
        make_self_describing(work)
        add_demo(work)
        write_model_card(work, hub_model_id=hub_model_id, revision=revision)
        replace_folder(work, export_dir)
    return export_dir

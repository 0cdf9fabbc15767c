"""The model card (README.md) of an exported i-CLEVR pipeline: how to load it, its labels, training and evaluation.

Pure rendering: `training.export` reads the folder's files and passes what it found; anything missing is left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from pipeline.pipeline_iclevr import DEFAULT_GUIDANCE_SCALE, DEFAULT_INFERENCE_STEPS

TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

A multi-label class-conditional diffusion model for i-CLEVR: give it up to {{ max_objects }} object labels
("red sphere", "cyan cube", ...) and it draws a {{ resolution }}x{{ resolution }} scene containing those objects.
It is a DDPM-trained UNet whose timestep embedding also receives a linear projection of the multi-hot label vector,
sampled with classifier-free guidance (`guidance_scale`) and, by default, {{ scheduler }}.

## Usage

```python
{{ snippet }}
```

`trust_remote_code=True` is needed because the pipeline and its UNet are not part of diffusers: their code ships in
this repository (`{{ code_files | join("`, `") }}`) and diffusers imports it. Read that code before you trust it,
and pin `revision` to a commit hash, so that later pushes cannot change the code you run.

Label lists must use the labels below; an unknown name raises an error that names the closest label (a
`ValueError`; its class is `pipe.LabelError`, since the pipeline's module cannot be imported by name).
`num_inference_steps` (default {{ num_inference_steps }}), `guidance_scale` (default {{ guidance_scale }}; 1 turns
guidance off), `generator`, `output_type` ("pil", "np", "pt") and `return_intermediates` (snapshots of the denoising
process) are the other arguments.

## Labels

{{ labels | length }} labels, in the order of the model's multi-hot input; at most {{ max_objects }} per image:

{{ label_table }}
{% if sample_lists %}
## Samples

![Samples](samples.png)

{% if sample_settings %}Drawn by the saved sampler with {{ sample_settings }}, one image per list. {% endif -%}
Label lists of the grid, left to right, top to bottom:
{% for names in sample_lists %}
{{ loop.index }}. {{ names | join(", ") }}
{%- endfor %}
{% endif %}
## Model

| | |
|---|---|
| Parameters | {{ "{:,}".format(num_parameters) }} |
| Resolution | {{ resolution }}x{{ resolution }} |
{%- for key, value in unet_rows %}
| {{ key }} | {{ value }} |
{%- endfor %}
| Sampler | {{ scheduler }} |

## Training
{% if training_args %}
{% if trained %}{{ trained }}

{% endif %}{% if key_settings %}{{ key_settings }}
{% endif %}
<details>
<summary>All training arguments (training_args.json)</summary>

| argument | value |
|---|---|
{%- for key, value in training_args %}
| `{{ key }}` | {{ value }} |
{%- endfor %}

</details>
{% else %}
The training arguments were not recorded with this model (no training_args.json).
{% endif %}{% if evaluation %}
## Evaluation

{{ evaluation }}

The raw numbers are in [report.json](report.json).
{% endif %}{% if space %}
## Demo

`{{ space.app_file }}` is a Gradio app for this model: pick up to {{ max_objects }} objects, choose the sampler,
steps, guidance and seed, and see the images and their denoising. In a download of this repository:
`pip install -r requirements.txt gradio=={{ space.sdk_version }}`, then `python {{ space.app_file }}` (it serves the
model in its own folder). Pushed as a Space, e.g. `hf upload your-name/iclevr-demo . --repo-type space`, the Hub runs
it (the front-matter above names the app). It imports `training/` of this repository besides installed packages.
{% endif %}"""

# The settings worth a line of their own; the full list goes into a collapsed table. How long the run trained and
# on what is the record under "trained" (training/run_record.py), not --max_train_steps / --num_train_epochs.
KEY_SETTINGS = (
    ("model_config_name_or_path", "model"),
    ("label_embedding_norm", "label embeddings' starting norm"),
    ("zero_init_residual", "residual branches start at zero"),
    ("resolution", "resolution"),
    ("train_batch_size", "batch size per device"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler", "LR schedule"),
    ("label_dropout", "label dropout"),
    ("prediction_type", "prediction type"),
    ("snr_gamma", "Min-SNR gamma"),
    ("snr_offset", "Min-SNR offset"),
    ("use_ema", "EMA"),
    ("mixed_precision", "mixed precision"),
    ("seed", "seed"),
)
UNET_KEYS = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "attention_head_dim")


def loading_snippet(repo_id: str | None, revision: str | None = None) -> str:
    """The Python lines that load the pipeline from `repo_id` (or this folder) and generate one image."""
    source = repo_id or "path/to/this/folder"
    pin = f'"{revision}"' if revision else '"main"'
    return (
        "import torch\n"
        "from diffusers import DiffusionPipeline\n"
        "\n"
        f'pipe = DiffusionPipeline.from_pretrained("{source}", trust_remote_code=True, revision={pin})'
        "  # pin a commit hash\n"
        "generator = torch.Generator().manual_seed(0)\n"
        'image = pipe(labels=[["red sphere", "cyan cube"]], generator=generator).images[0]\n'
        'image.save("red-sphere-cyan-cube.png")'
    )


def _cell(value: Any) -> str:
    """A value as one markdown table cell."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_cell(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _label_table(labels: Sequence[str], columns: int = 8) -> str:
    rows = [labels[i : i + columns] for i in range(0, len(labels), columns)]
    header = "| " + " | ".join(" " for _ in range(min(columns, len(labels)))) + " |"
    rule = "|" + "---|" * min(columns, len(labels))
    body = [
        "| " + " | ".join(f"{i * columns + j}: {name}" for j, name in enumerate(row)) + " |"
        for i, row in enumerate(rows)
    ]
    return "\n".join([header, rule, *body])


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _summary(values: dict[str, Any]) -> dict[str, Any]:
    """The scalars of one report entry: nested objects of at most three scalars are flattened ("accuracy.mean"),
    bigger ones (per-label recall, per-seed results) are left to the raw report; X_mean/X_std pairs become X."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if _is_scalar(value) or (isinstance(value, list) and all(map(_is_scalar, value))):
            flat[str(key)] = value
        elif isinstance(value, dict) and len(value) <= 3 and all(map(_is_scalar, value.values())):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
    merged: dict[str, Any] = {}
    for key, value in flat.items():
        for mean, std in (("_mean", "_std"), (".mean", ".std")):
            if key.endswith(mean) and isinstance(flat.get(key[: -len(mean)] + std), (int, float)):
                merged[key[: -len(mean)]] = f"{_cell(value)} ± {_cell(flat[key[: -len(mean)] + std])}"
                break
            if key.endswith(std) and isinstance(flat.get(key[: -len(std)] + mean), (int, float)):
                break
        else:
            merged[key] = value
    return merged


def trained_markdown(trained: dict[str, Any]) -> str:
    """A run's record (training/run_record.py) as one sentence: steps, epochs, images seen, and which data."""
    data = trained["data"]
    if data["source"] == "synthetic":
        where = (f"the built-in synthetic i-CLEVR ({data['scenes']} scenes, seed {data['seed']}, renderer version "
                 f"{data['renderer_version']})")
    elif data["source"] == "hub":
        revision = f" at revision `{data['revision']}`" if data["revision"] else " (revision not recorded)"
        where = f"the Hub data set [{data['dataset']}](https://huggingface.co/datasets/{data['dataset']}){revision}"
    elif data["source"] == "saved":
        where = f"the `datasets` folder `{data['path']}`"
    else:
        where = f"the i-CLEVR folder `{data['path']}`"
    return (
        f"Trained for {trained['steps']:,} optimiser steps ({trained['epochs']:g} epochs, {trained['images_seen']:,} "
        f"images seen) on the {data['images']:,} images of {where}."
    )


def evaluation_markdown(report: dict[str, Any]) -> str:
    """An evaluation report as markdown, tolerant of its exact layout.

    One table row per condition set: the entries of `report["condition_sets"]` if present, else every top-level
    object but "settings" (e.g. {"test.json": {"accuracy": {"mean": .., "std": ..}}}); mean/std pairs are shown as
    "mean ± std". The top-level scalars and the scalar settings are listed below the table.
    """
    sets = report.get("condition_sets")
    if not isinstance(sets, dict):
        sets = {key: value for key, value in report.items() if isinstance(value, dict) and key != "settings"}
    rows = {name: _summary(values) for name, values in sets.items() if isinstance(values, dict)}
    lines = []
    if rows:
        columns = list(dict.fromkeys(column for row in rows.values() for column in row))
        lines.append("| condition set | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for name, row in rows.items():
            lines.append(f"| {_cell(name)} | " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    others = _summary({k: v for k, v in report.items() if k not in rows and k not in ("condition_sets", "settings")})
    settings = report.get("settings")
    if isinstance(settings, dict):
        others.update({f"settings.{key}": value for key, value in _summary(settings).items()})
    if others:
        lines.append("")
        lines.extend(f"- {name}: {_cell(value)}" for name, value in others.items())
    return "\n".join(lines).strip()


def _sample_settings(training_args: dict[str, Any]) -> str | None:
    """How the training drew samples.png; its guidance may differ from the pipeline's default."""
    steps, guidance = (training_args.get(key) for key in ("validation_inference_steps", "validation_guidance_scale"))
    if steps is None or guidance is None:
        return None
    return f"{steps} steps and guidance {guidance:g}" + (" (no guidance)" if guidance <= 1 else "")


def render_model_card(
    *,
    repo_id: str | None,
    revision: str | None,
    labels: Sequence[str],
    max_objects: int,
    unet_config: dict[str, Any],
    num_parameters: int,
    scheduler: str,
    code_files: Sequence[str],
    sample_lists: Sequence[Sequence[str]] | None = None,
    training_args: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    space: dict[str, str] | None = None,
) -> ModelCard:
    """The model card; `sample_lists` (label lists of samples.png), `training_args` (the flags, and under "trained"
    what they trained: training/run_record.py), `evaluation` and `space` (front-matter entries that let the Hub run
    the folder's demo as a Space) are optional."""
    training_args = dict(training_args or {})
    trained = training_args.pop("trained", None)
    dataset = training_args.get("dataset_name")
    card_data = ModelCardData(
        library_name="diffusers",
        tags=["diffusers", "i-clevr", "ddpm", "class-conditional", "classifier-free-guidance", "image-generation"],
        datasets=[dataset] if dataset and "/" in str(dataset) else None,
        **(space or {}),
    )
    settings = [
        f"{title}: {_cell(training_args[key])}"
        for key, title in KEY_SETTINGS
        if training_args and training_args.get(key) not in (None, "", "none")
    ]
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=repo_id.split("/")[-1] if repo_id else "i-CLEVR conditional DDPM",
        snippet=loading_snippet(repo_id, revision),
        code_files=list(code_files),
        labels=list(labels),
        label_table=_label_table(list(labels)),
        max_objects=max_objects,
        resolution=unet_config.get("sample_size"),
        unet_rows=[(key, _cell(unet_config[key])) for key in UNET_KEYS if key in unet_config],
        num_parameters=num_parameters,
        scheduler=scheduler,
        num_inference_steps=DEFAULT_INFERENCE_STEPS,
        guidance_scale=DEFAULT_GUIDANCE_SCALE,
        sample_lists=[list(names) for names in sample_lists] if sample_lists else None,
        sample_settings=_sample_settings(training_args),
        training_args=[(key, _cell(value)) for key, value in training_args.items()] if training_args else None,
        trained=trained_markdown(trained) if trained else None,
        key_settings="; ".join(settings),
        evaluation=evaluation_markdown(evaluation) if evaluation else None,
        space=space,
    )

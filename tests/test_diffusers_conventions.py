"""ICLEVRPipeline and ConditionalUNet2DModel behave like diffusers' own pipelines and models: layer-wise casting,
step-end callbacks with the pipeline's state, guidance in part of the steps, num_images_per_prompt and latents,
from_pipe, AutoModel, one unbatched label list; also as remote code, from an exported folder, in a process that cannot
import this repo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from pipeline import ICLEVRPipeline, LabelError, LabelVocabulary
from training.export import export_pipeline
from training.model_presets import create_model
from training.sampling import build_pipeline

SIZE = 16
STEPS = 3
LABELS = [["red sphere", "cyan cube"], ["gray cylinder"]]


@pytest.fixture(scope="module")
def pipe() -> ICLEVRPipeline:
    torch.manual_seed(0)
    return build_pipeline(create_model("tiny", sample_size=SIZE).eval(), DDPMScheduler(), LabelVocabulary())


def _generate(pipe: ICLEVRPipeline, labels=LABELS, seed: int = 0, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", "generator": torch.Generator().manual_seed(seed),
              **kwargs}  # fmt: skip
    return pipe(labels, **kwargs).images


def _forward_batch_sizes(pipe: ICLEVRPipeline, **kwargs) -> list[int]:
    sizes = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    try:
        _generate(pipe, **kwargs)
    finally:
        hook.remove()
    return sizes


# ---- layer-wise casting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_dtype", [torch.float8_e4m3fn, torch.float16], ids=["fp8", "fp16"])
def test_layerwise_casting_stores_weights_in_low_precision_and_generates_close_images(pipe, storage_dtype):
    torch.manual_seed(0)
    unet = create_model("tiny", sample_size=SIZE).eval()
    unet.load_state_dict(pipe.unet.state_dict())
    unet.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.bfloat16)
    cast = build_pipeline(unet, DDPMScheduler(), LabelVocabulary())

    images = _generate(cast)

    assert unet.label_projection.weight.dtype == storage_dtype
    assert np.isfinite(images).all()
    assert np.abs(images - _generate(pipe)).mean() < 0.05  # another random model: 0.12


# ---- step-end callbacks -----------------------------------------------------------------------------------------


def test_a_callback_reads_the_pipeline_state_as_in_diffusers(pipe):
    seen = []

    def record(pipe, step, timestep, tensors):
        seen.append((pipe.num_timesteps, pipe.guidance_scale, pipe.do_classifier_free_guidance, pipe.interrupt))
        return tensors

    _generate(pipe, guidance_scale=2.5, callback_on_step_end=record)

    assert seen == [(STEPS, 2.5, True, False)] * STEPS


def test_a_callback_that_changes_the_guidance_scale_takes_effect_from_the_next_step(pipe):
    def guide_after_the_first_step(pipe, step, timestep, tensors):
        pipe._guidance_scale = 3.0
        return tensors

    sizes = _forward_batch_sizes(pipe, guidance_scale=1.0, callback_on_step_end=guide_after_the_first_step)
    images = _generate(pipe, guidance_scale=1.0, callback_on_step_end=guide_after_the_first_step)

    assert sizes == [2, 4, 4]  # guidance off (the conditional half only), then both halves in one forward
    assert pipe.guidance_scale == 3.0
    assert not np.allclose(images, _generate(pipe, guidance_scale=1.0))


def test_a_callback_that_sets_interrupt_skips_the_remaining_steps_and_returns_the_current_state(pipe):
    states = []

    def stop_after_the_first_step(pipe, step, timestep, tensors):
        states.append(tensors["latents"].clone())
        pipe._interrupt = True
        return tensors

    sizes = _forward_batch_sizes(pipe, callback_on_step_end=stop_after_the_first_step)
    latents = _generate(pipe, output_type="latent", callback_on_step_end=stop_after_the_first_step)

    assert len(sizes) == 1 and pipe.interrupt
    assert torch.equal(latents, states[-1])


def test_latent_output_is_the_raw_sample_that_the_image_outputs_are_made_from(pipe):
    latents = _generate(pipe, output_type="latent")
    images = _generate(pipe, output_type="pt")

    assert latents.dtype == torch.float32 and latents.shape == (len(LABELS), 3, SIZE, SIZE)
    torch.testing.assert_close(images, (latents / 2 + 0.5).clamp(0, 1))


# ---- guidance in part of the steps, as diffusers' guiders count their start / stop -------------------------------


def test_guidance_runs_only_in_the_steps_between_guidance_start_and_guidance_stop(pipe):
    # Step i is guided when int(start * steps) <= i < int(stop * steps).
    sizes = _forward_batch_sizes(pipe, num_inference_steps=5, guidance_scale=3.0, guidance_start=0.2, guidance_stop=0.6)
    assert sizes == [2, 4, 4, 2, 2]


def test_an_empty_guidance_interval_gives_the_unguided_images(pipe):
    unguided = _generate(pipe, guidance_scale=1.0)
    assert np.array_equal(_generate(pipe, guidance_scale=3.0, guidance_stop=0.0), unguided)
    assert not np.allclose(_generate(pipe, guidance_scale=3.0, guidance_start=0.5), unguided)


@pytest.mark.parametrize(("start", "stop"), [(-0.1, 1.0), (0.0, 1.5), (0.7, 0.3)])
def test_a_guidance_interval_outside_the_steps_is_rejected(pipe, start, stop):
    with pytest.raises(ValueError, match="0 <= guidance_start <= guidance_stop <= 1"):
        _generate(pipe, guidance_start=start, guidance_stop=stop)


# ---- num_images_per_prompt and latents --------------------------------------------------------------------------


def test_num_images_per_prompt_gives_each_list_its_images_in_order_each_reproducible_from_its_generator(pipe):
    generators = [torch.Generator().manual_seed(seed) for seed in range(4)]

    images = _generate(pipe, num_images_per_prompt=2, generator=generators)

    assert images.shape == (4, SIZE, SIZE, 3)
    # Image 3 is the second image of the second list: the same as that list alone with generator 3.
    alone = _generate(pipe, labels=LABELS[1:], generator=[torch.Generator().manual_seed(3)])
    np.testing.assert_allclose(images[3], alone[0], atol=1e-4)  # batch size moves float sums; guidance amplifies
    assert not np.allclose(images[2], images[3])


def test_a_generator_list_of_the_wrong_length_names_the_number_of_images(pipe):
    with pytest.raises(ValueError, match="got 2 generators for 4 images") as error:
        _generate(pipe, num_images_per_prompt=2, generator=[torch.Generator(), torch.Generator()])
    assert "\n" not in str(error.value)


def test_given_latents_are_the_starting_noise(pipe):
    noise = randn_tensor((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(7))
    deterministic = ICLEVRPipeline.from_pipe(pipe, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))

    from_latents = _generate(deterministic, latents=noise, generator=None)

    np.testing.assert_array_equal(from_latents, _generate(deterministic, seed=7))


def test_latents_of_the_wrong_shape_are_refused_in_one_line(pipe):
    with pytest.raises(ValueError, match=r"latents must have shape \(4, 3, 16, 16\).*got \(2, 3, 16, 16\)") as error:
        _generate(pipe, num_images_per_prompt=2, latents=torch.zeros(2, 3, SIZE, SIZE))
    assert "\n" not in str(error.value)


# ---- one unbatched label list -----------------------------------------------------------------------------------


def test_one_unbatched_label_list_is_a_batch_of_one(pipe):
    np.testing.assert_array_equal(_generate(pipe, labels=["red sphere", "cyan cube"]), _generate(pipe, LABELS[:1]))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("red sphere", r"a label list like \['red sphere'\]"),
        (["red sphere", ["cyan cube"]], "mixes label names and label lists"),
        ([], "no label lists given"),
        (["red spehre"], "did you mean 'red sphere'"),
    ],
    ids=["string", "mixed", "empty", "misspelt"],
)
def test_malformed_labels_are_refused_in_one_line(pipe, labels, message):
    with pytest.raises(LabelError, match=message) as error:
        _generate(pipe, labels=labels)
    assert "\n" not in str(error.value)


# ---- from_pipe and AutoModel ------------------------------------------------------------------------------------


def test_from_pipe_shares_the_components_and_generates_the_same_images(pipe):
    derived = ICLEVRPipeline.from_pipe(pipe)

    assert derived.unet is pipe.unet and derived.vocabulary == pipe.vocabulary
    np.testing.assert_array_equal(_generate(derived), _generate(pipe))


def test_a_pipeline_saved_as_a_variant_loads_back_as_that_variant(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, variant="fp16")

    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = ICLEVRPipeline.from_pretrained(tmp_path, variant="fp16")
    assert all(torch.equal(value, pipe.unet.state_dict()[key]) for key, value in loaded.unet.state_dict().items())


# In a process that cannot import this repo: AutoModel on the exported unet, then the conventions above on the
# exported pipeline, each from the code diffusers copied into its modules cache.
REMOTE_SCRIPT = """
import importlib.util, json, sys
import torch
from diffusers import AutoModel, DDIMScheduler, DiffusionPipeline
from diffusers.utils import HF_MODULES_CACHE

folder = sys.argv[1]
assert importlib.util.find_spec("pipeline") is None
unet = AutoModel.from_pretrained(folder + "/unet", trust_remote_code=True)
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
derived = type(pipe).from_pipe(pipe, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
run = lambda p, **kw: p(["red sphere"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kw).images
def stop(p, step, timestep, tensors):
    p._guidance_scale, p._interrupt = 4.0, step == 0
    return tensors
images = run(derived, num_images_per_prompt=2, output_type="pt")
noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
from_latents = derived(["red sphere"], num_inference_steps=2, num_images_per_prompt=2, latents=noise, output_type="pt")
run(derived, callback_on_step_end=stop)
same_weights = all(torch.equal(value, pipe.unet.state_dict()[key]) for key, value in unet.state_dict().items())
pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
print(json.dumps({
    "automodel_file": sys.modules[type(unet).__module__].__file__, "modules_cache": HF_MODULES_CACHE,
    "same_weights": same_weights, "one_class": type(unet) is type(pipe.unet),
    "from_pipe_shares_unet": derived.unet is pipe.unet, "shape": list(images.shape),
    "latents_are_the_noise": torch.equal(from_latents.images, images),
    "after_callback": [derived.guidance_scale, derived.interrupt],
    "fp8_finite": bool(torch.isfinite(run(pipe, output_type="pt")).all()),
}))
"""


def test_automodel_and_the_pipeline_conventions_work_from_an_exported_folder_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    saved = tmp_path / "trained"
    build_pipeline(create_model("tiny", sample_size=32), DDPMScheduler(), LabelVocabulary()).save_pretrained(saved)
    folder = export_pipeline(saved, tmp_path / "export")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    result = subprocess.run([sys.executable, str(script), str(folder)], cwd=tmp_path,
                            env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(loaded["automodel_file"]).is_relative_to(loaded["modules_cache"])
    assert loaded["same_weights"] and loaded["one_class"]  # loaded twice from the same code: one class
    assert loaded["from_pipe_shares_unet"] and loaded["latents_are_the_noise"]
    assert loaded["shape"] == [2, 3, 32, 32]
    assert loaded["after_callback"] == [4.0, True]
    assert loaded["fp8_finite"]


def test_an_export_of_a_unet_saved_without_auto_map_gets_one(tmp_path):
    torch.manual_seed(0)
    saved = tmp_path / "trained"
    build_pipeline(create_model("tiny", sample_size=32), DDPMScheduler(), LabelVocabulary()).save_pretrained(saved)
    config_file = saved / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))

    folder = export_pipeline(saved, tmp_path / "export")

    config = json.loads((folder / "unet" / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "conditional_unet.ConditionalUNet2DModel"}

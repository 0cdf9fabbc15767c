"""ICLEVRPipeline: label lists in, images out, with every output type, scheduler and guidance setting."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from pipeline import ICLEVRPipeline, ICLEVRPipelineOutput, LabelError
from pipeline.vocabulary import DEFAULT_LABELS
from training.model_presets import create_model

SIZE = 16
STEPS = 3
LABELS = [["red sphere", "cyan cube"], ["gray cylinder"]]


def _dpm_solver(ddpm: DDPMScheduler) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler.from_config(ddpm.config, algorithm_type="dpmsolver++")


@pytest.fixture(scope="module")
def pipe() -> ICLEVRPipeline:
    torch.manual_seed(0)
    unet = create_model("tiny", sample_size=SIZE).eval()
    pipe = ICLEVRPipeline(unet=unet, scheduler=_dpm_solver(DDPMScheduler(num_train_timesteps=1000)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: ICLEVRPipeline, labels=LABELS, seed: int = 0, **kwargs) -> ICLEVRPipelineOutput:
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(labels, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_pil_output_is_one_rgb_image_per_label_list(pipe):
    images = _generate(pipe, output_type="pil").images
    assert len(images) == len(LABELS)
    assert all(isinstance(image, PIL.Image.Image) and image.size == (SIZE, SIZE) for image in images)
    assert images[0].mode == "RGB"


def test_np_output_is_bhwc_in_unit_range(pipe):
    images = _generate(pipe, output_type="np").images
    assert isinstance(images, np.ndarray) and images.shape == (len(LABELS), SIZE, SIZE, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_pt_output_is_bchw_in_unit_range(pipe):
    images = _generate(pipe, output_type="pt").images
    assert isinstance(images, torch.Tensor) and images.shape == (len(LABELS), 3, SIZE, SIZE)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_an_unknown_output_type_is_rejected(pipe):
    with pytest.raises(ValueError, match="output_type must be one of pil, np, pt, latent"):
        _generate(pipe, output_type="jpeg")


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
def test_every_scheduler_generates_images(pipe, scheduler_class):
    scheduled = ICLEVRPipeline(unet=pipe.unet, scheduler=scheduler_class.from_config(pipe.scheduler.config))
    scheduled.set_progress_bar_config(disable=True)
    images = _generate(scheduled).images
    assert images.shape == (len(LABELS), SIZE, SIZE, 3) and np.isfinite(images).all()


def test_ddpm_runs_every_training_timestep(pipe):
    # A short training schedule stands in for the 1000 steps of a real DDPM run.
    ddpm = ICLEVRPipeline(unet=pipe.unet, scheduler=DDPMScheduler(num_train_timesteps=20))
    ddpm.set_progress_bar_config(disable=True)
    images = _generate(ddpm, num_inference_steps=20).images
    assert np.isfinite(images).all()


def test_guidance_changes_the_images(pipe):
    unguided = _generate(pipe, guidance_scale=1.0).images
    guided = _generate(pipe, guidance_scale=3.0).images
    assert not np.allclose(unguided, guided)


@pytest.mark.parametrize(("guidance_scale", "batch_per_call"), [(1.0, 2), (0.0, 2), (2.5, 4)])
def test_guidance_runs_one_forward_per_step_with_the_unconditional_half_only_when_needed(
    pipe, guidance_scale, batch_per_call
):
    batches = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        _generate(pipe, guidance_scale=guidance_scale)
    finally:
        hook.remove()
    assert batches == [batch_per_call] * STEPS


def test_an_unknown_label_raises_label_error_with_a_suggestion(pipe):
    with pytest.raises(LabelError, match="did you mean 'red sphere'"):
        _generate(pipe, labels=[["red spehre"]])


def test_a_multi_hot_tensor_gives_the_same_images_as_the_names(pipe):
    multi_hot = pipe.vocabulary.encode_batch(LABELS)
    assert np.array_equal(_generate(pipe, labels=multi_hot).images, _generate(pipe).images)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.zeros(2, 23), r"shape \(batch, 24\)"),
        (torch.full((1, 24), 0.5), "every entry 0 or 1"),
        (torch.zeros(1, 24), "empty"),
    ],
)
def test_a_bad_label_tensor_raises_label_error(pipe, labels, message):
    with pytest.raises(LabelError, match=message):
        _generate(pipe, labels=labels)


def test_the_same_generator_seed_gives_the_same_images(pipe):
    assert np.array_equal(_generate(pipe, seed=3).images, _generate(pipe, seed=3).images)
    assert not np.array_equal(_generate(pipe, seed=3).images, _generate(pipe, seed=4).images)


def test_one_generator_per_image_makes_each_image_reproducible_alone(pipe):
    ddpm = ICLEVRPipeline(unet=pipe.unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    ddpm.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    both = ddpm(LABELS, num_inference_steps=STEPS, generator=generators, output_type="np").images
    alone = ddpm(LABELS[1:], num_inference_steps=STEPS, generator=[torch.Generator().manual_seed(2)], output_type="np")
    np.testing.assert_allclose(both[1], alone.images[0], atol=1e-4)  # batch size moves float sums; guidance amplifies


@pytest.mark.parametrize("output_type", ["np", "pil"])
def test_intermediates_are_evenly_spaced_and_end_with_the_final_images(pipe, output_type):
    output = _generate(pipe, num_inference_steps=4, return_intermediates=3, output_type=output_type)
    assert len(output.intermediates) == 3
    final = np.stack([np.asarray(image) for image in output.images])
    last = np.stack([np.asarray(image) for image in output.intermediates[-1]])
    assert np.array_equal(last, final)
    assert not np.array_equal(np.stack([np.asarray(image) for image in output.intermediates[0]]), final)


def test_no_intermediates_unless_asked(pipe):
    assert _generate(pipe).intermediates is None


def test_too_many_intermediates_are_rejected(pipe):
    with pytest.raises(ValueError, match="return_intermediates must be between 0 and"):
        _generate(pipe, num_inference_steps=2, return_intermediates=4)


def test_step_end_callback_sees_and_may_replace_the_latents(pipe):
    steps = []

    def callback(pipeline, step_index, timestep, callback_kwargs):
        steps.append((step_index, tuple(callback_kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    images = _generate(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"]).images
    assert steps == [(i, (len(LABELS), 3, SIZE, SIZE)) for i in range(STEPS)]
    np.testing.assert_allclose(images, 0.5)  # zero latents decode to mid-gray


def test_bf16_pipeline_generates_finite_images(pipe):
    bf16 = ICLEVRPipeline(unet=create_model("tiny", sample_size=SIZE), scheduler=pipe.scheduler).to(torch.bfloat16)
    bf16.set_progress_bar_config(disable=True)
    assert bf16.unet.dtype == torch.bfloat16
    images = _generate(bf16, output_type="pt").images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_a_vocabulary_that_does_not_fit_the_unet_is_rejected(pipe):
    with pytest.raises(LabelError, match="expects 24"):
        ICLEVRPipeline(unet=pipe.unet, scheduler=pipe.scheduler, labels=DEFAULT_LABELS[:5])


def test_save_and_load_keeps_the_vocabulary_scheduler_and_images(pipe, tmp_path):
    # A reordered vocabulary proves the labels come back from model_index.json rather than from the default.
    reordered = list(reversed(DEFAULT_LABELS))
    saved = ICLEVRPipeline(unet=pipe.unet, scheduler=pipe.scheduler, labels=reordered)
    saved.set_progress_bar_config(disable=True)
    saved.save_pretrained(tmp_path)
    loaded = ICLEVRPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert list(loaded.config.labels) == reordered
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler)
    assert loaded.scheduler.config.algorithm_type == "dpmsolver++"
    assert np.array_equal(_generate(loaded).images, _generate(saved).images)

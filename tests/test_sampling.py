"""The pipeline built from a training model samples with x0 clipping, so a fast solver stays in the image range."""

import torch
from diffusers import DDPMScheduler

from pipeline import LabelVocabulary
from training.model_presets import create_model
from training.samplers import sampler_name, set_sampler
from training.sampling import build_pipeline


def largest_latent_during_sampling(pipe) -> float:
    largest = []

    def record(pipe, step, timestep, tensors):
        largest.append(tensors["latents"].abs().max().item())
        return tensors

    pipe(labels=[["red sphere"], ["cyan cube", "gray cylinder"]], num_inference_steps=10, output_type="pt",
         generator=torch.Generator().manual_seed(0), callback_on_step_end=record)
    return max(largest)


def untrained_pipeline():
    torch.manual_seed(0)
    model = create_model("tiny", sample_size=32).eval()
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    return build_pipeline(model, noise_scheduler, LabelVocabulary())


def test_the_pipeline_is_saved_with_the_default_sampler():
    pipe = untrained_pipeline()
    assert sampler_name(pipe.scheduler) == "sde-dpmsolver++"
    assert pipe.scheduler.config.timestep_spacing == "trailing"


def test_dpm_solver_keeps_an_imperfect_epsilon_model_within_the_image_range():
    pipe = untrained_pipeline()
    set_sampler(pipe, "dpmsolver++")
    assert largest_latent_during_sampling(pipe) < 5.0


def test_without_x0_clipping_the_same_sampler_leaves_the_image_range():
    pipe = untrained_pipeline()
    set_sampler(pipe, "dpmsolver++,thresholding=false")
    assert largest_latent_during_sampling(pipe) > 5.0

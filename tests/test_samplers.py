"""Samplers by spec: NAME[,key=value...] builds a scheduler on the model's noise schedule, with x0 clipping unless
turned off; settings are checked against the scheduler; DDIM's eta reaches the sampling steps."""

import pytest
import torch
from diffusers import DDPMScheduler

from pipeline import LabelVocabulary
from training.model_presets import create_model
from training.samplers import SAMPLERS, SamplerError, parse_sampler, sampler_name, set_sampler
from training.sampling import build_pipeline

NOISE_SCHEDULE = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                               prediction_type="v_prediction").config


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_keeps_the_noise_schedule_and_clips_x0(name):
    scheduler = parse_sampler(name).build(NOISE_SCHEDULE)
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.thresholding is True and scheduler.config.sample_max_value == 1.0
    assert sampler_name(scheduler) == name


def test_settings_are_typed_and_reach_the_scheduler():
    sampler = parse_sampler("dpmsolver++,lambda_min_clipped=-5.1,final_sigmas_type=sigma_min,thresholding=false")
    scheduler = sampler.build(NOISE_SCHEDULE)
    assert scheduler.config.lambda_min_clipped == -5.1
    assert scheduler.config.final_sigmas_type == "sigma_min"
    assert scheduler.config.thresholding is False
    assert sampler.spec == "dpmsolver++,lambda_min_clipped=-5.1,final_sigmas_type=sigma_min,thresholding=false"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dpmsolver", "unknown sampler 'dpmsolver'; did you mean 'dpmsolver++'?"),
        ("ddim,timestep_spaceing=trailing",
         "ddim has no setting 'timestep_spaceing'; did you mean 'timestep_spacing'?"),
        ("unipc,eta=1", "eta applies to DDIMScheduler only, not to unipc"),
        ("ddim,eta", "must look like key=value"),
    ],
)
def test_a_bad_spec_is_refused_in_one_line(spec, message):
    with pytest.raises(SamplerError) as error:
        parse_sampler(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_ddim_eta_adds_fresh_noise_at_every_step():
    torch.manual_seed(0)
    pipe = build_pipeline(create_model("tiny", sample_size=16).eval(), DDPMScheduler(), LabelVocabulary())

    def sample(spec: str, seed: int) -> torch.Tensor:
        sampler = set_sampler(pipe, spec)
        return pipe([["red cube"]], num_inference_steps=4, guidance_scale=1.0, output_type="pt",
                    generator=torch.Generator().manual_seed(seed), **sampler.call_kwargs).images

    assert torch.equal(sample("ddim,eta=1", 0), sample("ddim,eta=1", 0))
    assert not torch.equal(sample("ddim,eta=1", 0), sample("ddim", 0))

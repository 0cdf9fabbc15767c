"""Samplers by name: a diffusers scheduler built on a trained model's noise schedule, with settings.

A sampler spec is `NAME` or `NAME,key=value,key=value`, e.g. `dpmsolver++`, `ddim,eta=1`,
`dpmsolver++,lambda_min_clipped=-5.1,final_sigmas_type=sigma_min`. Keys are the scheduler's config arguments, plus
`eta` for DDIM (a pipeline call argument, the amount of fresh noise per step: 0 deterministic, 1 DDPM-like).
Every sampler keeps the model's noise schedule and prediction type (`from_config` of the saved scheduler) and clips
each step's x0 prediction to the image range [-1, 1] unless the spec says otherwise: on pixels an imperfect
epsilon at high noise otherwise turns DPM-Solver++ samples into noise.
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from training.cli import closest
from training.errors import UserError, one_line

# dynamic thresholding capped at 1.0 is exactly a clip of x0 to [-1, 1]
X0_CLIPPING = {"thresholding": True, "sample_max_value": 1.0}

# name -> (scheduler class, settings that define the sampler)
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "sde-dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}
CALL_ARGUMENTS = {"eta": DDIMScheduler}  # pipeline call arguments a spec may set, and the scheduler they need


class SamplerError(UserError, ValueError):
    """A sampler spec that cannot be built; the message names what is allowed."""


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    """`--scheduler SPEC` (see `parse_sampler`); None keeps the sampler the pipeline was saved with."""
    parser.add_argument("--scheduler", default=None,
                        help=f"Sampler: {', '.join(SAMPLERS)}, optionally with settings (NAME,key=value,...; e.g. "
                             "ddim,eta=1); default: the one the pipeline was saved with.")  # fmt: skip


@dataclass(frozen=True)
class Sampler:
    """A parsed spec: `name`, scheduler config overrides, and pipeline call arguments (`eta`)."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    call_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        settings = {**self.config, **self.call_kwargs}
        return ",".join([self.name, *(f"{k}={_format(v)}" for k, v in settings.items())])

    def build(self, base_config: Mapping[str, Any]) -> SchedulerMixin:
        """The scheduler on `base_config`'s noise schedule (betas, timesteps, prediction type)."""
        scheduler_class, defining = SAMPLERS[self.name]
        return scheduler_class.from_config(dict(base_config), **{**X0_CLIPPING, **defining, **self.config})


def _format(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word such as sigma_min or trailing


def parse_sampler(spec: str) -> Sampler:
    """`NAME[,key=value,...]` -> Sampler, checked against the scheduler's arguments."""
    name, *settings = spec.split(",")
    if name not in SAMPLERS:
        raise SamplerError(
            f"unknown sampler {name!r}; did you mean {closest(name, list(SAMPLERS))!r}? "
            f"choose from {', '.join(SAMPLERS)}"
        )
    scheduler_class = SAMPLERS[name][0]
    allowed = [p for p in inspect.signature(scheduler_class.__init__).parameters if p != "self"]
    config: dict[str, Any] = {}
    call_kwargs: dict[str, Any] = {}
    for item in filter(None, settings):
        key, equals, value = item.partition("=")
        if not equals:
            raise SamplerError(f"sampler setting {item!r} in {spec!r} must look like key=value")
        if key in CALL_ARGUMENTS:
            if not issubclass(scheduler_class, CALL_ARGUMENTS[key]):
                raise SamplerError(f"{key} applies to {CALL_ARGUMENTS[key].__name__} only, not to {name}")
            call_kwargs[key] = _parse_value(value)
        elif key in allowed:
            config[key] = _parse_value(value)
        else:
            options = allowed + list(CALL_ARGUMENTS)
            raise SamplerError(f"{name} has no setting {key!r}; did you mean {closest(key, options)!r}?")
    sampler = Sampler(name, config, call_kwargs)
    _try_sampling(sampler, spec)
    return sampler


def _try_sampling(sampler: Sampler, spec: str) -> None:
    """A few steps on a stand-in model output, so that a setting's bad value fails here, in one line, before any
    model is loaded, rather than in the middle of sampling."""
    try:
        scheduler = sampler.build(DDPMScheduler().config)
        scheduler.set_timesteps(3)
        sample = torch.zeros(1, 1, 2, 2)
        for timestep in scheduler.timesteps:
            sample = scheduler.step(torch.zeros_like(sample), timestep, sample, **sampler.call_kwargs).prev_sample
    except Exception as error:  # noqa: BLE001 - whatever diffusers raises, these settings cannot sample
        raise SamplerError(f"sampler {spec!r} cannot sample: {one_line(error)[:300]}") from None


def set_sampler(pipeline, spec: str | Sampler):
    """Swaps the pipeline's scheduler for the sampler `spec` on the same noise schedule; returns the Sampler (its
    `call_kwargs` go to the pipeline call)."""
    sampler = parse_sampler(spec) if isinstance(spec, str) else spec
    pipeline.scheduler = sampler.build(pipeline.scheduler.config)
    return sampler


def sampler_name(scheduler: SchedulerMixin) -> str:
    """The SAMPLERS name of a scheduler (e.g. a loaded pipeline's), or its class name if none matches."""
    for name, (scheduler_class, defining) in SAMPLERS.items():
        if type(scheduler) is scheduler_class and all(scheduler.config.get(k) == v for k, v in defining.items()):
            return name
    return type(scheduler).__name__


def default_scheduler(noise_scheduler_config: Mapping[str, Any]) -> SchedulerMixin:
    """The sampler a trained pipeline is saved with (its `scheduler/`): see DEFAULT_SAMPLER."""
    return parse_sampler(DEFAULT_SAMPLER).build(noise_scheduler_config)


# The best sampler of <= 25 steps measured by benchmarks/bench_samplers.py (the README's sampler table): stochastic
# DPM-Solver++ at 25 steps came within 1.2 points of DDPM's 1000, where every deterministic solver (DPM-Solver++,
# UniPC, DDIM) trailed by 4-6 points, whatever its settings: their probability-flow path keeps an imperfect model's
# errors, which fresh noise at every step washes out. Trailing timesteps start the 25 steps at the noisiest one.
DEFAULT_SAMPLER = "sde-dpmsolver++,timestep_spacing=trailing"

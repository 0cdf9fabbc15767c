"""The training objective: the UNet's target (epsilon, v or x0) at drawn timesteps, optionally Min-SNR weighted,
with label dropout for classifier-free guidance.

The prediction type lives in the noise scheduler's config (`--prediction_type`), which the saved pipeline's
scheduler inherits, so every sampler and every Hub copy read the model's output the way it was trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from training.seeding import derived_generator

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_BIAS_STRATEGIES = ("none", "later", "earlier", "range")
# How often a training image gets the all-zero (unconditional) label vector. Half the usual 0.1: the quick start
# scored higher over five training seeds, the hour command the same (README: What the quick start gives).
DEFAULT_LABEL_DROPOUT = 0.05


def batch_generator(
    seed: int, epoch: int, batch_index: int, process_index: int, device: torch.device
) -> torch.Generator:
    """A generator for one batch's noise, timesteps and label dropout.

    Seeding from the batch's position (not from a running global RNG) makes a resumed run draw exactly what the
    uninterrupted run drew for the same batch, and gives every process its own draws.
    """
    return derived_generator(seed, epoch, batch_index, process_index, device=device)


def timestep_weights(
    num_train_timesteps: int,
    strategy: str = "none",
    *,
    multiplier: float = 1.0,
    portion: float = 0.25,
    begin: int = 0,
    end: int = 1000,
) -> torch.Tensor | None:
    """Relative probabilities of drawing each training timestep, or None for uniform draws.

    "later" multiplies the weight of the last `portion` of the timesteps (the noisiest, where a sample's objects
    and colours are decided) by `multiplier`; "earlier" the first `portion`; "range" the timesteps in [begin, end).
    The flag names follow diffusers' SDXL training example.
    """
    if strategy == "none" or multiplier == 1.0:
        return None
    weights = torch.ones(num_train_timesteps)
    span = max(1, round(portion * num_train_timesteps))
    if strategy == "later":
        weights[-span:] *= multiplier
    elif strategy == "earlier":
        weights[:span] *= multiplier
    elif strategy == "range":
        weights[begin:end] *= multiplier
    else:
        raise ValueError(
            f"timestep bias strategy must be one of {', '.join(TIMESTEP_BIAS_STRATEGIES)}, got {strategy!r}"
        )
    return weights / weights.sum()


def min_snr_weights(
    noise_scheduler: DDPMScheduler, timesteps: torch.Tensor, snr_gamma: float, snr_offset: float = 0.0
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the scheduler's prediction type: each timestep's x0 error
    counts min(SNR + snr_offset, gamma), expressed in the predicted quantity's units.

    With the paper's offset 0 the noisiest steps, where a sample's layout and object count are decided, weigh
    almost nothing (SNR ~0 there). An offset k keeps k of the plain v-prediction loss's weight on them (its x0 weight
    is SNR + 1, Salimans & Ho 2022) and damps the least noisy steps as the paper does (README: Object counts).
    """
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr + snr_offset, max=snr_gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return weights / snr
    if prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights  # "sample": x0 directly


def training_target(
    noise_scheduler: DDPMScheduler, pixel_values: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(pixel_values, noise, timesteps)
    if prediction_type == "sample":
        return pixel_values
    raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


def diffusion_loss(
    model: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    pixel_values: torch.Tensor,
    class_labels: torch.Tensor,
    *,
    label_dropout: float,
    generator: torch.Generator,
    snr_gamma: float | None = None,
    snr_offset: float = 0.0,
    timestep_probabilities: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the model's prediction and its target at drawn timesteps (uniform, or `timestep_probabilities`),
    weighted per sample by Min-SNR-`snr_gamma` (of SNR + `snr_offset`) when given."""
    batch = pixel_values.shape[0]
    device = pixel_values.device
    noise = torch.randn(pixel_values.shape, generator=generator, device=device, dtype=pixel_values.dtype)
    if timestep_probabilities is None:
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator, device=device
        )
    else:
        timesteps = torch.multinomial(
            timestep_probabilities.to(device), batch, replacement=True, generator=generator
        )
    # The all-zero label vector is the unconditional input that guidance contrasts with.
    keep = torch.rand(batch, generator=generator, device=device) >= label_dropout
    class_labels = class_labels * keep[:, None].to(class_labels.dtype)
    noisy = noise_scheduler.add_noise(pixel_values, noise, timesteps)
    predicted = model(noisy, timesteps, class_labels).sample
    target = training_target(noise_scheduler, pixel_values, noise, timesteps)
    if snr_gamma is None:
        return F.mse_loss(predicted.float(), target.float())
    per_sample = F.mse_loss(predicted.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, snr_gamma, snr_offset)).mean()

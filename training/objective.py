"""The training objective: epsilon-prediction MSE with label dropout for classifier-free guidance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from training.seeding import derived_generator


def batch_generator(seed: int, epoch: int, batch_index: int, process_index: int, device: torch.device) -> torch.Generator:
    """A generator for one batch's noise, timesteps and label dropout.

    Seeding from the batch's position (not from a running global RNG) makes a resumed run draw exactly what the
    uninterrupted run drew for the same batch, and gives every process its own draws.
    """
    return derived_generator(seed, epoch, batch_index, process_index, device=device)


def diffusion_loss(
    model: torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    pixel_values: torch.Tensor,
    class_labels: torch.Tensor,
    *,
    label_dropout: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """MSE between the true and predicted noise at uniformly drawn timesteps."""
    batch = pixel_values.shape[0]
    device = pixel_values.device
    noise = torch.randn(pixel_values.shape, generator=generator, device=device, dtype=pixel_values.dtype)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator, device=device
    )
    # The all-zero label vector is the unconditional input that guidance contrasts with.
    keep = torch.rand(batch, generator=generator, device=device) >= label_dropout
    class_labels = class_labels * keep[:, None].to(class_labels.dtype)
    noisy = noise_scheduler.add_noise(pixel_values, noise, timesteps)
    predicted = model(noisy, timesteps, class_labels).sample
    return F.mse_loss(predicted.float(), noise.float())

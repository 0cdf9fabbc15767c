"""Validation in training: sample grids of fixed label lists and the evaluation, shared among the processes."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from PIL import Image

from pipeline import ICLEVRPipeline, LabelVocabulary
from training.evaluation import image_generator
from training.figures import image_grid
from training.training_evaluation import TrainingEvaluation
from training.sampling import build_pipeline, ema_weights, validation_label_lists
from training.tracking import log_images

logger = get_logger(__name__)


class Validation:
    """Every `--validation_steps`, with the EMA weights: the evaluation (with an evaluator) and a grid of the fixed
    validation label lists, saved to output_dir/validation/step-STEP.png and logged with the lists as captions.

    Call on every process: each samples a strided share of the lists, the main process saves and logs.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        noise_scheduler: DDPMScheduler,
        vocabulary: LabelVocabulary,
        output_dir: str | Path,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        seed: int,
        evaluation: TrainingEvaluation | None = None,
    ):
        self.accelerator = accelerator
        self.noise_scheduler = noise_scheduler
        self.vocabulary = vocabulary
        self.output_dir = Path(output_dir)
        self.settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
        self.seed = seed
        self.evaluation = evaluation
        self.label_lists = validation_label_lists(vocabulary)
        self.captions = [", ".join(names) for names in self.label_lists]
        self.last_grid: tuple[int, list[Image.Image]] | None = None  # (step, images) of the latest validation

    def sample(self, pipeline: ICLEVRPipeline) -> list[Image.Image]:
        """One image per validation list; every process gets all of them, in list order.

        Each image has its own generator, derived from (seed, list index), so it does not depend on how the lists
        are split among the processes.
        """
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        indices = list(range(len(self.label_lists)))[rank::world]
        images = []
        if indices:  # more processes than lists leaves some without work
            images = pipeline(
                [self.label_lists[index] for index in indices],
                generator=[image_generator(self.seed, index) for index in indices],
                output_type="pil",
                **self.settings,
            ).images
        gathered = gather_object(list(zip(indices, images)))
        return [image for _, image in sorted(gathered, key=lambda pair: pair[0])]

    def images_at(self, step: int, pipeline: ICLEVRPipeline) -> list[Image.Image]:
        """The grid of the weights at `step`: the validation's own if it ran at that step (the same weights,
        generators and settings draw the same images), else sampled now (a run resumed from its final checkpoint)."""
        if self.last_grid is not None and self.last_grid[0] == step:
            return self.last_grid[1]
        return self.sample(pipeline)

    def __call__(self, model: torch.nn.Module, ema: EMAModel | None, step: int) -> None:
        # The plain module: a compiled one would recompile for sampling's batch shapes and eval mode.
        sampling_model = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        with ema_weights(ema, sampling_model), self.accelerator.autocast():
            sampling_model.eval()
            pipeline = build_pipeline(sampling_model, self.noise_scheduler, self.vocabulary)
            if self.evaluation is not None:
                report = self.evaluation(self.accelerator, pipeline, step)
                logger.info(
                    f"step {step}: evaluated {report['num_images']} images, mean accuracy "
                    f"{report['mean_accuracy']:.4f}, mean exact match {report['mean_exact_match']:.4f}"
                )
            images = self.sample(pipeline)
            sampling_model.train()
        self.last_grid = (step, images)
        if self.accelerator.is_main_process:
            (self.output_dir / "validation").mkdir(parents=True, exist_ok=True)
            image_grid(images).save(self.output_dir / "validation" / f"step-{step:06d}.png")
            log_images(self.accelerator, "validation", images, self.captions, step)

"""How the evaluator scores true renders of a condition file's label lists: the most a generated image can score.

A model's accuracy on test.json means something only beside what the judge gives images that are right by
construction. Each list is rendered `renders_per_list` times by the synthetic i-CLEVR renderer (other placements,
sizes and turns each time), reduced to the model's resolution as training images are, and scored with the course's
top-k rule. On this project's evaluator the real test.json's and new_test.json's lists both score 100 % (README,
Evaluation), so what a model loses there is its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.vocabulary import DEFAULT_LABELS, LabelVocabulary
from training.data import resize_image, to_pixel_values
from training.evaluator import evaluation_metrics
from training.synthetic_iclevr import arrange_scene, render_scene


def render_label_lists(
    label_lists: Sequence[Sequence[str]], resolution: int, renders_per_list: int = 10, seed: int = 0
) -> torch.Tensor:
    """(len(label_lists) * renders_per_list, 3, resolution, resolution) float images in [-1, 1], list after list."""
    unknown = sorted({label for labels in label_lists for label in labels} - set(DEFAULT_LABELS))
    if unknown:
        raise ValueError(f"the renderer draws i-CLEVR's 24 labels only, not {unknown}; the judge's ceiling needs them")
    images = []
    for index, labels in enumerate(label_lists):
        for render in range(renders_per_list):
            objects = arrange_scene(labels, np.random.default_rng([seed, index, render]))
            images.append(to_pixel_values(resize_image(render_scene(objects), resolution)))
    return torch.stack(images)


@torch.no_grad()
def judge_ceiling(
    evaluator: torch.nn.Module,
    label_lists: Sequence[Sequence[str]],
    vocabulary: LabelVocabulary,
    resolution: int,
    renders_per_list: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """The evaluator's metrics (accuracy, exact match, per-label recall) on true renders of the lists."""
    images = render_label_lists(label_lists, resolution, renders_per_list, seed)
    targets = vocabulary.encode_batch([labels for labels in label_lists for _ in range(renders_per_list)])
    device = next(evaluator.parameters()).device
    evaluator.eval()
    probs = torch.cat([evaluator(batch.to(device)).float().cpu() for batch in images.split(batch_size)])
    return evaluation_metrics(probs, targets, vocabulary.labels)

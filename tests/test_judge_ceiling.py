"""training/judge_ceiling.py: true renders of condition lists, scored by the evaluator (evaluate.py --judge_ceiling)."""

import pytest
import torch

from pipeline import LabelVocabulary
from training.evaluator import build_evaluator
from training.judge_ceiling import judge_ceiling, render_label_lists
from training.synthetic_iclevr import RGB


def colour_share(images: torch.Tensor, colour: str) -> torch.Tensor:
    """Per image, the share of pixels closer to the colour's RGB than to 40 levels of it."""
    target = torch.tensor(RGB[colour], dtype=torch.float32).div(127.5).sub(1.0)[:, None, None]
    return ((images - target).abs().amax(dim=1) < 0.3).float().mean(dim=(1, 2))


def test_renders_come_list_after_list_at_the_resolution_in_minus_one_to_one():
    images = render_label_lists([["red sphere"], ["blue cube"]], resolution=32, renders_per_list=2)

    assert images.shape == (4, 3, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0
    red, blue = colour_share(images, "red"), colour_share(images, "blue")
    assert (red[:2] > blue[:2]).all() and (blue[2:] > red[2:]).all()


def test_each_render_of_a_list_is_another_scene_and_the_seed_repeats_them():
    first = render_label_lists([["gray cylinder", "cyan cube"]], resolution=32, renders_per_list=3, seed=5)
    again = render_label_lists([["gray cylinder", "cyan cube"]], resolution=32, renders_per_list=3, seed=5)

    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])


def test_labels_the_renderer_cannot_draw_are_refused():
    with pytest.raises(ValueError, match="'pink cube'"):
        render_label_lists([["pink cube"]], resolution=32)


def test_the_ceiling_scores_every_render_of_every_list():
    torch.manual_seed(0)
    metrics = judge_ceiling(build_evaluator(), [["red cube"], ["blue sphere", "gray cylinder"]], LabelVocabulary(),
                            resolution=32, renders_per_list=3)

    assert metrics["num_images"] == 6
    assert 0.0 <= metrics["accuracy"] <= 1.0 and set(metrics["per_label_recall"]) == set(LabelVocabulary().labels)

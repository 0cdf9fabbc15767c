"""The object counter on built-in renders, whose objects are known."""

import numpy as np
import pytest

from pipeline.vocabulary import DEFAULT_LABELS
from training.data import resize_image
from training.object_count import count_objects
from training.synthetic_iclevr import SceneObject, render_scene


def _render(objects: list[SceneObject], resolution: int = 32) -> np.ndarray:
    return resize_image(render_scene(objects), resolution).astype(np.float32) / 255


def test_an_empty_floor_has_no_objects():
    assert count_objects(_render([])) == 0


@pytest.mark.parametrize("label", DEFAULT_LABELS)
def test_every_single_object_counts_once(label):
    assert count_objects(_render([SceneObject(label=label, size="large", position=(0.0, 0.0))])) == 1


@pytest.mark.parametrize("resolution", [32, 64])
def test_two_apart_count_two(resolution):
    objects = [SceneObject(label="gray cube", size="large", position=(-2.5, -1.0)),
               SceneObject(label="yellow cylinder", size="small", position=(2.5, 1.5))]  # fmt: skip
    assert count_objects(_render(objects, resolution)) == 2


def test_a_grayscale_image_is_refused():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        count_objects(np.zeros((32, 32)))

"""The object counters on built-in renders, whose objects are known."""

import numpy as np
import pytest

from pipeline.vocabulary import DEFAULT_LABELS
from training.data import resize_image
from training.object_count import count_objects, count_objects_by_colour
from training.sampling import VALIDATION_LABELS
from training.synthetic_iclevr import SceneObject, arrange_scene, render_scene


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


@pytest.mark.parametrize("counter", [count_objects, count_objects_by_colour])
def test_a_grayscale_image_is_refused(counter):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        counter(np.zeros((32, 32)))


def test_the_colour_counter_finds_no_object_on_an_empty_floor():
    assert count_objects_by_colour(_render([])) == 0


@pytest.mark.parametrize("label", DEFAULT_LABELS)
def test_the_colour_counter_counts_every_single_object_once(label):
    # Gray objects included: their dark side is darker than any shadow, their lit side as light as the floor.
    assert count_objects_by_colour(_render([SceneObject(label=label, size="large", position=(0.0, 0.0))])) == 1


# Two objects side by side in the middle of the floor whose boxes overlap: one blob for count_objects.
_TOUCHING = [(-0.55, 0.0), (0.55, 0.0)]


@pytest.mark.parametrize(("first", "second"), [("red cube", "brown cylinder"), ("gray sphere", "blue cube"),
                                                ("cyan cylinder", "yellow sphere")])  # fmt: skip
def test_touching_objects_of_two_colours_count_two_by_colour_and_one_as_a_blob(first, second):
    image = _render([SceneObject(label=label, size="large", position=position)
                     for label, position in zip((first, second), _TOUCHING)])  # fmt: skip
    assert count_objects(image) == 1
    assert count_objects_by_colour(image) == 2


def test_touching_objects_of_one_colour_still_merge():
    image = _render([SceneObject(label=label, size="large", position=(x, 0.0))
                     for label, x in (("green cube", -0.45), ("green sphere", 0.45))])  # fmt: skip
    assert count_objects(image) == 1
    assert count_objects_by_colour(image) == 1


@pytest.mark.parametrize("resolution", [32, 64])
def test_the_colour_counter_counts_most_three_object_renders_of_samples_png_lists_where_blobs_fail(resolution):
    three = [labels for labels in VALIDATION_LABELS if len(labels) == 3]
    images = [_render(arrange_scene(labels, np.random.default_rng([index, render])), resolution)
              for index, labels in enumerate(three) for render in range(10)]  # fmt: skip
    by_colour = sum(count_objects_by_colour(image) == 3 for image in images)
    as_blobs = sum(count_objects(image) == 3 for image in images)
    assert by_colour >= 0.85 * len(images) and as_blobs <= 0.5 * len(images)  # 27 and 11-14 of 30

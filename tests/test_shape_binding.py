"""training/shape_binding.py: a requested object judged against the shapes of its colour that its list lacks."""

import pytest

from pipeline.vocabulary import DEFAULT_LABELS
from training.errors import UserError
from training.shape_binding import drawn_with_its_shape, require_iclevr_labels

LABELS = list(DEFAULT_LABELS)


def probs_with(**scores: float) -> list[float]:
    probs = [0.1] * len(LABELS)
    for name, score in scores.items():
        probs[LABELS.index(name.replace("_", " "))] = score
    return probs


def test_a_cube_drawn_as_a_cylinder_is_not_drawn_with_its_shape():
    asked = ["brown cylinder", "red cube"]
    probs = probs_with(brown_cylinder=0.9, red_cube=0.6, red_cylinder=0.8)
    assert not drawn_with_its_shape("red cube", asked, probs, LABELS)
    assert drawn_with_its_shape("brown cylinder", asked, probs, LABELS)


def test_a_requested_shape_of_the_same_colour_is_not_a_rival():
    asked = ["red sphere", "cyan cylinder", "cyan cube"]
    probs = probs_with(red_sphere=0.9, cyan_cylinder=0.9, cyan_cube=0.7, cyan_sphere=0.2)
    assert drawn_with_its_shape("cyan cube", asked, probs, LABELS)
    assert not drawn_with_its_shape("cyan cube", asked, probs_with(cyan_cube=0.2, cyan_sphere=0.3), LABELS)


def test_labels_other_than_iclevrs_are_refused_with_one_line():
    require_iclevr_labels(LABELS + ["pink cone"], "iclevr-ddpm")
    with pytest.raises(UserError, match="^my-pipe does not draw i-CLEVR's labels"):
        require_iclevr_labels(["cat", "dog"], "my-pipe")

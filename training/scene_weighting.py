"""How often each training image is shown per epoch: scenes with two objects of one colour, more often.

Binding one colour to two shapes is what a class-conditional model of i-CLEVR learns last: after an hour of
training on this project's CPU, the labels recalled worst on new_test.json (whose lists all pair objects of one
colour) were exactly such objects (README, "Accuracy per CPU-minute"). Only ~11 % of i-CLEVR's images show two
objects of one colour, so showing those `repeats` times per epoch gives the hard case more of a fixed budget.
A label's colour is its first word when that is one of i-CLEVR's eight colours ("red cube" -> "red"); labels of
other vocabularies have none, so for them every image is shown once whatever the setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.vocabulary import COLOURS


def colour_of(label: str) -> str | None:
    """The i-CLEVR colour word a label starts with ("red cube" -> "red"), or None."""
    first, _, rest = label.partition(" ")
    return first if rest and first in COLOURS else None


def shares_a_colour(labels: Sequence[str]) -> bool:
    """Whether two of the scene's objects have the same (i-CLEVR) colour."""
    colours = [colour for colour in map(colour_of, labels) if colour is not None]
    return len(set(colours)) < len(colours)


def epoch_order(label_lists: Sequence[Sequence[str]], same_colour_repeats: int = 1) -> np.ndarray:
    """Image index per dataset position: every image once, an image that shares a colour `same_colour_repeats` times.

    The result is what a shuffling sampler permutes each epoch, so repeated images land at random places in it.
    """
    if same_colour_repeats < 1:
        raise ValueError(
            f"same_colour_repeats must be a whole number >= 1 (1 = every image once), got {same_colour_repeats}"
        )
    indices = np.arange(len(label_lists))
    if same_colour_repeats == 1:
        return indices
    counts = np.array([same_colour_repeats if shares_a_colour(labels) else 1 for labels in label_lists])
    return np.repeat(indices, counts)

"""How often each training image is shown per epoch: scenes with two objects of one colour, more often.

Binding one colour to two shapes is what a class-conditional model of i-CLEVR learns last: after an hour of
training on this project's CPU, the labels recalled worst on new_test.json (whose lists all pair objects of one
colour) are exactly such objects (benchmarks/bench_recipe.py; README, "Accuracy per CPU-minute"). Only ~11 % of
i-CLEVR's images show two objects of one colour, so showing those `repeats` times per epoch gives the hard case
more of a fixed budget. Labels are read as "<colour> <shape>" (i-CLEVR's "red cube"): the first word is the colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def colour_of(label: str) -> str:
    """The colour word of an i-CLEVR style label ("red cube" -> "red")."""
    words = label.split()
    if len(words) < 2:
        raise ValueError(
            f"label {label!r} is not named '<colour> <shape>' (like 'red cube'), so same-colour scenes cannot be "
            f"found; train without --same_colour_repeats (or with 1)"
        )
    return words[0]


def shares_a_colour(labels: Sequence[str]) -> bool:
    """Whether two of the scene's objects have the same colour."""
    colours = [colour_of(label) for label in labels]
    return len(set(colours)) < len(colours)


def epoch_order(label_lists: Sequence[Sequence[str]], same_colour_repeats: int = 1) -> np.ndarray:
    """Image index per dataset position: every image once, an image that shares a colour `same_colour_repeats` times.

    The result is what a shuffling sampler permutes each epoch, so repeated images land at random places in it.
    """
    if same_colour_repeats < 1:
        raise ValueError(f"same_colour_repeats must be a whole number >= 1 (1 = every image once), got {same_colour_repeats}")
    indices = np.arange(len(label_lists))
    if same_colour_repeats == 1:
        return indices
    counts = np.array([same_colour_repeats if shares_a_colour(labels) else 1 for labels in label_lists])
    return np.repeat(indices, counts)

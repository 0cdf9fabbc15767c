"""Whether a generated object has the shape its label asks for, or the shape of another object in its list.

Label accuracy counts "red cube" as recalled when the evaluator ranks it among the list's top k, which a red
rounded box beside a brown cylinder can still reach. This judges one requested object at a time against the shapes
of its colour that the list does not ask for ("cyan cube" beside "cyan cylinder" competes with "cyan sphere" alone).
An object drawn in another colour, or not at all, is not drawn with its shape either.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.vocabulary import DEFAULT_LABELS, SHAPES
from training.errors import UserError


def drawn_with_its_shape(label: str, asked: Sequence[str], probs: Sequence[float], labels: Sequence[str]) -> bool:
    """Whether the evaluator scores `label` ("red cube") above each shape of its colour that `asked` lacks."""
    colour, _ = label.split(" ")
    rivals = [f"{colour} {shape}" for shape in SHAPES if f"{colour} {shape}" not in asked]
    score = probs[labels.index(label)]
    return all(score > probs[labels.index(rival)] for rival in rivals)


def require_iclevr_labels(labels: Sequence[str], source: str) -> None:
    """Raises a one-line error unless `labels` hold i-CLEVR's 24, whose colours and shapes the judgement needs."""
    if not set(DEFAULT_LABELS) <= set(labels):
        raise UserError(f"{source} does not draw i-CLEVR's labels; shape binding needs its colours and shapes")

"""The i-CLEVR label vocabulary: label names <-> multi-hot vectors.

This file ships to the Hub beside the pipeline, so it imports nothing but the standard library and torch.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Iterable, Sequence

import torch

COLOURS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
# objects.json order: every cube first, then spheres, then cylinders, colours in COLOURS order.
DEFAULT_LABELS = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
DEFAULT_MAX_OBJECTS = 3


class LabelError(ValueError):
    """A label list that the vocabulary cannot encode."""


class LabelVocabulary:
    """An ordered list of label names; encodes label lists to multi-hot vectors and back."""

    def __init__(self, labels: Sequence[str] = DEFAULT_LABELS, *, max_objects: int | None = DEFAULT_MAX_OBJECTS):
        labels = [str(label) for label in labels]
        if not labels:
            raise LabelError("a vocabulary needs at least one label")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise LabelError(f"the vocabulary lists {repeated[0]!r} more than once; every label must be unique")
        self.labels: list[str] = labels
        self.max_objects = max_objects
        self._index = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_objects_json(cls, path: str | Path, *, max_objects: int | None = DEFAULT_MAX_OBJECTS) -> "LabelVocabulary":
        """Reads an i-CLEVR `objects.json` ({"gray cube": 0, ...}); indices must be 0..n-1, each once."""
        path = Path(path)
        try:
            mapping = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabelError(f"{path} does not exist; give the objects.json that maps label names to indices") from None
        except json.JSONDecodeError as error:
            raise LabelError(f"{path} is not valid JSON ({error}); expected {{\"gray cube\": 0, ...}}") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise LabelError(f"{path} must map label names to integer indices, like {{\"gray cube\": 0, ...}}")
        if sorted(mapping.values()) != list(range(len(mapping))):
            raise LabelError(f"{path}: indices must be 0..{len(mapping) - 1}, each used once")
        return cls(sorted(mapping, key=mapping.__getitem__), max_objects=max_objects)

    def to_objects_json(self) -> dict[str, int]:
        return dict(self._index)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelVocabulary) and self.labels == other.labels

    def __repr__(self) -> str:
        return f"LabelVocabulary({len(self)} labels, max_objects={self.max_objects})"

    def closest(self, name: str) -> str:
        """The valid label that looks most like `name` (for error messages)."""
        matches = difflib.get_close_matches(str(name).lower().strip(), self.labels, n=1, cutoff=0.0)
        return matches[0] if matches else self.labels[0]

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise LabelError(
                f"{name!r} is not a label; did you mean {self.closest(name)!r}? valid labels: {', '.join(self.labels)}"
            ) from None

    def validate(self, names: Sequence[str]) -> list[str]:
        """Checks one label list (known names, not empty, no repeats, not too many) and returns it as a list."""
        if isinstance(names, str):
            raise LabelError(f"a label list must be a list of names, got the string {names!r}; write [{names!r}]")
        names = list(names)
        if not names:
            raise LabelError("a label list is empty; give at least one label, e.g. ['red sphere']")
        for name in names:
            self.index(name)
        for name in names:
            if names.count(name) > 1:
                raise LabelError(f"{name!r} appears {names.count(name)} times in {names}; each label may appear once")
        if self.max_objects is not None and len(names) > self.max_objects:
            raise LabelError(f"{names} has {len(names)} labels; the model supports at most {self.max_objects} objects")
        return names

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        """One label list -> float multi-hot vector of shape (len(self),)."""
        vector = torch.zeros(len(self), dtype=torch.float32)
        for name in self.validate(names):
            vector[self._index[name]] = 1.0
        return vector

    def encode_batch(self, label_lists: Iterable[Sequence[str]]) -> torch.Tensor:
        """Several label lists -> (batch, len(self)) float multi-hot matrix."""
        rows = [self.encode(names) for names in label_lists]
        if not rows:
            raise LabelError("no label lists given; pass at least one, e.g. [['red sphere']]")
        return torch.stack(rows)

    def decode(self, vector: torch.Tensor, threshold: float = 0.5) -> list[str]:
        """Multi-hot vector -> label names above `threshold`, in vocabulary order."""
        vector = torch.as_tensor(vector).flatten()
        if vector.numel() != len(self):
            raise LabelError(f"a label vector must have {len(self)} entries, got {vector.numel()}")
        return [self.labels[i] for i in torch.nonzero(vector > threshold).flatten().tolist()]

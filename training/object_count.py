"""Counting the objects in an i-CLEVR-like image, to check what label accuracy cannot: one label, one object.

The evaluator's top-k accuracy only asks whether the requested objects are there, so a model that draws "blue
sphere" as three blue spheres scores 100 %. This counter finds the objects as blobs that stand out from the floor:
the floor is a smooth gray that changes from row to row, so each row's median colour is its floor colour (objects
cover less than half of any row), and pixels that differ from it in any channel by more than `threshold` (shadows
included, they touch their object) form 4-connected blobs. Objects that touch or overlap in the image merge into
one blob, so the counter undercounts crowded scenes; a blob of a lone object is never split. That makes it exact
for what it is used for, single-object lists: on the built-in renders every 1-object image counts 1, and most
2-object images count 2 (benchmarks/bench_object_count.py measures both beside the model it scores).
"""

from __future__ import annotations

import numpy as np

# Calibrated on built-in renders reduced to 32x32 (the counter's reliability is printed by the benchmark).
DEFAULT_THRESHOLD = 0.14
# Smallest blob taken for an object, in pixels of a 32x32 image (scaled with the image area); a small far sphere
# covers ~16.
MIN_AREA_32 = 8


def count_objects(image: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Number of objects in `image`, (H, W, 3) floats in [0, 1] (a pipeline's output_type="np" image)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    floor = np.median(image, axis=1, keepdims=True)
    mask = np.abs(image - floor).max(axis=2) > threshold
    min_area = max(1, round(MIN_AREA_32 * mask.size / (32 * 32)))
    return sum(area >= min_area for area in _blob_areas(mask))


def _blob_areas(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected True regions of a 2-D mask (a flood fill; images here are at most 64x64)."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    areas = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        stack, area = [(y, x)], 0
        while stack:
            cy, cx = stack.pop()
            area += 1
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        areas.append(area)
    return areas

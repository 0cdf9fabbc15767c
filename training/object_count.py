"""Counting the objects in an i-CLEVR-like image, to check what label accuracy cannot: one label, one object.

The evaluator's top-k accuracy only asks whether the requested objects are there, so a model that draws "blue
sphere" as three blue spheres scores 100 %. Two counters, both calibrated on the built-in renders
(benchmarks/bench_object_count.py measures them beside the model it scores):

- `count_objects` finds the objects as blobs that stand out from the floor: the floor is a smooth gray that changes
  from row to row, so each row's median colour is its floor colour, and pixels that differ from it in any channel
  by more than `threshold` (shadows included, they touch their object) form 4-connected blobs. Objects that touch
  or overlap merge into one blob, so it undercounts crowded scenes (71 % of 2-object and 40 % of 3-object renders
  exact at 32x32); a blob of a lone object is never split, so it is exact for single-object lists.
- `count_objects_by_colour` also tells touching objects apart by colour, for lists of several objects (95-100 % of
  1-, 2- and 3-object renders exact); only touching objects of one colour still merge.
"""

from __future__ import annotations

import numpy as np

from training.synthetic_iclevr import RGB, SHADOW_DARKNESS

# Calibrated on built-in renders reduced to 32x32 (the counter's reliability is printed by the benchmark).
DEFAULT_THRESHOLD = 0.14
# Smallest blob taken for an object, in pixels of a 32x32 image (scaled with the image area); a small far sphere
# covers ~16.
MIN_AREA_32 = 8
# Foreground pixels at least this saturated ((max - min) / max of RGB) belong to a coloured object; the floor, its
# shadows and gray objects are below 0.05, the darkest shaded side of a coloured object above 0.6.
SATURATION = 0.4
# Unsaturated foreground darker than this share of its floor is a gray object, as no shadow gets that dark.
GRAY_CORE = 1.0 - SHADOW_DARKNESS - 0.08
# The seven coloured i-CLEVR colours as chromaticities (r, g, b) / (r + g + b), which shading leaves unchanged.
_CHROMATICITIES = np.array([np.array(rgb) / sum(rgb) for name, rgb in RGB.items() if name != "gray"], np.float32)


def count_objects(image: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Number of objects in `image`, (H, W, 3) floats in [0, 1] (a pipeline's output_type="np" image)."""
    _check_image(image)
    floor = np.median(image, axis=1, keepdims=True)
    mask = np.abs(image - floor).max(axis=2) > threshold
    labels, count = _blob_labels(mask)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return int((areas >= _min_area(mask)).sum())


def count_objects_by_colour(image: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD) -> int:
    """Number of objects in an i-CLEVR `image`, (H, W, 3) floats in [0, 1], touching objects told apart by colour.

    The floor of each row is the median of its unsaturated pixels (coloured objects may fill half a row). Saturated
    foreground pixels take the nearest i-CLEVR colour, and each colour's blobs count separately; a gray object is an
    unsaturated foreground blob (the object with its shadow) that holds a core darker than any shadow. A blob counts
    when it has an interior pixel (all four neighbours in it), so one-pixel fringes of a neighbouring colour along an
    edge do not.
    """
    _check_image(image)
    value = image.max(axis=2)
    saturation = (value - image.min(axis=2)) / np.maximum(value, 1e-3)
    floor = _unsaturated_row_floor(image, saturation)
    foreground = np.abs(image - floor).max(axis=2) > threshold
    coloured = foreground & (saturation > SATURATION)
    chromaticity = image / np.maximum(image.sum(axis=2, keepdims=True), 1e-3)
    nearest = ((chromaticity[:, :, None] - _CHROMATICITIES) ** 2).sum(axis=3).argmin(axis=2)
    min_area, count = _min_area(foreground), 0
    for colour in range(len(_CHROMATICITIES)):
        mask = coloured & (nearest == colour)
        labels, blobs = _blob_labels(mask)
        areas = np.bincount(labels.ravel(), minlength=blobs + 1)
        with_interior = np.bincount(labels[_interior(mask)], minlength=blobs + 1) > 0
        count += int(((areas >= min_area) & with_interior)[1:].sum())
    unsaturated = foreground & ~coloured
    core = unsaturated & (image.mean(axis=2) < GRAY_CORE * floor.mean(axis=2))
    labels, _ = _blob_labels(unsaturated)
    return count + len(np.unique(labels[_interior(core)]))


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")


def _min_area(mask: np.ndarray) -> int:
    return max(1, round(MIN_AREA_32 * mask.size / (32 * 32)))


def _unsaturated_row_floor(image: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """(H, 1, 3): each row's median over its unsaturated pixels (all of the row where fewer than 4 are)."""
    rows = []
    for row, row_saturation in zip(image, saturation):
        plain = row[row_saturation < SATURATION / 2]
        rows.append(np.median(plain if len(plain) >= 4 else row, axis=0))
    return np.stack(rows)[:, None, :]


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` whose four neighbours are in it too."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _blob_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 4-connected True regions of a 2-D mask numbered 1..count, 0 elsewhere (a flood fill; images here are at
    most 64x64)."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        stack = [(y, x)]
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels, count

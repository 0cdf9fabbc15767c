"""A synthetic i-CLEVR: CLEVR-like scenes drawn with numpy, written in the real i-CLEVR folder layout.

Every scene holds three objects on a grey floor and is drawn three times, adding one object each time, exactly
like i-CLEVR (`CLEVR_train_%06d_0.png` shows one object, `_1` two, `_2` three); the labels are drawn uniformly,
as the real train.json's are. `objects_per_scene` up to 5 draws fuller scenes the same way (1 to 5 objects, like
the renders the course's evaluator was trained on). The drawing is a small analytic renderer: a pinhole camera
looking down at the floor, solids shaded by one light, anti-aliased with signed distances evaluated only inside
each object's bounding box. Everything is seeded from (seed, scene index), so any number of worker processes gives
byte-identical files.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pipeline.vocabulary import COLOURS, DEFAULT_LABELS, SHAPES, LabelVocabulary
from training.atomic_folders import make_temporary_folder, replace_folder

WIDTH, HEIGHT = 320, 240
# Part of the built-in render's cache folder name: bump it whenever a change alters the rendered images or labels,
# so that caches made by an older renderer are not reused as if they were this one's.
RENDERER_VERSION = 2  # 2: training scenes draw their labels uniformly, no combination held out (like the real set)
OBJECTS_PER_SCENE = 3  # i-CLEVR's training scenes
MAX_OBJECTS_PER_SCENE = 5  # the most the floor holds readably at 64x64 (the course evaluator saw 1-5)
NUM_CONDITIONS = 32  # label lists in test.json and new_test.json, like the real files
IMAGE_NAME = "CLEVR_train_{scene:06d}_{step}.png"

RGB = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
# Sphere radius in floor units. Larger than CLEVR's 0.7 / 0.35 so that even a small far object stays readable
# once the image is shrunk to 64x64.
SIZES = {"large": 1.0, "small": 0.7}
# Cube half side and cylinder radius (= half height) relative to the sphere radius, so that the three shapes
# look about equally big (CLEVR shrinks cubes the same way).
_SHAPE_SCALE = {"sphere": 1.0, "cube": 0.8, "cylinder": 0.88}
# A placement is rejected when its screen box overlaps another box by more than this share of the smaller box.
MAX_OVERLAP = 0.12
_FRAME_MARGIN = 3  # pixels between every object and the image border
_PLACEMENT_TRIES = 200

# Camera: at height and distance looking down at the floor origin, like CLEVR's camera.
_PITCH = math.radians(42.0)
_CAMERA_DISTANCE = 16.0
_FOCAL = 780.0
_PRINCIPAL = (WIDTH / 2, HEIGHT / 2 + 10)
_CAMERA = np.array([0.0, -_CAMERA_DISTANCE * math.cos(_PITCH), _CAMERA_DISTANCE * math.sin(_PITCH)])
_RIGHT = np.array([1.0, 0.0, 0.0])
_FORWARD = np.array([0.0, math.cos(_PITCH), -math.sin(_PITCH)])
_UP = np.array([0.0, math.sin(_PITCH), math.cos(_PITCH)])
_FLOOR_X = (-3.2, 3.2)
_FLOOR_Y = (-2.6, 2.5)

# One key light from the upper left, slightly behind the camera; shadows fall to the right and away.
_LIGHT = np.array([-0.55, -0.35, 0.76])
_LIGHT /= np.linalg.norm(_LIGHT)
_AMBIENT, _DIFFUSE = 0.36, 0.74
# A shadow darkens the floor by at most this share (training/object_count.py relies on it to tell gray objects
# from shadows).
SHADOW_DARKNESS = 0.42


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: its label and where it stands on the floor (data only, no pixels)."""

    label: str  # "<colour> <shape>", a vocabulary name
    size: str  # "large" or "small"
    position: tuple[float, float]  # floor coordinates (x to the right, y away from the camera)
    rotation: float = 0.0  # degrees about the vertical axis (only visible on cubes)

    @property
    def colour(self) -> str:
        return self.label.split(" ")[0]

    @property
    def shape(self) -> str:
        return self.label.split(" ")[1]

    @property
    def extent(self) -> float:
        """Sphere radius, cube half side or cylinder radius (floor units)."""
        return SIZES[self.size] * _SHAPE_SCALE[self.shape]


# ----------------------------------------------------------------------------------------------- scene sampling


def unusual_combinations(seed: int) -> tuple[tuple[str, ...], ...]:
    """The 32 label lists of new_test.json: like the real new_test, they put several objects of one colour together:
    16 same-colour pairs, and 16 triples made of one of the other 8 same-colour pairs plus an object of another colour.

    They are not held out of training: the real train.json holds every one of the real new_test's 32 lists as a
    scene (its labels are drawn uniformly), so these lists are unusual, not unseen.
    """
    rng = np.random.default_rng([seed, 1])
    pairs = [(f"{colour} {a}", f"{colour} {b}") for colour in COLOURS for a, b in itertools.combinations(SHAPES, 2)]
    order = rng.permutation(len(pairs))
    chosen_pairs = [pairs[i] for i in order[: NUM_CONDITIONS // 2]]
    other_pairs = [pairs[i] for i in order[NUM_CONDITIONS // 2 :]]
    triples: list[tuple[str, ...]] = []
    while len(triples) < NUM_CONDITIONS - len(chosen_pairs):
        pair = other_pairs[len(triples) % len(other_pairs)]
        colour = pair[0].split(" ")[0]
        others = [label for label in DEFAULT_LABELS if not label.startswith(colour + " ")]
        triple = (*pair, others[rng.integers(len(others))])
        if all(set(triple) != set(existing) for existing in triples):
            triples.append(triple)
    return tuple(triples) + tuple(chosen_pairs)


def sample_scene(seed: int, scene_index: int, objects_per_scene: int = OBJECTS_PER_SCENE) -> list[SceneObject]:
    """Scene `scene_index` of the dataset seeded with `seed`: its objects in the order they are added."""
    rng = np.random.default_rng([seed, 0, scene_index])  # per scene, so worker order never matters
    # Distinct labels drawn uniformly, as the real train.json's are (about 11 % of its images show two objects of
    # one colour, the rate uniform drawing gives).
    labels = [DEFAULT_LABELS[i] for i in rng.choice(len(DEFAULT_LABELS), objects_per_scene, replace=False)]
    return arrange_scene(labels, rng)


def arrange_scene(labels: Sequence[str], rng: np.random.Generator) -> list[SceneObject]:
    """The labelled objects placed on the floor (sizes, positions, turns drawn from `rng`), in the order given."""
    while True:  # place the objects one by one; start over in the rare case the floor gets too crowded
        objects: list[SceneObject] = []
        for label in labels:
            placed = _place(rng, label, objects)
            if placed is None:
                break
            objects.append(placed)
        if len(objects) == len(labels):
            return objects


def sample_scenes(num_scenes: int, seed: int, objects_per_scene: int = OBJECTS_PER_SCENE) -> list[list[SceneObject]]:
    """The first `num_scenes` scenes of the dataset seeded with `seed` (data only: labels, sizes, positions)."""
    return [sample_scene(seed, index, objects_per_scene) for index in range(num_scenes)]


def _place(rng: np.random.Generator, label: str, others: list[SceneObject]) -> SceneObject | None:
    shape = label.split(" ")[1]
    for _ in range(_PLACEMENT_TRIES):
        candidate = SceneObject(
            label=label,
            size="large" if rng.random() < 0.5 else "small",
            position=(float(rng.uniform(*_FLOOR_X)), float(rng.uniform(*_FLOOR_Y))),
            # Cubes turn 15-75 degrees so that three faces (top and two sides) always show.
            rotation=float(rng.uniform(15.0, 75.0)) if shape == "cube" else 0.0,
        )
        box = _screen_box(candidate)
        inside = (
            box[0] >= _FRAME_MARGIN
            and box[1] >= _FRAME_MARGIN
            and box[2] <= WIDTH - _FRAME_MARGIN
            and box[3] <= HEIGHT - _FRAME_MARGIN
        )
        if inside and all(_compatible(candidate, box, other) for other in others):
            return candidate
    return None


def _compatible(candidate: SceneObject, box: tuple[float, ...], other: SceneObject) -> bool:
    # Solids must not intersect on the floor, and neither may hide much of the other on screen.
    gap = math.dist(candidate.position, other.position)
    if gap < _footprint(candidate) + _footprint(other) + 0.1:
        return False
    other_box = _screen_box(other)
    overlap_w = min(box[2], other_box[2]) - max(box[0], other_box[0])
    overlap_h = min(box[3], other_box[3]) - max(box[1], other_box[1])
    if overlap_w <= 0 or overlap_h <= 0:
        return True
    smaller = min(_area(box), _area(other_box))
    return overlap_w * overlap_h <= MAX_OVERLAP * smaller


def _footprint(obj: SceneObject) -> float:
    return obj.extent * (math.sqrt(2.0) if obj.shape == "cube" else 1.0)


def _area(box: tuple[float, ...]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


# --------------------------------------------------------------------------------------------------- geometry


def _project(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (..., 3) -> screen u, v (pixels) and depth along the view direction."""
    relative = np.asarray(points, dtype=np.float64) - _CAMERA
    depth = relative @ _FORWARD
    u = _PRINCIPAL[0] + _FOCAL * (relative @ _RIGHT) / depth
    v = _PRINCIPAL[1] - _FOCAL * (relative @ _UP) / depth
    return u, v, depth


def _depth(obj: SceneObject) -> float:
    return float(_project([*obj.position, 0.0])[2])


def _cube_corners(obj: SceneObject) -> np.ndarray:
    r, angle = obj.extent, math.radians(obj.rotation)
    c, s = math.cos(angle), math.sin(angle)
    corners = []
    for z in (0.0, 2 * r):
        for lx, ly in ((-r, -r), (r, -r), (r, r), (-r, r)):  # counter-clockwise seen from above
            corners.append((obj.position[0] + c * lx - s * ly, obj.position[1] + s * lx + c * ly, z))
    return np.array(corners)


@dataclass(frozen=True)
class _Ellipse:
    cu: float
    cv: float
    a: float  # horizontal semi-axis (pixels)
    b: float  # vertical semi-axis (pixels)


def _floor_circle(x: float, y: float, z: float, radius: float) -> _Ellipse:
    """Screen ellipse of a horizontal circle; the axis-aligned approximation is exact enough at these sizes."""
    u, v, _ = _project(np.array([[x - radius, y, z], [x + radius, y, z], [x, y - radius, z], [x, y + radius, z]]))
    centre_u, centre_v = (u[0] + u[1]) / 2, (v[2] + v[3]) / 2
    return _Ellipse(float(centre_u), float(centre_v), float((u[1] - u[0]) / 2), float((v[2] - v[3]) / 2))


def _sphere_circle(obj: SceneObject) -> tuple[float, float, float]:
    u, v, depth = _project([obj.position[0], obj.position[1], obj.extent])
    return float(u), float(v), _FOCAL * obj.extent / float(depth)


def _screen_box(obj: SceneObject) -> tuple[float, float, float, float]:
    """Tight screen bounding box (u0, v0, u1, v1) of the object's silhouette."""
    x, y = obj.position
    r = obj.extent
    if obj.shape == "sphere":
        cu, cv, radius = _sphere_circle(obj)
        return cu - radius, cv - radius, cu + radius, cv + radius
    if obj.shape == "cube":
        u, v, _ = _project(_cube_corners(obj))
        return float(u.min()), float(v.min()), float(u.max()), float(v.max())
    top, bottom = _floor_circle(x, y, 2 * r, r), _floor_circle(x, y, 0.0, r)
    return (
        min(top.cu - top.a, bottom.cu - bottom.a),
        top.cv - top.b,
        max(top.cu + top.a, bottom.cu + bottom.a),
        bottom.cv + bottom.b,
    )


# ---------------------------------------------------------------------------------------------------- drawing


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliasing: the share of a pixel inside a shape, from the signed distance (pixels) of its centre."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _ellipse_distance(u: np.ndarray, v: np.ndarray, e: _Ellipse) -> np.ndarray:
    # First-order distance to an ellipse: (q - 1) / |grad q| with q the normalised radius.
    du, dv = (u - e.cu) / e.a, (v - e.cv) / e.b
    q = np.sqrt(du * du + dv * dv)
    gradient = np.sqrt((du / e.a) ** 2 + (dv / e.b) ** 2) / np.maximum(q, 1e-6)
    return (q - 1.0) / np.maximum(gradient, 1e-6)


def _polygon_distance(u: np.ndarray, v: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance (max over edge lines) to a convex polygon given as (n, 2) screen points."""
    centre = polygon.mean(axis=0)
    distance = np.full(u.shape, -np.inf)
    for start, end in zip(polygon, np.roll(polygon, -1, axis=0)):
        edge = end - start
        length = math.hypot(edge[0], edge[1])
        if length < 1e-9:
            continue
        normal = np.array([edge[1], -edge[0]]) / length
        if normal @ (centre - start) > 0:  # make the normal point outwards
            normal = -normal
        distance = np.maximum(distance, normal[0] * (u - start[0]) + normal[1] * (v - start[1]))
    return distance


def _convex_hull(points: np.ndarray) -> np.ndarray:
    pts = sorted(map(tuple, points))

    def half(sequence: list) -> list:
        hull: list = []
        for p in sequence:
            while len(hull) >= 2 and (
                (hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1]) - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])
            ) <= 0:
                hull.pop()
            hull.append(p)
        return hull

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _shade(base: np.ndarray, lambert: np.ndarray | float, highlight: np.ndarray | float = 0.0) -> np.ndarray:
    lambert = np.asarray(lambert, dtype=np.float32)[..., None]
    highlight = np.asarray(highlight, dtype=np.float32)[..., None]
    return base * (_AMBIENT + _DIFFUSE * np.clip(lambert, 0.0, 1.0)) + 255.0 * highlight


def _grid(box: tuple[float, ...]) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    u0, v0 = max(int(math.floor(box[0])) - 2, 0), max(int(math.floor(box[1])) - 2, 0)
    u1, v1 = min(int(math.ceil(box[2])) + 2, WIDTH), min(int(math.ceil(box[3])) + 2, HEIGHT)
    v, u = np.mgrid[v0:v1, u0:u1].astype(np.float32) + 0.5  # pixel centres
    return slice(v0, v1), slice(u0, u1), u, v


def _draw_sphere(obj: SceneObject, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cu, cv, radius = _sphere_circle(obj)
    nx, ny = (u - cu) / radius, (cv - v) / radius  # screen-space normal, y up
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    # The light in camera coordinates (x right, y up, z towards the viewer).
    light = np.array([_LIGHT @ _RIGHT, _LIGHT @ _UP, -(_LIGHT @ _FORWARD)])
    lambert = nx * light[0] + ny * light[1] + nz * light[2]
    half_vector = light + np.array([0.0, 0.0, 1.0])
    half_vector /= np.linalg.norm(half_vector)
    specular = np.clip(nx * half_vector[0] + ny * half_vector[1] + nz * half_vector[2], 0.0, 1.0) ** 28
    colour = _shade(np.array(RGB[obj.colour], np.float32), lambert, 0.55 * specular)
    alpha = _coverage(np.hypot(u - cu, v - cv) - radius)
    return colour, alpha


def _draw_cube(obj: SceneObject, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = _cube_corners(obj)
    cu, cv, _ = _project(corners)
    screen = np.stack([cu, cv], axis=1)
    base = np.array(RGB[obj.colour], np.float32)
    faces = [(4, 5, 6, 7)] + [(i, (i + 1) % 4, (i + 1) % 4 + 4, i + 4) for i in range(4)]
    centre = corners.mean(axis=0)
    weights, colours = [], []
    for face in faces:
        face_centre = corners[list(face)].mean(axis=0)
        normal = face_centre - centre
        normal /= np.linalg.norm(normal)
        if normal @ (_CAMERA - face_centre) <= 0:  # faces pointing away are hidden
            continue
        weights.append(_coverage(_polygon_distance(u, v, screen[list(face)])))
        colours.append(_shade(base, float(normal @ _LIGHT), 0.06 if normal[2] > 0.5 else 0.0))
    weight = np.stack(weights)[..., None]
    # Blend faces by coverage so the shared edges are anti-aliased without letting the floor show through.
    colour = (weight * np.stack(colours)[:, None, None, :]).sum(axis=0) / np.maximum(weight.sum(axis=0), 1e-6)
    alpha = _coverage(_polygon_distance(u, v, _convex_hull(screen)))
    return colour, alpha


def _draw_cylinder(obj: SceneObject, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = obj.position
    r = obj.extent
    top, bottom = _floor_circle(x, y, 2 * r, r), _floor_circle(x, y, 0.0, r)
    base = np.array(RGB[obj.colour], np.float32)
    # The body joins the outer sides of the two ellipses (a trapezoid: verticals converge in perspective).
    body_outline = np.array(
        [
            [top.cu - top.a, top.cv],
            [top.cu + top.a, top.cv],
            [bottom.cu + bottom.a, bottom.cv],
            [bottom.cu - bottom.a, bottom.cv],
        ]
    )
    body_distance = _polygon_distance(u, v, body_outline)
    silhouette = np.minimum(np.minimum(body_distance, _ellipse_distance(u, v, bottom)), _ellipse_distance(u, v, top))
    # Body normal is horizontal: its sideways part follows u across the body, the rest faces the camera.
    t = np.clip((v - top.cv) / max(bottom.cv - top.cv, 1e-6), 0.0, 1.0)
    axis = top.cu + t * (bottom.cu - top.cu)
    half_width = top.a + t * (bottom.a - top.a)
    nx = np.clip((u - axis) / half_width, -1.0, 1.0)
    nz = np.sqrt(1.0 - nx * nx)
    towards_camera = -np.array([0.0, 1.0, 0.0])
    lambert = nx * _LIGHT[0] + nz * (towards_camera @ _LIGHT)
    highlight = 0.12 * np.clip(1.0 - np.abs(nx + 0.45) * 4.0, 0.0, 1.0)
    body = _shade(base, lambert, highlight)
    cap = _shade(base, float(_LIGHT[2]), 0.06)
    cap_weight = _coverage(_ellipse_distance(u, v, top))[..., None]
    colour = body * (1.0 - cap_weight) + cap * cap_weight
    return colour, _coverage(silhouette)


_DRAW = {"sphere": _draw_sphere, "cube": _draw_cube, "cylinder": _draw_cylinder}


@functools.lru_cache(maxsize=1)
def _floor() -> np.ndarray:
    """The empty floor (identical for every image, so computed once): light grey, brightest under the light."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32) + 0.5
    glow = np.exp(-(((u - 125.0) / 190.0) ** 2 + ((v - 95.0) / 170.0) ** 2))
    value = 112.0 + 38.0 * glow - 10.0 * (v / HEIGHT)
    tint = np.array([1.0, 1.0, 1.02], np.float32)  # CLEVR's floor is a very slightly cool grey
    return value[..., None] * tint


def _draw_shadow(image: np.ndarray, obj: SceneObject) -> None:
    # A soft dark blob on the floor, pushed away from the light.
    x, y = obj.position
    reach = obj.extent * (1.35 if obj.shape != "sphere" else 1.1)
    shift = -_LIGHT[:2] / np.linalg.norm(_LIGHT[:2]) * obj.extent * 0.75
    ellipse = _floor_circle(x + shift[0], y + shift[1], 0.0, reach)
    box = (ellipse.cu - ellipse.a, ellipse.cv - ellipse.b, ellipse.cu + ellipse.a, ellipse.cv + ellipse.b)
    rows, cols, u, v = _grid(box)
    q = np.sqrt(((u - ellipse.cu) / ellipse.a) ** 2 + ((v - ellipse.cv) / ellipse.b) ** 2)
    t = np.clip((1.0 - q) / 0.7, 0.0, 1.0)
    darkness = SHADOW_DARKNESS * t * t * (3.0 - 2.0 * t)  # smoothstep falloff
    image[rows, cols] *= (1.0 - darkness)[..., None]


def render_scene(objects: Sequence[SceneObject]) -> Image.Image:
    """Draws the objects on the floor: a 320x240 RGB image, farther objects first so nearer ones occlude."""
    image = _floor().copy()
    ordered = sorted(objects, key=_depth, reverse=True)
    for obj in ordered:
        _draw_shadow(image, obj)
    for obj in ordered:
        rows, cols, u, v = _grid(_screen_box(obj))
        colour, alpha = _DRAW[obj.shape](obj, u, v)
        alpha = alpha[..., None]
        image[rows, cols] = image[rows, cols] * (1.0 - alpha) + colour * alpha
    return Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------------------------------- dataset


def _render_scene_files(job: tuple[int, int, int, str]) -> list[tuple[str, list[str]]]:
    """Worker: draws one scene's images (one more object each) into `folder`; returns (file name, labels) per image."""
    seed, scene_index, objects_per_scene, folder = job
    objects = sample_scene(seed, scene_index, objects_per_scene)
    rows = []
    for step in range(len(objects)):
        name = IMAGE_NAME.format(scene=scene_index, step=step)
        # Fixed PNG settings (no metadata, fixed compression) keep the bytes identical run after run.
        render_scene(objects[: step + 1]).save(Path(folder) / name, format="PNG", compress_level=1)
        rows.append((name, [obj.label for obj in objects[: step + 1]]))
    return rows


def _test_conditions(train: dict[str, list[str]], seed: int) -> list[list[str]]:
    """32 label lists that appear in train.json (distinct ones first), drawn like the training lists."""
    rng = np.random.default_rng([seed, 2])
    lists = list(train.values())
    chosen: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for index in rng.permutation(len(lists)):
        if frozenset(lists[index]) not in seen:
            seen.add(frozenset(lists[index]))
            chosen.append(lists[index])
        if len(chosen) == NUM_CONDITIONS:
            return chosen
    # A tiny render has fewer than 32 distinct lists: repeat them.
    return [chosen[i % len(chosen)] for i in range(NUM_CONDITIONS)]


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=None) + "\n")


def render_dataset(
    output_dir: str | Path,
    num_scenes: int = 6003,
    seed: int = 0,
    num_workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    objects_per_scene: int = OBJECTS_PER_SCENE,
) -> dict[str, float]:
    """Renders `num_scenes` scenes (`objects_per_scene` images each, 1 to that many objects) into `output_dir` in
    the real i-CLEVR layout.

    Writes train.json, objects.json, test.json, new_test.json and iclevr/*.png into a temporary sibling folder
    and renames it at the end, so an interrupted run never leaves a folder that looks complete. Returns
    {"images", "seconds", "images_per_second"}.
    """
    if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes < 1:
        raise ValueError(f"num_scenes must be a positive integer (the default is 6003), got {num_scenes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 1 <= objects_per_scene <= MAX_OBJECTS_PER_SCENE:
        raise ValueError(f"objects_per_scene must be between 1 and {MAX_OBJECTS_PER_SCENE}, got {objects_per_scene!r}")
    num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file; give a folder path for the dataset")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty; choose a new folder or pass overwrite=True")

    # Renders that were killed leave their temporary folder; it is removed here.
    partial = make_temporary_folder(output_dir.parent, f".{output_dir.name}.partial-")
    (partial / "iclevr").mkdir()
    start = time.perf_counter()
    try:
        jobs = [(seed, index, objects_per_scene, str(partial / "iclevr")) for index in range(num_scenes)]
        train: dict[str, list[str]] = {}
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(
                tqdm(total=num_scenes * objects_per_scene, unit="img", desc="rendering", disable=not progress)
            )
            if num_workers == 1:
                results = map(_render_scene_files, jobs)
            else:
                pool = stack.enter_context(multiprocessing.Pool(num_workers))
                results = pool.imap(_render_scene_files, jobs, chunksize=8)  # imap keeps scene order
            for rows in results:
                train.update(rows)
                bar.update(len(rows))
        _write_json(partial / "objects.json", LabelVocabulary().to_objects_json())
        _write_json(partial / "test.json", _test_conditions(train, seed))
        _write_json(partial / "new_test.json", [list(combination) for combination in unusual_combinations(seed)])
        _write_json(partial / "train.json", train)  # written last: its presence marks a finished render
        replace_folder(partial, output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    images = len(train)
    return {"images": images, "seconds": seconds, "images_per_second": images / max(seconds, 1e-9)}


def save_preview(dataset_dir: str | Path, path: str | Path, count: int = 32, per_row: int = 8, size: int = 64) -> Path:
    """Saves a grid of the first `count` images of train.json, each resized to `size`x`size` like training data."""
    dataset_dir, path = Path(dataset_dir), Path(path)
    names = list(json.loads((dataset_dir / "train.json").read_text()))[:count]
    rows = math.ceil(len(names) / per_row)
    grid = Image.new("RGB", (per_row * size, rows * size), (255, 255, 255))
    for i, name in enumerate(names):
        with Image.open(dataset_dir / "iclevr" / name) as image:
            thumbnail = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        grid.paste(thumbnail, ((i % per_row) * size, (i // per_row) * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG", optimize=True)
    return path

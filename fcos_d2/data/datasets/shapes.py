"""The built-in synthetic "shapes" detection dataset, in COCO format.

Coloured circles, squares, triangles and stars of several sizes on a noisy
background, some occluding others. Boxes, areas and polygon masks describe the
visible part of each object, so Mask R-CNN trains on it unchanged. Generation is
deterministic from the seed and crash-safe: files are written to a temporary
directory and moved into place, the annotation file last, so an interrupted run
leaves nothing that a later run accepts.

    python -m fcos_d2.data.datasets.shapes --split crowd_val      # as the registered shapes_crowd_val
    python -m fcos_d2.data.datasets.shapes --help                 # the scene knobs
"""

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import shutil
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from tqdm import tqdm

logger = logging.getLogger(__name__)

SHAPES_CLASSES = ("circle", "square", "triangle", "star")
IMAGE_SIZE = 128
MIN_VISIBLE_PIXELS = 20


@dataclasses.dataclass(frozen=True)
class SceneStyle:
    """How objects are placed in an image: the generator's knobs.

    Attributes:
        max_objects: objects tried per image (1 to this many, uniformly).
        max_box_iou: a new object is rejected if its box overlaps an earlier box more.
        min_visible_fraction: a new object is rejected if it would leave less than this
            fraction of an earlier object visible.
        cluster_probability: chance that an object is centred near an earlier one (at
            0.2-0.9 of that object's radius away) instead of anywhere in the image.
        min_radius, max_radius: circumradius range, as fractions of the image size.
    """

    max_objects: int = 6
    max_box_iou: float = 0.6
    min_visible_fraction: float = 0.5
    cluster_probability: float = 0.0
    min_radius: float = 0.06
    max_radius: float = 0.24


NORMAL = SceneStyle()
# Heavily overlapping scenes: up to 24 objects tried (about 6 fit), most placed against
# an earlier one, boxes overlapping up to IoU 0.9, each object at least 30% visible.
CROWDED = SceneStyle(
    max_objects=24,
    max_box_iou=0.9,
    min_visible_fraction=0.3,
    cluster_probability=0.85,
    max_radius=0.2,
)
# Small objects (for a P2 level): on 256-px images, circumradius 3-8 px, so that most boxes
# are 4-16 px; up to 12 objects tried.
SMALL = SceneStyle(max_objects=12, min_radius=0.012, max_radius=0.032)
STYLES = {"normal": NORMAL, "crowded": CROWDED, "small": SMALL}
SMALL_IMAGE_SIZE = 256


@dataclasses.dataclass(frozen=True)
class BuiltinSplit:
    """A registered split: its folder name, size, seed and scene style."""

    split: str
    num_images: int
    seed: int
    style: str = "normal"
    image_size: int = IMAGE_SIZE


BUILTIN_SPLITS = {
    "shapes_train": BuiltinSplit("train", 2000, 0),
    "shapes_val": BuiltinSplit("val", 200, 1),
    "shapes_crowd_train": BuiltinSplit("crowd_train", 2000, 2, "crowded"),
    "shapes_crowd_val": BuiltinSplit("crowd_val", 300, 3, "crowded"),
    "shapes_small_train": BuiltinSplit("small_train", 2000, 4, "small", SMALL_IMAGE_SIZE),
    "shapes_small_val": BuiltinSplit("small_val", 300, 5, "small", SMALL_IMAGE_SIZE),
}


def shapes_root() -> str:
    """Where the built-in dataset lives: ``$DETECTRON2_DATASETS/shapes`` (default ./datasets)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes")


def _outline(kind: str, center: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Polygon (P, 2) of a shape of the given circumradius, rotated by ``angle``."""
    if kind == "circle":
        angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        radii = np.full(32, radius)
    elif kind == "square":
        angles = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, radius)
    elif kind == "triangle":
        angles = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, radius)
    else:  # star: five points, inner radius 0.45
        angles = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    return center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) x0y0x1y1 box with (B, 4) boxes."""
    if len(boxes) == 0:
        return np.zeros(0)
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    intersection = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return intersection / (area(box) + area(boxes) - intersection)


def _visible_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons [x1, y1, x2, y2, ...] of the outer contours of a binary mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _object_center(
    rng: np.random.Generator, style: SceneStyle, size: int, radius: float, placed: List[Tuple]
) -> np.ndarray:
    """Where to put the next object: anywhere, or (clustered) close to a placed one."""
    # Draw the cluster coin only when clustering is on, so normal scenes use the same
    # random stream as before the knob existed (the registered splits stay unchanged).
    if placed and style.cluster_probability > 0 and rng.uniform() < style.cluster_probability:
        anchor_center, anchor_radius = placed[int(rng.integers(len(placed)))]
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0.2, 0.9) * anchor_radius
        center = anchor_center + distance * np.array([np.cos(angle), np.sin(angle)])
        return np.clip(center, radius * 0.7, size - radius * 0.7)
    return rng.uniform(radius * 0.7, size - radius * 0.7, 2)


def _render_image(
    rng: np.random.Generator, size: int, style: SceneStyle = NORMAL
) -> Tuple[np.ndarray, List[Dict]]:
    """One image (H, W, 3) BGR and its annotations (without ids)."""
    background = rng.integers(0, 256, 3)
    image = np.clip(background + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    objects: List[Tuple[int, np.ndarray]] = []  # (class, full mask area)
    placed: List[Tuple[np.ndarray, float]] = []  # (centre, radius) of accepted objects
    boxes = np.zeros((0, 4))
    for _ in range(int(rng.integers(1, style.max_objects + 1))):
        kind = int(rng.integers(len(SHAPES_CLASSES)))
        radius = rng.uniform(style.min_radius, style.max_radius) * size
        center = _object_center(rng, style, size, radius, placed)
        outline = _outline(SHAPES_CLASSES[kind], center, radius, rng.uniform(0, 2 * np.pi))
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
        mask = mask.astype(bool)
        ys, xs = np.nonzero(mask)
        if len(xs) < MIN_VISIBLE_PIXELS:
            continue
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
        if (_box_iou(box, boxes) > style.max_box_iou).any():
            continue
        new_owner = np.where(mask, len(objects), owner)
        if any(
            (new_owner == i).sum() < style.min_visible_fraction * full_area
            for i, (_, full_area) in enumerate(objects)
        ):
            continue
        owner = new_owner
        objects.append((kind, int(mask.sum())))
        placed.append((center, radius))
        boxes = np.vstack([boxes, box])
        # Colour independent of the class, and far enough from the background.
        color = rng.integers(0, 256, 3)
        while np.abs(color - background).sum() < 120:
            color = rng.integers(0, 256, 3)
        image[mask] = np.clip(color + rng.normal(0, 8, (int(mask.sum()), 3)), 0, 255)

    annotations = []
    for i, (kind, _) in enumerate(objects):
        visible = owner == i
        ys, xs = np.nonzero(visible)
        polygons = _visible_polygons(visible)
        if len(xs) < MIN_VISIBLE_PIXELS or not polygons:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        annotations.append(
            {
                "category_id": kind + 1,
                "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                "area": int(visible.sum()),
                "iscrowd": 0,
                "segmentation": polygons,
            }
        )
    return image, annotations


def _paths(output_dir: str, split: str) -> Tuple[str, str]:
    """(annotation json, image directory) of a split."""
    return (
        os.path.join(output_dir, "annotations", f"instances_{split}.json"),
        os.path.join(output_dir, split),
    )


def generate_shapes_split(
    output_dir: str,
    split: str,
    num_images: int,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    progress: bool = True,
    style: SceneStyle = NORMAL,
) -> str:
    """Generate a split: PNGs in ``output_dir/<split>/`` and a COCO json in ``annotations/``.

    The json is moved into place last; its existence means the split is complete.
    ``style`` sets how many objects there are and how much they may overlap.

    Returns:
        The path of the json.
    """
    json_path, image_dir = _paths(output_dir, split)
    os.makedirs(output_dir, exist_ok=True)
    tmp_dir = os.path.join(output_dir, f".tmp-{split}")
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left by an interrupted run
    os.makedirs(os.path.join(tmp_dir, "images"))

    rng = np.random.default_rng([seed, sum(map(ord, split))])
    images, annotations = [], []
    for image_id in tqdm(range(1, num_images + 1), desc=f"shapes/{split}", disable=not progress):
        image, image_annotations = _render_image(rng, image_size, style)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(tmp_dir, "images", file_name), image)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    coco = {
        "info": {
            "description": f"fcos_d2 synthetic shapes, split {split}, seed {seed}",
            "scene_style": dataclasses.asdict(style),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES_CLASSES)],
    }
    with open(os.path.join(tmp_dir, "instances.json"), "w") as f:
        json.dump(coco, f)

    shutil.rmtree(image_dir, ignore_errors=True)
    os.replace(os.path.join(tmp_dir, "images"), image_dir)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    os.replace(os.path.join(tmp_dir, "instances.json"), json_path)
    shutil.rmtree(tmp_dir)
    return json_path


def ensure_shapes_split(
    split: str,
    num_images: int,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    root: Optional[str] = None,
    style: SceneStyle = NORMAL,
) -> Tuple[str, str]:
    """Generate a split unless its json exists. Returns (json path, image directory).

    Safe when several processes (one per GPU) ask at once: one generates, the others
    wait on a lock file and then find the json.
    """
    root = root or shapes_root()
    json_path, image_dir = _paths(root, split)
    if os.path.isfile(json_path):
        return json_path, image_dir
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".lock-{split}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(json_path):
            logger.info("Generating the shapes dataset, split %s, in %s", split, root)
            generate_shapes_split(root, split, num_images, image_size, seed, style=style)
    return json_path, image_dir


def register_shapes_split(
    name: str,
    split: str,
    num_images: int,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    root: Optional[str] = None,
    style: SceneStyle = NORMAL,
) -> None:
    """Register a shapes split in Detectron2's catalogs; it is generated on first use."""
    if name in DatasetCatalog.list():
        return
    json_path, image_dir = _paths(root or shapes_root(), split)

    def load() -> List[Dict]:
        ensure_shapes_split(split, num_images, image_size, seed, root, style)
        return load_coco_json(json_path, image_dir, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPES_CLASSES),
        json_file=json_path,
        image_root=image_dir,
        evaluator_type="coco",
    )


def register_builtin_shapes() -> None:
    """Register the ``BUILTIN_SPLITS`` (nothing is generated until used)."""
    for name, builtin in BUILTIN_SPLITS.items():
        register_shapes_split(
            name,
            builtin.split,
            builtin.num_images,
            builtin.image_size,
            seed=builtin.seed,
            style=STYLES[builtin.style],
        )


def argument_parser() -> argparse.ArgumentParser:
    """The generator's command line; its defaults reproduce the registered splits."""
    splits = {b.split: name for name, b in BUILTIN_SPLITS.items()}
    parser = argparse.ArgumentParser(
        description="Generate a split of the shapes dataset. With --split naming a registered "
        f"split ({', '.join(f'{s} = {n}' for s, n in splits.items())}) and no other option, "
        "the files are those the registered dataset is generated with. Every other option "
        "overrides one of that split's settings.",
    )
    parser.add_argument("--split", default="train", help="folder name of the split")
    parser.add_argument("--num-images", type=int, help="images (registered split: its size)")
    parser.add_argument(
        "--image-size", type=int, help=f"side in pixels (registered split: its size; else {IMAGE_SIZE})"
    )
    parser.add_argument("--seed", type=int, help="random seed (registered split: its seed)")
    parser.add_argument("--style", choices=sorted(STYLES), help="preset of the scene knobs below")
    parser.add_argument("--output", default=shapes_root(), help="dataset root")
    for field in dataclasses.fields(SceneStyle):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=field.type,
            help=f"scene knob (normal {getattr(NORMAL, field.name)}, "
            f"crowded {getattr(CROWDED, field.name)}, small {getattr(SMALL, field.name)}); "
            "see SceneStyle",
        )
    return parser


def main(argv: Optional[List[str]] = None) -> str:
    args = argument_parser().parse_args(argv)
    builtin = next((b for b in BUILTIN_SPLITS.values() if b.split == args.split), None)
    num_images = args.num_images or (builtin.num_images if builtin else 2000)
    seed = args.seed if args.seed is not None else (builtin.seed if builtin else 0)
    image_size = args.image_size or (builtin.image_size if builtin else IMAGE_SIZE)
    style = STYLES[args.style or (builtin.style if builtin else "normal")]
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(SceneStyle)}
    style = dataclasses.replace(style, **{k: v for k, v in knobs.items() if v is not None})
    json_path = generate_shapes_split(
        args.output, args.split, num_images, image_size, seed, style=style
    )
    print(json_path)
    return json_path


if __name__ == "__main__":
    main()

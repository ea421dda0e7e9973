"""The built-in synthetic "shapes" detection dataset, in COCO format.

Coloured circles, squares, triangles and stars of several sizes on a noisy
background, some occluding others. Boxes, areas and polygon masks describe the
visible part of each object, so Mask R-CNN trains on it unchanged. Generation is
deterministic from the seed and crash-safe: files are written to a temporary
directory and moved into place, the annotation file last, so an interrupted run
leaves nothing that a later run accepts.

    python -m fcos_d2.datasets.shapes --split train --num-images 2000 --output datasets/shapes
"""

import argparse
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
BUILTIN_SPLITS = {
    # name: (split, number of images, seed)
    "shapes_train": ("train", 2000, 0),
    "shapes_val": ("val", 200, 1),
}
IMAGE_SIZE = 128
MAX_OBJECTS = 6
MAX_BOX_IOU = 0.6  # a new object may not overlap an existing box more than this
MIN_VISIBLE_FRACTION = 0.5  # nor hide more than half of an earlier object
MIN_VISIBLE_PIXELS = 20


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


def _render_image(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, List[Dict]]:
    """One image (H, W, 3) BGR and its annotations (without ids)."""
    background = rng.integers(0, 256, 3)
    image = np.clip(background + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    owner = np.full((size, size), -1, dtype=np.int32)  # which object each pixel shows
    objects: List[Tuple[int, np.ndarray]] = []  # (class, full mask area)
    boxes = np.zeros((0, 4))
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        kind = int(rng.integers(len(SHAPES_CLASSES)))
        radius = rng.uniform(0.06, 0.24) * size
        center = rng.uniform(radius * 0.7, size - radius * 0.7, 2)
        outline = _outline(SHAPES_CLASSES[kind], center, radius, rng.uniform(0, 2 * np.pi))
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
        mask = mask.astype(bool)
        ys, xs = np.nonzero(mask)
        if len(xs) < MIN_VISIBLE_PIXELS:
            continue
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
        if (_box_iou(box, boxes) > MAX_BOX_IOU).any():
            continue
        new_owner = np.where(mask, len(objects), owner)
        if any(
            (new_owner == i).sum() < MIN_VISIBLE_FRACTION * full_area
            for i, (_, full_area) in enumerate(objects)
        ):
            continue
        owner = new_owner
        objects.append((kind, int(mask.sum())))
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
) -> str:
    """Generate a split: PNGs in ``output_dir/<split>/`` and a COCO json in ``annotations/``.

    The json is moved into place last; its existence means the split is complete.

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
        image, image_annotations = _render_image(rng, image_size)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(tmp_dir, "images", file_name), image)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    coco = {
        "info": {"description": f"fcos_d2 synthetic shapes, split {split}, seed {seed}"},
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
            generate_shapes_split(root, split, num_images, image_size, seed)
    return json_path, image_dir


def register_shapes_split(
    name: str,
    split: str,
    num_images: int,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    root: Optional[str] = None,
) -> None:
    """Register a shapes split in Detectron2's catalogs; it is generated on first use."""
    if name in DatasetCatalog.list():
        return
    json_path, image_dir = _paths(root or shapes_root(), split)

    def load() -> List[Dict]:
        ensure_shapes_split(split, num_images, image_size, seed, root)
        return load_coco_json(json_path, image_dir, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPES_CLASSES),
        json_file=json_path,
        image_root=image_dir,
        evaluator_type="coco",
    )


def register_builtin_shapes() -> None:
    """Register ``shapes_train`` and ``shapes_val`` (nothing is generated until used)."""
    for name, (split, num_images, seed) in BUILTIN_SPLITS.items():
        register_shapes_split(name, split, num_images, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate a split of the shapes dataset.")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=shapes_root())
    args = parser.parse_args()
    print(generate_shapes_split(args.output, args.split, args.num_images, args.image_size, args.seed))


if __name__ == "__main__":
    main()

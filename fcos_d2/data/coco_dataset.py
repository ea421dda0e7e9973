"""Register a COCO-format dataset given on the command line, checking it first."""

import hashlib
import json
import logging
import os
import tempfile
from typing import Iterable, List, Optional, Tuple

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

_REQUIRED_KEYS = ("images", "annotations", "categories")
_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")
logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset given by the user cannot be used; the message names the file."""


def check_coco_json(json_file: str) -> dict:
    """Read a COCO instances file and check its top-level structure.

    Raises:
        DatasetError: naming ``json_file`` when it is missing, not JSON, or not COCO.
    """
    if not os.path.isfile(json_file):
        raise DatasetError(f"COCO annotation file not found: {json_file}")
    try:
        with open(json_file) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"COCO annotation file {json_file} is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise DatasetError(f"COCO annotation file {json_file} must hold a JSON object")
    missing = [key for key in _REQUIRED_KEYS if key not in content]
    if missing:
        raise DatasetError(f"COCO annotation file {json_file} lacks the keys {missing}")
    _check_entries(json_file, "images", content["images"], _IMAGE_KEYS)
    _check_entries(json_file, "annotations", content["annotations"], _ANNOTATION_KEYS)
    _check_entries(json_file, "categories", content["categories"], ("id", "name"))
    image_ids = {image["id"] for image in content["images"]}
    for annotation in content["annotations"]:
        bbox = annotation["bbox"]
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) for v in bbox)
        ):
            raise DatasetError(
                f"COCO annotation file {json_file}: annotation id {annotation['id']} has bbox "
                f"{bbox!r}; expected [x, y, width, height]"
            )
        if annotation["image_id"] not in image_ids:
            raise DatasetError(
                f"COCO annotation file {json_file}: annotation id {annotation['id']} refers to "
                f"image_id {annotation['image_id']}, which is not in its images"
            )
    known = {category["id"] for category in content["categories"]}
    unknown = sorted({a["category_id"] for a in content["annotations"]} - known)
    if unknown:
        raise DatasetError(
            f"COCO annotation file {json_file}: annotations use category ids {unknown} "
            f"that are not in its categories {sorted(known)}"
        )
    return content


def _check_entries(json_file: str, section: str, entries, keys) -> None:
    """Every entry of ``section`` is an object with ``keys``; the error names the first
    entry at fault (by id where it has one)."""
    if not isinstance(entries, list):
        raise DatasetError(f"COCO annotation file {json_file}: '{section}' must be a list")
    for index, entry in enumerate(entries):
        missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
        if missing:
            where = (
                f"id {entry['id']}" if isinstance(entry, dict) and "id" in entry else f"#{index}"
            )
            raise DatasetError(
                f"COCO annotation file {json_file}: {section[:-1]} {where} lacks {missing}"
            )


def _polygon_area(polygon: List[float]) -> float:
    """Shoelace area of a COCO polygon [x1, y1, x2, y2, ...]."""
    x, y = polygon[0::2], polygon[1::2]
    return 0.5 * abs(sum(x[i] * y[i - 1] - x[i - 1] * y[i] for i in range(len(x))))


def annotation_area(annotation: dict) -> float:
    """The area COCO tools use when a file gives none: the polygons', else the box's."""
    segmentation = annotation.get("segmentation")
    if (
        isinstance(segmentation, list)
        and segmentation
        and all(isinstance(p, list) for p in segmentation)
    ):
        return float(sum(_polygon_area(p) for p in segmentation if len(p) >= 6))
    return float(annotation["bbox"][2] * annotation["bbox"][3])


def _missing_images(content: dict, image_root: str) -> List[str]:
    return [
        image["file_name"]
        for image in content["images"]
        if not os.path.isfile(os.path.join(image_root, image["file_name"]))
    ]


def _completed_json(name: str, json_file: str, content: dict) -> Optional[str]:
    """A copy of the file with ``area`` (and ``iscrowd``) filled in where annotations lack
    them, or None when none does. The copy goes to the temporary directory."""
    incomplete = [a for a in content["annotations"] if "area" not in a or "iscrowd" not in a]
    if not incomplete:
        return None
    for annotation in incomplete:
        annotation.setdefault("area", annotation_area(annotation))
        annotation.setdefault("iscrowd", 0)
    digest = hashlib.sha1(os.path.abspath(json_file).encode()).hexdigest()[:10]
    directory = os.path.join(tempfile.gettempdir(), "fcos_d2_coco")
    os.makedirs(directory, exist_ok=True)
    completed = os.path.join(directory, f"{name}-{digest}.json")
    with open(completed + ".tmp", "w") as f:
        json.dump(content, f)
    os.replace(completed + ".tmp", completed)
    logger.warning(
        "%s: %d annotations lack 'area' or 'iscrowd'; computed from their polygons or boxes "
        "(iscrowd 0), in a completed copy %s",
        json_file,
        len(incomplete),
        completed,
    )
    return completed


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset under ``name`` after checking it, before anything runs.

    Checked: the file is COCO (each image, annotation and category has its required
    keys, boxes are [x, y, w, h], ids refer to known images and categories) and every
    image file exists. Annotations without ``area`` get it from their polygons or box.

    Raises:
        DatasetError: naming the file, entry or directory at fault, or the name already taken.
    """
    if name in DatasetCatalog.list():
        raise DatasetError(f"dataset name {name!r} is already registered")
    content = check_coco_json(json_file)
    if not os.path.isdir(image_root):
        raise DatasetError(f"image directory of dataset {name!r} not found: {image_root}")
    missing = _missing_images(content, image_root)
    if missing:
        raise DatasetError(
            f"COCO annotation file {json_file}: {len(missing)} image file(s) not found under "
            f"{image_root}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    register_coco_instances(
        name, {}, _completed_json(name, json_file, content) or json_file, image_root
    )


def register_coco_datasets(specs: Iterable[Tuple[str, str, str]]) -> None:
    """Register each (name, json_file, image_root) of ``--register-coco``."""
    for name, json_file, image_root in specs:
        register_coco_dataset(name, json_file, image_root)


def add_register_coco_argument(parser) -> None:
    """``--register-coco NAME JSON IMAGE_ROOT`` (repeatable), shared by the entry points."""
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME before the config uses it (repeatable)",
    )

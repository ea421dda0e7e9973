"""Register a COCO-format dataset given on the command line, checking it first."""

import json
import os
from typing import Iterable, Tuple

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

_REQUIRED_KEYS = ("images", "annotations", "categories")


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
    known = {category["id"] for category in content["categories"]}
    unknown = sorted({a["category_id"] for a in content["annotations"]} - known)
    if unknown:
        raise DatasetError(
            f"COCO annotation file {json_file}: annotations use category ids {unknown} "
            f"that are not in its categories {sorted(known)}"
        )
    return content


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset under ``name`` after checking its files exist.

    Raises:
        DatasetError: naming the file or directory at fault, or the name already taken.
    """
    if name in DatasetCatalog.list():
        raise DatasetError(f"dataset name {name!r} is already registered")
    check_coco_json(json_file)
    if not os.path.isdir(image_root):
        raise DatasetError(f"image directory of dataset {name!r} not found: {image_root}")
    register_coco_instances(name, {}, json_file, image_root)


def register_coco_datasets(specs: Iterable[Tuple[str, str, str]]) -> None:
    """Register each (name, json_file, image_root) of ``--register-coco``."""
    for name, json_file, image_root in specs:
        register_coco_dataset(name, json_file, image_root)

"""What a model's classes are: names and the dataset's own category ids, kept with its weights.

A model predicts contiguous class indices 0..K-1. Which names and which category ids of
the training set's annotation file those stand for is written at training time to
``OUTPUT_DIR/classes.json``, beside the checkpoints, so that predictions made later
(``demo.py``, export) carry the training set's names and ids rather than those of
whatever ``DATASETS.TEST`` happens to name.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

CLASSES_FILE = "classes.json"
logger = logging.getLogger(__name__)


@dataclass
class ModelClasses:
    """Class index i of the model is ``names[i]``, category ``category_ids[i]`` of ``dataset``."""

    names: List[str]
    category_ids: List[int]
    dataset: str

    def name(self, index: int) -> str:
        return self.names[index] if 0 <= index < len(self.names) else str(index)

    def category_id(self, index: int) -> int:
        return self.category_ids[index] if 0 <= index < len(self.category_ids) else index


def classes_of_dataset(dataset_name: str) -> ModelClasses:
    """The classes of a registered dataset (loading it, which sets a COCO file's id map)."""
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_classes"):
        DatasetCatalog.get(dataset_name)  # load_coco_json fills thing_classes and the id map
    names = list(metadata.get("thing_classes", []))
    id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if id_map:
        by_index = {index: category for category, index in id_map.items()}
        category_ids = [int(by_index[i]) for i in range(len(names))]
    else:
        category_ids = list(range(len(names)))
    return ModelClasses(names, category_ids, dataset_name)


def write_classes(output_dir: str, classes: ModelClasses) -> str:
    """Write ``classes.json`` to ``output_dir``; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CLASSES_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(asdict(classes), f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def read_classes(path: str) -> ModelClasses:
    """A ``classes.json``; a malformed one is an error naming it."""
    try:
        with open(path) as f:
            content = json.load(f)
        classes = ModelClasses(
            list(content["names"]),
            [int(i) for i in content["category_ids"]],
            str(content.get("dataset", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a readable {CLASSES_FILE} ({e!r})") from e
    if len(classes.names) != len(classes.category_ids):
        raise ValueError(
            f"{path}: {len(classes.names)} names but {len(classes.category_ids)} category ids"
        )
    return classes


def classes_for_weights(weights: str, fallback_dataset: Optional[str]) -> Optional[ModelClasses]:
    """The classes recorded beside ``weights`` (its directory's classes.json) or, failing
    that, those of ``fallback_dataset`` (said in a warning), or None."""
    if weights and os.path.isfile(weights):
        recorded = os.path.join(os.path.dirname(os.path.abspath(weights)), CLASSES_FILE)
        if os.path.isfile(recorded):
            return read_classes(recorded)
    if fallback_dataset:
        logger.warning(
            "No %s beside MODEL.WEIGHTS %r: naming classes after DATASETS.TEST[0] %r",
            CLASSES_FILE,
            weights,
            fallback_dataset,
        )
        return classes_of_dataset(fallback_dataset)
    return None

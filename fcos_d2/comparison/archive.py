"""Compact, lossless copies of comparison runs, small enough to commit.

A run directory (``runner.py``) holds ``run.json`` and, per evaluation and validation set,
Detectron2's ``coco_instances_results.json``: megabytes of JSON text per file. The report
needs nothing else, so a run is archived as its ``run.json`` plus one compressed ``.npz`` per
predictions file (boxes and scores as the float32 values the model produced, masks as their
RLE strings) and restored to the same files, identical after ``json.load``. Masks are kept
at the final evaluation only, the one the report reads them from (mask AP); the earlier
evaluations of a Mask R-CNN come back with boxes alone.
A comparison whose training runs took hours can then be rebuilt or resumed on a fresh clone.
"""

import json
import os
import shutil
from typing import Dict, List, Tuple

import numpy as np

from .runner import RUN_FILE

_BOX_KEYS = {"image_id", "category_id", "bbox", "score"}
_MASK_KEY = "segmentation"


def _archived_name(predictions_path: str) -> str:
    return os.path.splitext(predictions_path)[0] + ".npz"


def predictions_to_arrays(predictions: List[dict], source: str) -> Dict[str, np.ndarray]:
    """COCO detection results (Detectron2's JSON) as arrays; ``source`` names the file in errors."""
    for prediction in predictions:
        unknown = set(prediction) - _BOX_KEYS - {_MASK_KEY}
        if unknown or not _BOX_KEYS <= set(prediction):
            raise ValueError(
                f"{source}: a prediction with keys {sorted(prediction)}; the archive keeps "
                f"{sorted(_BOX_KEYS)} and optionally {_MASK_KEY!r}"
            )
    boxes = np.array([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4)
    scores = np.array([p["score"] for p in predictions], dtype=np.float64)
    arrays = {
        "image_id": np.array([p["image_id"] for p in predictions], dtype=np.int64),
        "category_id": np.array([p["category_id"] for p in predictions], dtype=np.int64),
        "bbox": boxes.astype(np.float32),
        "score": scores.astype(np.float32),
    }
    # float32 holds the model's outputs exactly; anything else would be rounded.
    if not np.array_equal(arrays["bbox"], boxes) or not np.array_equal(arrays["score"], scores):
        raise ValueError(f"{source}: boxes or scores are not float32 values; archiving would round")
    with_masks = [_MASK_KEY in p for p in predictions]
    if any(with_masks):
        if not all(with_masks):
            raise ValueError(f"{source}: some predictions have a {_MASK_KEY!r}, others not")
        arrays["mask_size"] = np.array(
            [p[_MASK_KEY]["size"] for p in predictions], dtype=np.int64
        ).reshape(-1, 2)
        arrays["mask_counts"] = np.array(
            [p[_MASK_KEY]["counts"].encode("ascii") for p in predictions], dtype=bytes
        )
    return arrays


def arrays_to_predictions(arrays: Dict[str, np.ndarray]) -> List[dict]:
    """The inverse of :func:`predictions_to_arrays`."""
    predictions = [
        {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}
        for image_id, category_id, bbox, score in zip(
            arrays["image_id"].tolist(),
            arrays["category_id"].tolist(),
            arrays["bbox"].astype(np.float64).tolist(),
            arrays["score"].astype(np.float64).tolist(),
        )
    ]
    if "mask_counts" in arrays:
        for prediction, size, counts in zip(
            predictions, arrays["mask_size"].tolist(), arrays["mask_counts"].tolist()
        ):
            prediction[_MASK_KEY] = {"size": size, "counts": counts.decode("ascii")}
    return predictions


def _predictions_files(run: dict) -> List[Tuple[str, bool]]:
    """Every predictions file the report reads, relative to the run directory, and whether
    the report reads its masks (the final evaluation's only)."""
    return [
        (result["predictions"], index == len(run["curve"]) - 1)
        for index, point in enumerate(run["curve"])
        for result in point["datasets"].values()
        if "predictions" in result
    ]


def pack_run(run_dir: str, archive_dir: str) -> None:
    """Write ``run_dir``'s run.json and its predictions, compressed, under ``archive_dir``."""
    with open(os.path.join(run_dir, RUN_FILE)) as f:
        run = json.load(f)
    staging = archive_dir.rstrip(os.sep) + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    for relative, with_masks in _predictions_files(run):
        source = os.path.join(run_dir, relative)
        with open(source) as f:
            predictions = json.load(f)
        if not with_masks:
            predictions = [{k: v for k, v in p.items() if k != _MASK_KEY} for p in predictions]
        arrays = predictions_to_arrays(predictions, source)
        target = os.path.join(staging, _archived_name(relative))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        np.savez_compressed(target, **arrays)
    os.makedirs(staging, exist_ok=True)
    shutil.copyfile(os.path.join(run_dir, RUN_FILE), os.path.join(staging, RUN_FILE))
    shutil.rmtree(archive_dir, ignore_errors=True)  # replaced only once complete
    os.replace(staging, archive_dir)


def unpack_run(archive_dir: str, run_dir: str) -> None:
    """Restore an archived run's run.json and predictions JSON files into ``run_dir``."""
    with open(os.path.join(archive_dir, RUN_FILE)) as f:
        run = json.load(f)
    for relative, _ in _predictions_files(run):
        with np.load(os.path.join(archive_dir, _archived_name(relative))) as data:
            predictions = arrays_to_predictions(dict(data))
        target = os.path.join(run_dir, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(predictions, f)
    # run.json last: a run directory with it counts as done (compare.py keeps it).
    shutil.copyfile(os.path.join(archive_dir, RUN_FILE), os.path.join(run_dir, RUN_FILE))


def _run_names(root: str) -> List[str]:
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, RUN_FILE)))


def pack_runs(runs_root: str, archive_root: str, only_new: bool = False) -> List[str]:
    """Archive every finished run under ``runs_root`` (``only_new``: those ``archive_root``
    does not hold yet); returns the names archived."""
    names = _run_names(runs_root)
    if only_new:
        names = [name for name in names if name not in _run_names(archive_root)]
    for name in names:
        pack_run(os.path.join(runs_root, name), os.path.join(archive_root, name))
    return names


def unpack_runs(archive_root: str, runs_root: str) -> List[str]:
    """Restore every archived run that ``runs_root`` does not hold yet; returns their names."""
    if not os.path.isdir(archive_root):
        raise FileNotFoundError(f"{archive_root}: no such archive of comparison runs")
    done = set(_run_names(runs_root))
    restored = [name for name in _run_names(archive_root) if name not in done]
    for name in restored:
        unpack_run(os.path.join(archive_root, name), os.path.join(runs_root, name))
    return restored

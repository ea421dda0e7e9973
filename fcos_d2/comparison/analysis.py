"""Metrics of one model's saved COCO predictions, all computed with pycocotools' COCOeval.

Predictions are COCO result dicts (``image_id``, ``category_id``, ``bbox`` as x, y, w, h,
``score``), as Detectron2's ``COCOEvaluator`` saves them in ``coco_instances_results.json``.
"""

import contextlib
import copy
import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# Overlap bins by a ground-truth box's largest IoU with another box of its image.
OVERLAP_BINS = (("no overlap", 0.0, 0.0), ("IoU (0, 0.3]", 0.0, 0.3), ("IoU > 0.3", 0.3, 1.0))
# The groups the comparison reports: the bins, and the most overlapped boxes alone.
OVERLAP_GROUPS = OVERLAP_BINS + (("IoU > 0.5", 0.5, 1.0),)
RECALL_IOU_THRESHOLDS = np.round(np.arange(0.1, 0.951, 0.05), 2)
RECALL_MAX_DETS = (1, 2, 5, 10, 20, 50, 100)
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def coco_from_dict(dataset: dict) -> COCO:
    """A pycocotools COCO index of an in-memory dataset, quietly."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_detections(gt: COCO, predictions: List[dict]) -> COCO:
    """``gt.loadRes(predictions)`` without touching the caller's dicts, quietly.

    loadRes only sets keys on each prediction (id, area, iscrowd, a box outline as its
    segmentation), so a shallow copy of each dict protects them; a deep copy of tens of
    thousands of predictions cost more than the matching itself.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(p) for p in predictions])


def run_cocoeval(
    gt: COCO,
    predictions: List[dict],
    iou_type: str = "bbox",
    iou_thresholds: Optional[Sequence[float]] = None,
    max_dets: Optional[Sequence[int]] = None,
) -> Optional[COCOeval]:
    """COCOeval evaluated and accumulated (None when there are no predictions)."""
    if not predictions:
        return None
    detections = load_detections(gt, predictions)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, detections, iou_type)
        if iou_thresholds is not None:
            evaluation.params.iouThrs = np.asarray(iou_thresholds, dtype=float)
        if max_dets is not None:
            evaluation.params.maxDets = list(max_dets)
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def summary_metrics(gt: COCO, predictions: List[dict], iou_type: str = "bbox") -> Dict[str, float]:
    """COCO's 12 summary numbers we report (AP, AP50, ..., AR@100), in percent."""
    evaluation = run_cocoeval(gt, predictions, iou_type)
    if evaluation is None:
        return {key: 0.0 for key in SUMMARY_KEYS}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.summarize()
    stats = evaluation.stats  # AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl
    return {key: float(100 * max(stats[i], 0.0)) for i, key in enumerate(SUMMARY_KEYS)}


def _mean_valid(values: np.ndarray, axis) -> np.ndarray:
    """Mean over ``axis`` of entries COCOeval did not mark absent (-1)."""
    valid = values > -1
    total = np.where(valid, values, 0).sum(axis=axis)
    count = valid.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def precision_recall_curves(
    gt: COCO, predictions: List[dict]
) -> Dict[float, Tuple[np.ndarray, np.ndarray]]:
    """Class-averaged precision at COCO's 101 recall points, at IoU 0.5 and 0.75."""
    evaluation = run_cocoeval(gt, predictions, iou_thresholds=[0.5, 0.75])
    recall_points = np.linspace(0, 1, 101)
    if evaluation is None:
        return {0.5: (recall_points, np.zeros(101)), 0.75: (recall_points, np.zeros(101))}
    precision = evaluation.eval["precision"]  # (T, 101 recalls, K, areas, maxDets)
    return {
        iou: (recall_points, _mean_valid(precision[t, :, :, 0, -1], axis=1))
        for t, iou in enumerate((0.5, 0.75))
    }


def recall_vs_iou(gt: COCO, predictions: List[dict]) -> Tuple[np.ndarray, np.ndarray]:
    """Class-averaged recall (100 detections per image) at IoU thresholds 0.1 ... 0.95."""
    evaluation = run_cocoeval(gt, predictions, iou_thresholds=RECALL_IOU_THRESHOLDS)
    if evaluation is None:
        return RECALL_IOU_THRESHOLDS, np.zeros(len(RECALL_IOU_THRESHOLDS))
    recall = evaluation.eval["recall"]  # (T, K, areas, maxDets)
    return RECALL_IOU_THRESHOLDS, _mean_valid(recall[:, :, 0, -1], axis=1)


def recall_vs_detections(gt: COCO, predictions: List[dict]) -> Tuple[np.ndarray, np.ndarray]:
    """Class-averaged recall at IoU 0.5 against the detections allowed per image."""
    max_dets = np.asarray(RECALL_MAX_DETS)
    evaluation = run_cocoeval(gt, predictions, iou_thresholds=[0.5], max_dets=RECALL_MAX_DETS)
    if evaluation is None:
        return max_dets, np.zeros(len(max_dets))
    recall = evaluation.eval["recall"]  # (1, K, areas, maxDets)
    return max_dets, _mean_valid(recall[0, :, 0, :], axis=0)


def _iou_xywh(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (B, 4) x, y, w, h boxes."""
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    low = np.maximum(corners[:, None, :2], corners[None, :, :2])
    high = np.minimum(corners[:, None, 2:], corners[None, :, 2:])
    intersection = np.prod(np.clip(high - low, 0, None), axis=2)
    areas = boxes[:, 2] * boxes[:, 3]
    return intersection / np.maximum(areas[:, None] + areas[None, :] - intersection, 1e-9)


def max_overlap_per_annotation(dataset: dict) -> Dict[int, float]:
    """For each non-crowd annotation id: its largest IoU with another box of its image."""
    by_image: Dict[int, List[dict]] = {}
    for annotation in dataset["annotations"]:
        if not annotation.get("iscrowd", 0):
            by_image.setdefault(annotation["image_id"], []).append(annotation)
    overlaps = {}
    for annotations in by_image.values():
        iou = _iou_xywh(np.array([a["bbox"] for a in annotations], dtype=float).reshape(-1, 4))
        np.fill_diagonal(iou, 0.0)
        for annotation, row in zip(annotations, iou):
            overlaps[annotation["id"]] = float(row.max()) if len(row) else 0.0
    return overlaps


def in_overlap_group(max_iou: float, low: float, high: float) -> bool:
    """Whether a box with this largest IoU belongs to the group (low, high] ({0} if high is 0)."""
    return max_iou == 0.0 if high == 0.0 else low < max_iou <= high


def overlap_group_datasets(dataset: dict) -> Dict[str, dict]:
    """For each of ``OVERLAP_GROUPS``: the dataset with every other box marked crowd.

    Detections of a crowd box are neither true nor false positives, so each group's
    recall counts its own boxes, and its AP is not charged for finding the others.
    """
    overlaps = max_overlap_per_annotation(dataset)
    groups = {}
    for name, low, high in OVERLAP_GROUPS:
        masked = copy.deepcopy(dataset)
        for annotation in masked["annotations"]:
            member = annotation["id"] in overlaps and in_overlap_group(
                overlaps[annotation["id"]], low, high
            )
            if not member:
                annotation["iscrowd"] = 1
        groups[name] = masked
    return groups


def overlap_bin_of(max_iou: float) -> str:
    """The name of the overlap bin a box with this largest IoU falls in."""
    for name, low, high in OVERLAP_BINS:
        if (high == 0.0 and max_iou == 0.0) or (low < max_iou <= high):
            return name
    raise ValueError(f"IoU {max_iou} outside [0, 1]")


def overlap_split_metrics(dataset: dict, predictions: List[dict]) -> Dict[str, Dict[str, float]]:
    """AP and recall of the boxes in each overlap bin.

    The boxes of the other bins are marked crowd, so detections of them are neither
    true nor false positives; detections of nothing stay false positives in every bin.

    Returns:
        {bin: {"num_gt", "AP", "AP50", "recall50"}}, AP and recall in percent.
    """
    overlaps = max_overlap_per_annotation(dataset)
    results = {}
    for name, _, _ in OVERLAP_BINS:
        masked = copy.deepcopy(dataset)
        members = 0
        for annotation in masked["annotations"]:
            in_bin = (
                annotation["id"] in overlaps and overlap_bin_of(overlaps[annotation["id"]]) == name
            )
            members += in_bin
            if not in_bin:
                annotation["iscrowd"] = 1
        gt = coco_from_dict(masked)
        evaluation = run_cocoeval(gt, predictions)
        if evaluation is None or members == 0:
            results[name] = {"num_gt": members, "AP": 0.0, "AP50": 0.0, "recall50": 0.0}
            continue
        precision = evaluation.eval["precision"][:, :, :, 0, -1]  # (T, 101 recalls, K)
        recall = evaluation.eval["recall"][:, :, 0, -1]  # (T, K)
        results[name] = {
            "num_gt": members,
            "AP": _coco_average(precision),
            "AP50": _coco_average(precision[0]),
            "recall50": _coco_average(recall[0]),
        }
    return results


def _coco_average(values: np.ndarray) -> float:
    """COCO's summary average: the mean of the entries not marked absent (-1), in percent."""
    present = values[values > -1]
    return float(100 * present.mean()) if present.size else 0.0

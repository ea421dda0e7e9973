"""COCO metrics under resampled validation images, for bootstrap intervals.

pycocotools matches detections to ground truth once per image (``COCOeval.evaluate``);
every summary metric then only adds up those matches over the images
(``COCOeval.accumulate``). ``MatchTable`` keeps the matches of one model on one dataset,
and ``MatchTable.metrics(weights)`` re-does the adding up with each image counted
``weights[i]`` times: all ones gives COCOeval's numbers exactly, a multinomial draw gives
one bootstrap replicate. Matching is never redone, so a replicate costs milliseconds.

Naming: I images, K categories, T IoU thresholds (0.5:0.95), D_k detections of category
k over all images, sorted by score as COCOeval sorts them.
"""

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
# The metrics a MatchTable computes, in percent. R50 / R75: recall at IoU 0.5 / 0.75 with
# 100 detections per image; AR@k: recall averaged over IoU 0.5:0.95 with k per image.
METRICS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "R50", "R75")


@dataclass
class _CategoryMatches:
    image_index: np.ndarray  # (D,) which image each detection belongs to
    rank: np.ndarray  # (D,) rank of the detection by score within its image and category
    true_positive: np.ndarray  # (T, D) matched and not ignored
    false_positive: np.ndarray  # (T, D) unmatched and not ignored
    gt_count: np.ndarray  # (I,) ground-truth boxes of the category that are not ignored


class MatchTable:
    """COCOeval's per-image matches of one set of detections (area "all").

    Args:
        gt: the ground truth.
        predictions: COCO result dicts.
        iou_type: "bbox", or "segm" for masks (predictions need "segmentation").
    """

    def __init__(self, gt: COCO, predictions: List[dict], iou_type: str = "bbox"):
        self.image_ids = sorted(gt.getImgIds())
        self.num_images = len(self.image_ids)
        self.iou_type = iou_type
        self.categories = self._match(gt, predictions)

    def _match(self, gt: COCO, predictions: List[dict]) -> List[_CategoryMatches]:
        position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        with contextlib.redirect_stdout(io.StringIO()):
            detections = gt.loadRes(copy.deepcopy(predictions)) if predictions else COCO()
            if not predictions:
                detections.dataset = {
                    "images": gt.dataset["images"],
                    "annotations": [],
                    "categories": gt.dataset["categories"],
                }
                detections.createIndex()
            evaluation = COCOeval(gt, detections, self.iou_type)
            evaluation.params.imgIds = self.image_ids
            evaluation.params.areaRng = [evaluation.params.areaRng[0]]
            evaluation.params.areaRngLbl = ["all"]
            evaluation.params.maxDets = [MAX_DETECTIONS]
            evaluation.evaluate()
        per_category = []
        num_thresholds = len(evaluation.params.iouThrs)
        for k, _ in enumerate(evaluation.params.catIds):
            records = evaluation.evalImgs[k * self.num_images : (k + 1) * self.num_images]
            scores, images, ranks, matched, ignored = [], [], [], [], []
            gt_count = np.zeros(self.num_images, dtype=np.int64)
            for record in records:
                if record is None:
                    continue
                i = position[record["image_id"]]
                gt_count[i] = int(np.count_nonzero(~np.asarray(record["gtIgnore"], dtype=bool)))
                n = len(record["dtScores"])
                scores.append(np.asarray(record["dtScores"], dtype=float))
                images.append(np.full(n, i))
                ranks.append(np.arange(n))
                matched.append(np.asarray(record["dtMatches"]).reshape(num_thresholds, n) > 0)
                ignored.append(
                    np.asarray(record["dtIgnore"], dtype=bool).reshape(num_thresholds, n)
                )
            if scores:
                # COCOeval's order: scores descending, ties in image order (stable sort).
                order = np.argsort(-np.concatenate(scores), kind="mergesort")
                matched_all = np.concatenate(matched, axis=1)[:, order]
                ignored_all = np.concatenate(ignored, axis=1)[:, order]
                image_index = np.concatenate(images)[order]
                rank = np.concatenate(ranks)[order]
            else:
                matched_all = ignored_all = np.zeros((num_thresholds, 0), dtype=bool)
                image_index = rank = np.zeros(0, dtype=np.int64)
            per_category.append(
                _CategoryMatches(
                    image_index=image_index,
                    rank=rank,
                    true_positive=matched_all & ~ignored_all,
                    false_positive=~matched_all & ~ignored_all,
                    gt_count=gt_count,
                )
            )
        return per_category

    def metrics(self, weights: np.ndarray = None) -> Dict[str, float]:
        """The ``METRICS`` (percent) with image i counted ``weights[i]`` times.

        Categories without ground truth under these weights are left out of the
        averages, as COCOeval leaves out absent categories.
        """
        weights = np.ones(self.num_images) if weights is None else np.asarray(weights, dtype=float)
        precision_rows, recall_at = [], {1: [], 10: [], MAX_DETECTIONS: []}
        for category in self.categories:
            num_gt = float(weights @ category.gt_count)
            if num_gt == 0:
                continue
            detection_weight = weights[category.image_index]  # (D,)
            tp = np.cumsum(category.true_positive * detection_weight, axis=1)  # (T, D)
            fp = np.cumsum(category.false_positive * detection_weight, axis=1)  # (T, D)
            precision_rows.append(_interpolated_precision(tp, fp, num_gt))
            for max_dets in recall_at:
                kept = detection_weight * (category.rank < max_dets)  # (D,)
                recall_at[max_dets].append(category.true_positive @ kept / num_gt)  # (T,)
        if not precision_rows:
            return {name: 0.0 for name in METRICS}
        precision = np.stack(precision_rows, axis=1)  # (T, K', 101)
        recall = {m: np.stack(r, axis=1) for m, r in recall_at.items()}  # (T, K')
        return {
            "AP": 100 * precision.mean(),
            "AP50": 100 * precision[0].mean(),
            "AP75": 100 * precision[5].mean(),
            "AR1": 100 * recall[1].mean(),
            "AR10": 100 * recall[10].mean(),
            "AR100": 100 * recall[MAX_DETECTIONS].mean(),
            "R50": 100 * recall[MAX_DETECTIONS][0].mean(),
            "R75": 100 * recall[MAX_DETECTIONS][5].mean(),
        }


def _interpolated_precision(tp: np.ndarray, fp: np.ndarray, num_gt: float) -> np.ndarray:
    """COCO's precision at the 101 recall points, per IoU threshold: (T, D) -> (T, 101)."""
    result = np.zeros((tp.shape[0], len(RECALL_POINTS)))
    if tp.shape[1] == 0:
        return result
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    # Precision made non-increasing in recall, from the right.
    precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
    for t in range(tp.shape[0]):
        index = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        reached = index < tp.shape[1]
        result[t, reached] = precision[t, index[reached]]
    return result


def image_weights(num_images: int, num_resamples: int, seed: int) -> np.ndarray:
    """(B, I) bootstrap draws: how often each image is taken in each replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=num_resamples)


def seed_draws(num_seeds: int, num_resamples: int, seed: int) -> np.ndarray:
    """(B, S) bootstrap draws of training runs: indices into a model's S seeds."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_seeds, size=(num_resamples, num_seeds))


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple:
    """The central ``level`` percentile interval of bootstrap replicates.

    Replicates may be infinite (a time never reached); NaN ones are left out. The
    interval's ends are replicates themselves (nearest rank), so infinities stay exact.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail], method="nearest")
    return float(low), float(high)

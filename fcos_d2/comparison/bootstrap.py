"""COCO metrics under resampled validation images, for bootstrap intervals.

pycocotools matches detections to ground truth once per image (``COCOeval.evaluate``);
every summary metric then only adds up those matches over the images
(``COCOeval.accumulate``). ``MatchTable`` keeps the matches of one model on one dataset,
and ``MatchTable.metrics(weights)`` re-does the adding up with each image counted
``weights[i]`` times: all ones gives COCOeval's numbers exactly, a multinomial draw gives
one bootstrap replicate. Matching is never redone, and ``replicate_metrics`` adds up many
replicates at once, as arrays over the replicates.

Naming: I images, K categories, T IoU thresholds (0.5:0.95), D_k detections of category
k over all images, sorted by score as COCOeval sorts them.
"""

import contextlib
import io
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_d2.comparison.analysis import load_detections

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
        detections = load_detections(gt, predictions) if predictions else COCO()
        with contextlib.redirect_stdout(io.StringIO()):
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

    def metrics(self, weights: Optional[np.ndarray] = None) -> Dict[str, float]:
        """The ``METRICS`` (percent) with image i counted ``weights[i]`` times (default once).

        Categories without ground truth under these weights are left out of the
        averages, as COCOeval leaves out absent categories.
        """
        weights = np.ones(self.num_images) if weights is None else np.asarray(weights, dtype=float)
        replicates = self.replicate_metrics(weights[None])
        return {name: float(values[0]) for name, values in replicates.items()}

    def replicate_metrics(self, weights: np.ndarray, chunk_size: int = 50) -> Dict[str, np.ndarray]:
        """``metrics`` under every row of (B, I) ``weights`` at once: name -> (B,) values.

        Replicates are computed ``chunk_size`` at a time, as arrays over the replicates
        (a chunk holds a few (chunk_size, T, D) arrays in memory).
        """
        weights = np.asarray(weights, dtype=float)
        chunks = [
            self._metrics_of(weights[start : start + chunk_size])
            for start in range(0, len(weights), chunk_size)
        ]
        values = np.concatenate(chunks, axis=0)  # (B, len(METRICS))
        return {name: values[:, j] for j, name in enumerate(METRICS)}

    def _metrics_of(self, weights: np.ndarray) -> np.ndarray:
        """(b, I) image weights -> (b, len(METRICS)) metrics in percent."""
        num_replicates, num_categories = len(weights), len(self.categories)
        shape = (num_replicates, len(IOU_THRESHOLDS), num_categories)
        precision = np.zeros(shape + (len(RECALL_POINTS),))  # (b, T, K, 101)
        recall_at = {m: np.zeros(shape) for m in (1, 10, MAX_DETECTIONS)}  # (b, T, K) each
        present = np.zeros((num_replicates, num_categories), dtype=bool)  # (b, K)
        for k, category in enumerate(self.categories):
            num_gt = weights @ category.gt_count  # (b,)
            present[:, k] = num_gt > 0
            num_gt = np.where(num_gt > 0, num_gt, 1.0)[:, None]  # (b, 1); absent: masked below
            detection_weight = weights[:, category.image_index]  # (b, D)
            tp = np.cumsum(category.true_positive * detection_weight[:, None], axis=2)  # (b, T, D)
            fp = np.cumsum(category.false_positive * detection_weight[:, None], axis=2)
            precision[:, :, k] = _interpolated_precision(tp, fp, num_gt[:, :, None])
            for max_dets, recall in recall_at.items():
                kept = detection_weight * (category.rank < max_dets)  # (b, D)
                recall[:, :, k] = kept @ category.true_positive.T / num_gt  # (b, T)
        # Means over IoU thresholds and the categories present in each replicate (none: 0).
        in_average = present[:, None, :]  # (b, 1, K)
        count = np.maximum(present.sum(axis=1), 1)  # (b,)

        def average(values: np.ndarray) -> np.ndarray:  # (b, T', K) -> (b,)
            return np.where(in_average, values, 0.0).sum(axis=(1, 2)) / (count * values.shape[1])

        precision = precision.mean(axis=3)  # (b, T, K): mean over the recall points
        recall = recall_at[MAX_DETECTIONS]
        columns = {
            "AP": average(precision),
            "AP50": average(precision[:, :1]),
            "AP75": average(precision[:, 5:6]),
            "AR1": average(recall_at[1]),
            "AR10": average(recall_at[10]),
            "AR100": average(recall),
            "R50": average(recall[:, :1]),
            "R75": average(recall[:, 5:6]),
        }
        return 100 * np.stack([columns[name] for name in METRICS], axis=1)


def _interpolated_precision(tp: np.ndarray, fp: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """COCO's precision at the 101 recall points: (..., D) cumulative counts -> (..., 101).

    ``num_gt`` broadcasts against ``tp``.
    """
    result = np.zeros(tp.shape[:-1] + (len(RECALL_POINTS),))
    num_detections = tp.shape[-1]
    if num_detections == 0:
        return result
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    # Precision made non-increasing in recall, from the right.
    precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=-1), axis=-1), axis=-1)
    recall_rows = recall.reshape(-1, num_detections)
    precision_rows = precision.reshape(-1, num_detections)
    result_rows = result.reshape(-1, len(RECALL_POINTS))  # a view: filled in place
    for row in range(recall_rows.shape[0]):
        index = np.searchsorted(recall_rows[row], RECALL_POINTS, side="left")
        reached = index < num_detections
        result_rows[row, reached] = precision_rows[row, index[reached]]
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

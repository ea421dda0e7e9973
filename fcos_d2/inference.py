"""FCOS inference: per-level candidates, box decoding, class-aware NMS.

Naming: R_l locations on level l, K classes, C candidates.
"""

from typing import List, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor
from torchvision.ops import batched_nms


def decode_boxes(points: Tensor, box_dists: Tensor) -> Tensor:
    """Boxes (x0, y0, x1, y1) from locations (C, 2) and pixel distances (C, 4) (l, t, r, b)."""
    return torch.cat([points - box_dists[:, :2], points + box_dists[:, 2:]], dim=1)


def select_level_candidates(
    logits: Tensor,
    centerness: Tensor,
    score_thresh: float,
    thresh_with_centerness: bool,
    topk: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The best-scoring (location, class) pairs of one level of one image.

    The score of a pair is sqrt(sigmoid(cls) * sigmoid(centerness)). Pairs whose
    thresholded score (that score, or the class probability alone) is not above
    ``score_thresh`` are dropped; of the rest at most ``topk`` are kept, best first.

    Args:
        logits: (R_l, K) class logits.
        centerness: (R_l,) centerness logits.

    Returns:
        scores (C,), location indices (C,), classes (C,).
    """
    num_classes = logits.shape[1]
    class_prob = logits.sigmoid()  # (R_l, K)
    scores = torch.sqrt(class_prob * centerness.sigmoid()[:, None])  # (R_l, K)
    gate = scores if thresh_with_centerness else class_prob
    # Top-k over all pairs with the failing ones pushed below any real score, then
    # drop those: avoids materialising the index of every passing pair.
    ranked = torch.where(gate > score_thresh, scores, torch.full_like(scores, -1.0)).flatten()
    top_scores, top_idx = ranked.topk(min(topk, ranked.numel()))
    keep = top_scores >= 0
    top_scores, top_idx = top_scores[keep], top_idx[keep]
    return top_scores, top_idx // num_classes, top_idx % num_classes


def decode_candidates(
    logits_per_level: List[Tensor],
    box_dists_per_level: List[Tensor],
    centerness_per_level: List[Tensor],
    points_per_level: List[Tensor],
    strides: List[int],
    *,
    norm_reg_targets: bool = True,
    score_thresh: float = 0.05,
    thresh_with_centerness: bool = False,
    topk_candidates: int = 1000,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The candidate boxes of one image, before NMS: per level threshold, top-k, decode.

    Tensor in, tensor out (no ``Boxes`` / ``Instances``), so that it also exports.

    Args:
        logits_per_level: (R_l, K) class logits of each level.
        box_dists_per_level: (R_l, 4) distances (l, t, r, b), in stride units when
            ``norm_reg_targets`` else in pixels.
        centerness_per_level: (R_l,) centerness logits.
        points_per_level: (R_l, 2) location coordinates.
        strides: stride of each level.

    Returns:
        boxes (C, 4), all finite, scores (C,) and classes (C,).
    """
    boxes_all, scores_all, classes_all = [], [], []
    for logits, dists, centerness, points, stride in zip(
        logits_per_level, box_dists_per_level, centerness_per_level, points_per_level, strides
    ):
        scores, locations, classes = select_level_candidates(
            logits, centerness, score_thresh, thresh_with_centerness, topk_candidates
        )
        pixel_dists = dists[locations] * stride if norm_reg_targets else dists[locations]
        boxes_all.append(decode_boxes(points[locations], pixel_dists))  # (C_l, 4)
        scores_all.append(scores)
        classes_all.append(classes)
    boxes = torch.cat(boxes_all)
    scores, classes = torch.cat(scores_all), torch.cat(classes_all)
    # Non-finite features must not turn into NaN boxes.
    finite = torch.isfinite(boxes).all(dim=1)
    return boxes[finite], scores[finite], classes[finite]


def fcos_inference_single_image(
    logits_per_level: List[Tensor],
    box_dists_per_level: List[Tensor],
    centerness_per_level: List[Tensor],
    points_per_level: List[Tensor],
    strides: List[int],
    image_size: Tuple[int, int],
    *,
    norm_reg_targets: bool = True,
    score_thresh: float = 0.05,
    thresh_with_centerness: bool = False,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.6,
    max_detections: int = 100,
) -> Instances:
    """Detections of one image from its per-level head outputs.

    Candidates come from :func:`decode_candidates` (same arguments); they are clipped
    to ``image_size`` (height, width), then class-aware NMS keeps ``max_detections``.

    Returns:
        Instances with ``pred_boxes``, ``scores`` and ``pred_classes``, best first.
    """
    boxes, scores, classes = decode_candidates(
        logits_per_level,
        box_dists_per_level,
        centerness_per_level,
        points_per_level,
        strides,
        norm_reg_targets=norm_reg_targets,
        score_thresh=score_thresh,
        thresh_with_centerness=thresh_with_centerness,
        topk_candidates=topk_candidates,
    )
    boxes = Boxes(boxes)
    boxes.clip(image_size)
    keep = batched_nms(boxes.tensor, scores, classes, nms_thresh)[:max_detections]
    result = Instances(image_size)
    result.pred_boxes = boxes[keep]
    result.scores = scores[keep]
    result.pred_classes = classes[keep]
    return result

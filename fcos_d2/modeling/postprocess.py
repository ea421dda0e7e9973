"""FCOS inference: per-level candidates, box decoding, clipping, class-aware NMS (hard, or
Gaussian Soft-NMS).

One tensor-only path (:func:`detect_single_image`) serves eager inference and export.

Naming: R_l locations on level l, K classes, C candidates.
"""

from typing import List, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor
from torchvision.ops import box_iou, nms

NMS_TYPES = ("hard", "soft_gaussian")


def decode_boxes(points: Tensor, box_dists: Tensor) -> Tensor:
    """Boxes (x0, y0, x1, y1) from locations (C, 2) and pixel distances (C, 4) (l, t, r, b)."""
    return torch.cat([points - box_dists[:, :2], points + box_dists[:, 2:]], dim=1)


def select_level_candidates(
    logits: Tensor,
    centerness: Tensor,
    score_thresh: float,
    thresh_with_centerness: bool,
    topk: int,
    with_quality: bool = True,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The best-scoring (location, class) pairs of one level of one image.

    The score of a pair is sqrt(sigmoid(cls) * sigmoid(quality)), the quality being the
    centerness (or IoU) branch; without a quality branch (``with_quality`` False) it is
    sigmoid(cls) alone. Pairs whose thresholded score (that score, or the class probability
    alone) is not above ``score_thresh`` are dropped; of the rest at most ``topk`` are kept,
    best first.

    Args:
        logits: (R_l, K) class logits.
        centerness: (R_l,) centerness logits.

    Returns:
        scores (C,), location indices (C,), classes (C,).
    """
    num_classes = logits.shape[1]
    class_prob = logits.sigmoid()  # (R_l, K)
    if with_quality:
        scores = torch.sqrt(class_prob * centerness.sigmoid()[:, None])  # (R_l, K)
    else:
        scores = class_prob
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
    with_quality: bool = True,
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
            logits, centerness, score_thresh, thresh_with_centerness, topk_candidates, with_quality
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


def clip_boxes(boxes: Tensor, height, width) -> Tensor:
    """Boxes clamped to the image, not in place (``Boxes.clip`` without its assertion).

    Args:
        boxes: (C, 4) finite (x0, y0, x1, y1).
        height, width: the image size (ints, or symbolic sizes in an export).
    """
    x = boxes[:, 0::2].clamp(min=0, max=width)  # (C, 2)
    y = boxes[:, 1::2].clamp(min=0, max=height)  # (C, 2)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def class_aware_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS of boxes clipped to the image, in one form for eager and export.

    Shifts each class's boxes by ``class * (largest coordinate + 1)`` so that boxes of
    different classes never overlap, then runs one NMS (torchvision's coordinate trick,
    which its ``batched_nms`` also uses below 4000 boxes on the CPU). ``batched_nms``
    itself returns early on no boxes and switches to a per-class loop on many: both
    branch on the number of boxes, which an export cannot know.

    torchvision's fake ``nms`` (the output size ``torch.export`` sees) declares at least
    two kept boxes, and the exported program asserts it at run time. Two sentinel boxes,
    at negative coordinates (the shifted boxes are >= 0) and scored below any candidate,
    are always kept, last, so that holds; they are dropped before returning.

    Args:
        boxes: (C, 4) finite (x0, y0, x1, y1), all coordinates >= 0.
        scores: (C,) scores, >= 0.
        classes: (C,) class indices.

    Returns:
        indices (D,) of the kept boxes, best first.
    """
    num_boxes = boxes.shape[0]
    # The appended zero makes the maximum defined when there are no boxes.
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = classes.to(boxes) * (max_coordinate + 1)  # (C,)
    sentinels = boxes.new_tensor([[-4.0, -4.0, -3.0, -3.0], [-2.0, -2.0, -1.0, -1.0]])
    keep = nms(
        torch.cat([boxes + offsets[:, None], sentinels]),
        torch.cat([scores, scores.new_full((2,), -1.0)]),
        iou_threshold,
    )
    return keep[keep < num_boxes]


def class_aware_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    sigma: float,
    max_detections: int,
    min_score: float = 1e-3,
) -> Tuple[Tensor, Tensor]:
    """Gaussian Soft-NMS (Bodla et al., 2017) within each class.

    Repeatedly takes the highest-scoring box left and multiplies the score of every other
    box of its class by exp(−IoU² / sigma); boxes of other classes are not touched. Stops
    after ``max_detections`` picks (a later pick only lowers scores, so these are the best
    final scores) or when no score left reaches ``min_score``. One vectorised step per
    detection kept, not per candidate.

    Args:
        boxes: (C, 4) (x0, y0, x1, y1).
        scores: (C,) scores.
        classes: (C,) class indices.
        sigma: the Gaussian's width (0.5 in the paper).
        max_detections: the most boxes returned.
        min_score: boxes whose decayed score falls below it are dropped.

    Returns:
        indices (D,) of the kept boxes and their decayed scores (D,), best first.
    """
    if sigma <= 0:
        raise ValueError(f"MODEL.FCOS.SOFT_NMS_SIGMA must be > 0, got {sigma}")
    remaining = scores.clone()
    kept, kept_scores = [], []
    for _ in range(min(max_detections, len(scores))):
        best_score, best = remaining.max(dim=0)
        if best_score < min_score:
            break
        kept.append(best)
        kept_scores.append(best_score)
        iou = box_iou(boxes[best][None], boxes)[0]  # (C,)
        decay = torch.where(classes == classes[best], torch.exp(-iou.square() / sigma), 1.0)
        remaining = remaining * decay
        remaining[best] = -1.0  # taken
    if not kept:
        return scores.new_zeros(0, dtype=torch.int64), scores.new_zeros(0)
    return torch.stack(kept), torch.stack(kept_scores)


def check_nms_type(nms_type: str) -> None:
    if nms_type not in NMS_TYPES:
        raise ValueError(f"MODEL.FCOS.NMS_TYPE must be one of {NMS_TYPES}, got {nms_type!r}")


def detect_single_image(
    logits_per_level: List[Tensor],
    box_dists_per_level: List[Tensor],
    centerness_per_level: List[Tensor],
    points_per_level: List[Tensor],
    strides: List[int],
    image_size: Tuple,
    *,
    norm_reg_targets: bool = True,
    score_thresh: float = 0.05,
    thresh_with_centerness: bool = False,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.6,
    detections_per_image: int = 100,
    with_quality: bool = True,
    nms_type: str = "hard",
    soft_nms_sigma: float = 0.5,
    soft_nms_min_score: float = 1e-3,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The detections of one image from its per-level head outputs, tensors only.

    The whole post-processing, shared by eager inference and the exported model:
    threshold and top-k per level and decode (:func:`decode_candidates`, same
    arguments), clip to ``image_size`` (height, width), drop the boxes clipping left
    empty (off-image predictions of locations in the padding), class-aware NMS, keep
    the best ``detections_per_image``. Empty boxes go before NMS and the cap, so that they
    never take the place of a real detection.

    Returns:
        boxes (D, 4), scores (D,), classes (D,), best first.
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
        with_quality=with_quality,
    )
    return clip_nms_cap(
        boxes,
        scores,
        classes,
        image_size,
        nms_thresh,
        detections_per_image,
        nms_type=nms_type,
        soft_nms_sigma=soft_nms_sigma,
        soft_nms_min_score=soft_nms_min_score,
    )


def clip_nms_cap(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    image_size: Tuple,
    nms_thresh: float,
    detections_per_image: int,
    *,
    nms_type: str = "hard",
    soft_nms_sigma: float = 0.5,
    soft_nms_min_score: float = 1e-3,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Candidates (C, 4), (C,), (C,) to detections: clip to ``image_size`` (height, width),
    drop the boxes clipping left empty, class-aware NMS (hard at ``nms_thresh``, or
    Gaussian Soft-NMS, which lowers scores instead of removing boxes), keep the best
    ``detections_per_image``.

    The end of :func:`detect_single_image`, also used to merge test-time augmentations and
    by the FCOS proposal generator.
    """
    check_nms_type(nms_type)
    boxes = clip_boxes(boxes, *image_size)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (C,)
    boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
    if nms_type == "soft_gaussian":
        keep, scores = class_aware_soft_nms(
            boxes, scores, classes, soft_nms_sigma, detections_per_image, soft_nms_min_score
        )
        return boxes[keep], scores, classes[keep]
    keep = class_aware_nms(boxes, scores, classes, nms_thresh)[:detections_per_image]
    return boxes[keep], scores[keep], classes[keep]


def fcos_inference_single_image(
    logits_per_level: List[Tensor],
    box_dists_per_level: List[Tensor],
    centerness_per_level: List[Tensor],
    points_per_level: List[Tensor],
    strides: List[int],
    image_size: Tuple[int, int],
    **options,
) -> Instances:
    """:func:`detect_single_image` (same arguments and ``options``) as ``Instances`` with
    ``pred_boxes``, ``scores`` and ``pred_classes``, best first."""
    boxes, scores, classes = detect_single_image(
        logits_per_level,
        box_dists_per_level,
        centerness_per_level,
        points_per_level,
        strides,
        image_size,
        **options,
    )
    result = Instances(tuple(image_size))
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = classes
    return result

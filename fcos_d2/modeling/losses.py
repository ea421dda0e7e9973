"""FCOS losses: focal loss, centerness-weighted box loss, centerness BCE.

Naming: N images, R locations, K classes, P positive locations in the batch.
"""

from typing import Dict, Tuple

import torch
import torch.distributed as dist
from detectron2.layers.losses import ciou_loss, diou_loss
from detectron2.utils import comm
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor
from torch.nn import functional as F

from .targets import centerness_targets

BOX_LOSS_TYPES = ("iou", "giou", "diou", "ciou")
BOX_QUALITIES = ("ctrness", "iou", "none")
CLS_LOSSES = ("focal", "quality_focal")


def reduce_mean(value: Tensor) -> Tensor:
    """Average a tensor over all processes (identity when not distributed)."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size


def _ltrb_to_boxes(dists: Tensor) -> Tensor:
    """Distances (l, t, r, b) from a location at the origin to the box (x0, y0, x1, y1)."""
    return torch.cat([-dists[:, :2], dists[:, 2:]], dim=1)


def _intersection_and_union(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """(P,) intersection and union areas of boxes given as distances (l, t, r, b) from
    the same location, which both boxes contain."""
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    overlap = torch.min(pred, target)  # (P, 4)
    intersection = (overlap[:, 0] + overlap[:, 2]) * (overlap[:, 1] + overlap[:, 3])
    return intersection, pred_area + target_area - intersection


def iou_of_distances(pred: Tensor, target: Tensor) -> Tensor:
    """(P,) IoU of the boxes given as (P, 4) distances (l, t, r, b) from the same locations
    (predictions clamped at 0: a box of negative side is empty)."""
    intersection, union = _intersection_and_union(pred.clamp(min=0), target)
    return intersection / union.clamp(min=1e-6)


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """GFL's quality focal loss, elementwise: |y − σ(x)|^β · BCE(x, y) for soft targets
    y in [0, 1] (the IoU at a positive's class, 0 elsewhere)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (targets - logits.sigmoid()).abs().pow(beta) * bce


def check_quality_options(box_quality: str, cls_loss: str) -> None:
    """The quality branch and the classification loss make sense together, or a ValueError
    names the keys: a class score trained to be the IoU (quality_focal) already is the
    quality estimate, so a separate quality branch would count it twice."""
    if box_quality not in BOX_QUALITIES:
        raise ValueError(
            f"MODEL.FCOS.BOX_QUALITY must be one of {BOX_QUALITIES}, got {box_quality!r}"
        )
    if cls_loss not in CLS_LOSSES:
        raise ValueError(f"MODEL.FCOS.CLS_LOSS must be one of {CLS_LOSSES}, got {cls_loss!r}")
    if cls_loss == "quality_focal" and box_quality != "none":
        raise ValueError(
            f"MODEL.FCOS.CLS_LOSS quality_focal trains the class score to be the box's IoU; "
            f"MODEL.FCOS.BOX_QUALITY {box_quality} would multiply a second quality estimate "
            "into it: set BOX_QUALITY none (GFL), or CLS_LOSS focal"
        )


def _neg_log_iou(pred: Tensor, target: Tensor, smoothing: float = 0.0, eps: float = 1e-6) -> Tensor:
    """-log IoU of boxes given as distances from the same location (the paper's IoU loss),
    with IoU = (I + smoothing) / (U + smoothing)."""
    intersection, union = _intersection_and_union(pred, target)
    iou = (intersection + smoothing) / (union + smoothing).clamp(min=eps)
    return -torch.log(iou.clamp(min=eps))


def _smoothed_giou_loss(pred: Tensor, target: Tensor, smoothing: float) -> Tensor:
    """1 − GIoU with the official FCOS code's IoU, (I + s) / (U + s); the enclosing-box
    term uses the exact union, as there."""
    intersection, union = _intersection_and_union(pred, target)
    enclosing = torch.max(pred, target)  # (P, 4)
    enclosing_area = (enclosing[:, 0] + enclosing[:, 2]) * (
        enclosing[:, 1] + enclosing[:, 3]
    ) + 1e-7
    iou = (intersection + smoothing) / (union + smoothing)
    return 1 - (iou - (enclosing_area - union) / enclosing_area)


def check_iou_loss_smoothing(loss_type: str, smoothing: float) -> None:
    """IOU_LOSS_SMOOTHING is defined for the iou and giou losses only, and not negative."""
    if smoothing < 0:
        raise ValueError(f"MODEL.FCOS.IOU_LOSS_SMOOTHING must be >= 0, got {smoothing}")
    if smoothing and loss_type not in ("iou", "giou"):
        raise ValueError(
            f"MODEL.FCOS.IOU_LOSS_SMOOTHING {smoothing} applies to BOX_LOSS_TYPE iou or giou "
            f"(as in the official FCOS code), not {loss_type!r}; set it to 0"
        )


def box_regression_loss(
    pred: Tensor, target: Tensor, loss_type: str, smoothing: float = 0.0
) -> Tensor:
    """Per-location box loss between (P, 4) predicted and target distances (l, t, r, b).

    ``smoothing`` s makes the IoU of the iou / giou losses (I + s) / (U + s), as the
    official FCOS code computes it with s = 1 (see ``MODEL.FCOS.IOU_LOSS_SMOOTHING``).

    Returns:
        (P,) losses.
    """
    check_iou_loss_smoothing(loss_type, smoothing)
    if loss_type == "iou":
        return _neg_log_iou(pred, target, smoothing)
    if loss_type == "giou" and smoothing:
        return _smoothed_giou_loss(pred, target, smoothing)
    pred_boxes, target_boxes = _ltrb_to_boxes(pred), _ltrb_to_boxes(target)
    if loss_type == "giou":
        return giou_loss(pred_boxes, target_boxes, reduction="none")
    if loss_type == "diou":
        return diou_loss(pred_boxes, target_boxes, reduction="none")
    if loss_type == "ciou":
        # Its aspect term divides by the predicted height: keep zero sides (a ReLU'd
        # output, which gets no gradient there anyway) off exactly zero.
        return ciou_loss(_ltrb_to_boxes(pred.clamp(min=1e-6)), target_boxes, reduction="none")
    raise ValueError(f"MODEL.FCOS.BOX_LOSS_TYPE must be one of {BOX_LOSS_TYPES}, got {loss_type!r}")


def fcos_losses(
    pred_logits: Tensor,
    pred_box_dists: Tensor,
    pred_centerness: Tensor,
    labels: Tensor,
    box_targets: Tensor,
    *,
    num_classes: int,
    focal_loss_alpha: float = 0.25,
    focal_loss_gamma: float = 2.0,
    box_loss_type: str = "giou",
    iou_loss_smoothing: float = 0.0,
    box_quality: str = "ctrness",
    cls_loss: str = "focal",
    qfl_beta: float = 2.0,
) -> Dict[str, Tensor]:
    """The FCOS losses for a batch.

    Classification and quality losses are normalised by the number of positives. The box
    loss is weighted and normalised by the positives' centerness targets (FCOS), by their
    highest predicted class score, detached, with the quality focal loss (GFL), else
    averaged over the positives; every normaliser is averaged across processes, so the
    result does not depend on how a batch is split.

    Args:
        pred_logits: (N, R, K) class logits.
        pred_box_dists: (N, R, 4) predicted distances, in the units of ``box_targets``.
        pred_centerness: (N, R) quality logits (centerness or IoU, see ``box_quality``).
        labels: (N, R) in [0, K]; K is background, negative values are ignored.
        box_targets: (N, R, 4) target distances (l, t, r, b).
        num_classes: K.
        focal_loss_alpha, focal_loss_gamma: focal loss parameters.
        box_loss_type: one of ``BOX_LOSS_TYPES``.
        iou_loss_smoothing: see :func:`box_regression_loss`.
        box_quality: what the quality branch is trained on (BCE): "ctrness" (the centerness
            of the target box), "iou" (the IoU of the predicted box with its target,
            detached) or "none" (no quality loss).
        cls_loss: "focal", or "quality_focal": the positive's class target is that IoU.
        qfl_beta: β of the quality focal loss.

    Returns:
        ``loss_fcos_cls``, ``loss_fcos_loc`` and, with a quality branch, ``loss_fcos_ctr``.
    """
    check_quality_options(box_quality, cls_loss)
    valid = labels >= 0  # (N, R)
    positive = valid & (labels < num_classes)  # (N, R)
    num_positive = reduce_mean(positive.sum().to(pred_logits.dtype)).clamp(min=1.0)

    positive_targets = box_targets[positive]  # (P, 4)
    positive_dists = pred_box_dists[positive]  # (P, 4)
    ious = None
    if box_quality == "iou" or cls_loss == "quality_focal":
        ious = iou_of_distances(positive_dists, positive_targets).detach()  # (P,)

    # One-hot over K + 1 columns, then drop the background column.
    cls_targets = F.one_hot(labels[valid], num_classes + 1)[:, :num_classes]  # (V, K)
    cls_targets = cls_targets.to(pred_logits.dtype)
    valid_logits = pred_logits[valid]  # (V, K)
    if cls_loss == "quality_focal":
        # The positives' one-hot rows, scaled by their IoU (soft labels).
        positive_rows = positive[valid]  # (V,)
        cls_targets[positive_rows] = cls_targets[positive_rows] * ious[:, None]
        loss_cls = quality_focal_loss(valid_logits, cls_targets, qfl_beta).sum()
    else:
        loss_cls = sigmoid_focal_loss(
            valid_logits,
            cls_targets,
            alpha=focal_loss_alpha,
            gamma=focal_loss_gamma,
            reduction="sum",
        )

    loss_box = box_regression_loss(
        positive_dists, positive_targets, box_loss_type, iou_loss_smoothing
    )
    losses = {"loss_fcos_cls": loss_cls / num_positive}
    if box_quality == "ctrness":
        ctr_targets = centerness_targets(positive_targets)  # (P,)
        box_weights = ctr_targets
    elif cls_loss == "quality_focal":  # GFL: the highest class score, detached
        box_weights = pred_logits[positive].detach().sigmoid().max(dim=1).values  # (P,)
    else:
        box_weights = torch.ones_like(loss_box)
    normalizer = reduce_mean(box_weights.sum()).clamp(min=1e-6)
    losses["loss_fcos_loc"] = (loss_box * box_weights).sum() / normalizer
    if box_quality != "none":
        quality_targets = ctr_targets if box_quality == "ctrness" else ious
        loss_quality = F.binary_cross_entropy_with_logits(
            pred_centerness[positive], quality_targets, reduction="sum"
        )
        losses["loss_fcos_ctr"] = loss_quality / num_positive
    return losses

"""FCOS losses against independent computations with torchvision's loss functions."""

import math

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from fcos_d2.modeling.losses import box_regression_loss, fcos_losses

K = 3


def as_boxes(ltrb):
    """Distances from a location at the origin to a box (x0, y0, x1, y1)."""
    return torch.stack([-ltrb[:, 0], -ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]], dim=1)


def tiny_case():
    """One image, five locations: two positives, two negatives, one ignored."""
    labels = torch.tensor([[0, K, 2, K, -1]])
    logits = torch.randn(1, 5, K)
    pred_ltrb = torch.rand(1, 5, 4) * 3 + 0.5
    target_ltrb = torch.rand(1, 5, 4) * 3 + 0.5
    centerness = torch.randn(1, 5)
    return logits, pred_ltrb, centerness, labels, target_ltrb


def reference_losses(logits, pred_ltrb, centerness, labels, target_ltrb, box_loss):
    """The three losses written out independently of fcos_d2."""
    valid = labels[0] >= 0
    positive = valid & (labels[0] < K)
    num_positive = float(positive.sum())
    one_hot = torch.zeros(5, K)
    for i, label in enumerate(labels[0].tolist()):
        if 0 <= label < K:
            one_hot[i, label] = 1.0
    cls = sigmoid_focal_loss(logits[0][valid], one_hot[valid], 0.25, 2.0, "sum") / num_positive
    t = target_ltrb[0][positive]
    ctr = torch.sqrt(
        torch.minimum(t[:, 0], t[:, 2])
        / torch.maximum(t[:, 0], t[:, 2])
        * torch.minimum(t[:, 1], t[:, 3])
        / torch.maximum(t[:, 1], t[:, 3])
    )
    per_box = box_loss(as_boxes(pred_ltrb[0][positive]), as_boxes(t), reduction="none")
    loc = (per_box * ctr).sum() / ctr.sum()
    ctr_loss = F.binary_cross_entropy_with_logits(centerness[0][positive], ctr, reduction="sum")
    return cls, loc, ctr_loss / num_positive


@pytest.mark.parametrize(
    "loss_type, reference",
    [
        ("giou", generalized_box_iou_loss),
        ("diou", distance_box_iou_loss),
        ("ciou", complete_box_iou_loss),
    ],
)
def test_losses_match_torchvision_reference(loss_type, reference):
    case = tiny_case()
    losses = fcos_losses(*case, num_classes=K, box_loss_type=loss_type)
    cls, loc, ctr = reference_losses(*case, reference)
    torch.testing.assert_close(losses["loss_fcos_cls"], cls)
    torch.testing.assert_close(losses["loss_fcos_loc"], loc)
    torch.testing.assert_close(losses["loss_fcos_ctr"], ctr)


def test_ignored_location_does_not_change_any_loss():
    logits, pred, ctr, labels, target = tiny_case()
    before = fcos_losses(logits, pred, ctr, labels, target, num_classes=K)
    logits[0, 4] += 10.0  # the ignored location
    after = fcos_losses(logits, pred, ctr, labels, target, num_classes=K)
    for name in before:
        torch.testing.assert_close(before[name], after[name])


def test_iou_loss_is_negative_log_iou():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    # 2x2 inside 4x4: IoU 4 / 16. Identical boxes: IoU 1.
    expected = torch.tensor([-math.log(0.25), 0.0])
    torch.testing.assert_close(box_regression_loss(pred, target, "iou"), expected)


def test_unknown_box_loss_names_the_key():
    with pytest.raises(ValueError, match="BOX_LOSS_TYPE"):
        box_regression_loss(torch.ones(1, 4), torch.ones(1, 4), "l1")


def test_all_negative_batch_is_finite_and_backpropagates():
    logits = torch.randn(2, 6, K, requires_grad=True)
    pred = torch.rand(2, 6, 4, requires_grad=True)
    ctr = torch.randn(2, 6, requires_grad=True)
    labels = torch.full((2, 6), K)
    losses = fcos_losses(logits, pred, ctr, labels, torch.zeros(2, 6, 4), num_classes=K)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # No positives: the focal loss is normalised by 1, box and centerness losses are 0.
    expected_cls = sigmoid_focal_loss(logits, torch.zeros(2, 6, K), reduction="sum")
    torch.testing.assert_close(losses["loss_fcos_cls"], expected_cls)
    assert losses["loss_fcos_loc"].item() == 0.0 and losses["loss_fcos_ctr"].item() == 0.0


@pytest.mark.parametrize("loss_type", ["iou", "giou", "diou", "ciou"])
def test_box_losses_finite_for_degenerate_predictions(loss_type):
    pred = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 0.5, 1.0]])
    loss = box_regression_loss(pred, target, loss_type)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()


def test_iou_loss_smoothing_by_hand():
    """pred (l, t, r, b) = (3, 1, 1, 1), target (1, 1, 1, 2), from the same location:
    areas 8 and 6, intersection 2 x 2 = 4, union 10, enclosing box 4 x 3 = 12."""
    pred = torch.tensor([[3.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 1.0, 2.0]])
    for s, iou in ((0.0, 4 / 10), (1.0, 5 / 11), (2.5, 6.5 / 12.5)):
        torch.testing.assert_close(
            box_regression_loss(pred, target, "iou", s), torch.tensor([-math.log(iou)])
        )
        expected_giou = 1 - (iou - (12 - 10) / 12)
        torch.testing.assert_close(
            box_regression_loss(pred, target, "giou", s), torch.tensor([expected_giou])
        )


def test_iou_loss_smoothing_only_for_iou_and_giou():
    pred = target = torch.ones(1, 4)
    for loss_type in ("diou", "ciou"):
        with pytest.raises(ValueError, match="IOU_LOSS_SMOOTHING"):
            box_regression_loss(pred, target, loss_type, 1.0)
    with pytest.raises(ValueError, match="IOU_LOSS_SMOOTHING must be >= 0"):
        box_regression_loss(pred, target, "iou", -1.0)

"""FCOS losses (fcos_d2.modeling.losses) against independent computations with
torchvision's loss functions, and under mixed precision.

Mixed precision: Detectron2's AMPTrainer (SOLVER.AMP.ENABLED) runs the model under CUDA
autocast, which CI has no GPU for. CPU autocast with float16 makes the same choices that
matter here: convolutions, hence the head's outputs, come out in float16, and anything
computed from them stays float16 unless cast. Box areas in pixels overflow float16 (max
65504) and Detectron2's box losses mix dtypes, so the losses must run in float32.
Backward passes use bfloat16: CPU float16 convolution backward has no fast kernel (two
minutes for one step of this tiny model), bfloat16's takes a fraction of a second."""

import math

import pytest
import torch
from conftest import load_config, make_instances
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
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


HEIGHT, WIDTH = 384, 512


# A 490 x 370 box: 181,300 px², beyond float16.
BOXES = [[10.0, 10.0, 500.0, 380.0], [100.0, 50.0, 200.0, 300.0]]


def batch():
    return [
        {
            "image": torch.rand(3, HEIGHT, WIDTH) * 255,
            "instances": make_instances((HEIGHT, WIDTH), BOXES, [0, 1]),
        }
        for _ in range(2)
    ]


def build_training_model(box_loss_type: str, norm_reg_targets: bool = False):
    cfg = load_config(
        opts=[
            "MODEL.FCOS.BOX_LOSS_TYPE",
            box_loss_type,
            "MODEL.FCOS.NORM_REG_TARGETS",
            str(norm_reg_targets),
        ]
    )
    return build_model(cfg).train()


def head_logits_dtype(model, inputs) -> torch.dtype:
    features = model.backbone(model.preprocess_image(inputs).tensor)
    return model.head([features[f] for f in model.head_in_features])[0][0].dtype


@pytest.mark.parametrize("box_loss_type", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("norm_reg_targets", [False, True])
def test_float16_autocast_losses_are_finite_float32_and_match(box_loss_type, norm_reg_targets):
    model = build_training_model(box_loss_type, norm_reg_targets)
    inputs = batch()
    with torch.no_grad(), EventStorage():
        reference = model(inputs)
        with torch.autocast("cpu", dtype=torch.float16):
            mixed = model(inputs)
            # The head really ran in float16 (else this test checks nothing).
            assert head_logits_dtype(model, inputs) == torch.float16

    for name, value in mixed.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        torch.testing.assert_close(value, reference[name], rtol=1e-2, atol=1e-3, msg=name)


@pytest.mark.parametrize("box_loss_type", ["iou", "giou", "diou", "ciou"])
def test_bfloat16_autocast_backward_gives_finite_gradients(box_loss_type):
    model = build_training_model(box_loss_type)
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch())
    sum(losses.values()).backward()
    for name, value in losses.items():
        assert torch.isfinite(value), name
    gradients = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "head.cls_logits.weight" in gradients
    for name, gradient in gradients.items():
        assert torch.isfinite(gradient).all(), name

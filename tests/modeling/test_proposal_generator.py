"""FCOS as the proposal generator of Detectron2's R-CNNs ("FCOS" in PROPOSAL_GENERATOR_REGISTRY)."""

import pytest
import torch
from conftest import CONFIGS, load_config, make_instances
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, build_model
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage

from fcos_d2.modeling.proposal_generator import FCOS as FCOSProposals

CONFIG = CONFIGS / "baselines" / "mask_rcnn_FCOS_RPN_R_18_shapes_cpu.yaml"


SMALL = [
    "INPUT.MIN_SIZE_TEST",
    "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "40",
]


def batch(empty_second=False):
    images = [torch.rand(3, 64, 80) * 255 for _ in range(2)]
    boxes = [[[4, 6, 30, 40], [20, 20, 60, 50]], [] if empty_second else [[10, 10, 50, 60]]]
    classes = [[0, 3], [] if empty_second else [2]]
    return [
        {"image": image, "instances": make_instances((64, 80), b, c)}
        for image, b, c in zip(images, boxes, classes)
    ]


def test_registered_and_built_by_an_rcnn_yaml():
    assert PROPOSAL_GENERATOR_REGISTRY.get("FCOS") is FCOSProposals
    model = build_model(load_config(CONFIG))
    assert isinstance(model.proposal_generator, FCOSProposals)
    assert model.proposal_generator.head.cls_logits.out_channels == 1  # class-agnostic


@pytest.mark.parametrize("empty_second", [False, True])
def test_trains_a_step_inside_generalized_rcnn(empty_second):
    model = build_model(load_config(CONFIG, ["MODEL.MASK_ON", "False"]))  # boxes only here
    model.train()
    with EventStorage():  # the ROI heads log sampling statistics
        losses = model(batch(empty_second))
    assert {
        "loss_fcos_cls",
        "loss_fcos_loc",
        "loss_fcos_ctr",
        "loss_cls",
        "loss_box_reg",
    } <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head = model.proposal_generator.head
    for parameter in (head.cls_logits.weight, head.box_pred.weight, head.centerness.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0  # reaches the backbone


def test_proposals_are_agnostic_sorted_inside_and_capped():
    model = build_model(load_config(CONFIG, SMALL)).eval()
    generator = model.proposal_generator
    images = ImageList(torch.rand(2, 3, 64, 96), [(64, 80), (50, 96)])
    with torch.no_grad():
        features = model.backbone(images.tensor)
        proposals, losses = generator(images, features)
    assert losses == {}
    for instances, (height, width) in zip(proposals, images.image_sizes):
        assert set(instances.get_fields()) == {"proposal_boxes", "objectness_logits"}
        assert 0 < len(instances) <= 50
        boxes = instances.proposal_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert instances.proposal_boxes.nonempty().all()
        logits = instances.objectness_logits
        assert torch.equal(logits, logits.sort(descending=True).values)
    # Class-agnostic NMS: no two proposals overlap beyond the NMS threshold.
    from torchvision.ops import box_iou

    iou = box_iou(proposals[0].proposal_boxes.tensor, proposals[0].proposal_boxes.tensor)
    iou.fill_diagonal_(0)
    assert iou.max() <= generator.nms_thresh + 1e-6


def test_rcnn_with_fcos_proposals_detects_at_test_time():
    model = build_model(
        load_config(CONFIG, [*SMALL, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    ).eval()
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 64, 80) * 255}])
    instances = outputs[0]["instances"]
    assert len(instances) > 0 and instances.has("pred_masks")


def test_the_classes_of_the_ground_truth_are_left_alone():
    model = build_model(load_config(CONFIG, ["MODEL.MASK_ON", "False"])).train()
    inputs = batch()
    before = [x["instances"].gt_classes.clone() for x in inputs]
    with EventStorage():
        model(inputs)
    assert all(torch.equal(x["instances"].gt_classes, b) for x, b in zip(inputs, before))


def proposals_of(model, images, gt_instances=None):
    with torch.no_grad():
        return model.proposal_generator(images, model.backbone(images.tensor), gt_instances)[0]


@pytest.mark.parametrize("training", [False, True])
def test_the_rpn_post_nms_topk_of_the_phase_caps_the_proposals(training):
    """POST_NMS_TOPK_TEST / _TRAIN bind: 5 (test) or 7 (train) of the many candidates of a
    random model, as Detectron2's RPN; training proposals carry no gradient."""
    opts = [*SMALL, "MODEL.RPN.POST_NMS_TOPK_TEST", "5", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "7"]
    model = build_model(load_config(CONFIG, opts)).train(training)
    images = ImageList(torch.rand(2, 3, 64, 96) * 255, [(64, 96), (64, 96)])
    gt = [make_instances((64, 96), [[4, 6, 30, 40]], [1]) for _ in range(2)] if training else None
    with EventStorage():
        proposals = proposals_of(model, images, gt)
    assert [len(p) for p in proposals] == ([7, 7] if training else [5, 5])
    assert not any(p.proposal_boxes.tensor.requires_grad for p in proposals)


def test_objectness_logits_are_the_logits_of_the_fcos_scores():
    """sigmoid(objectness_logit) of every proposal is one location's
    sqrt(sigmoid(class logit) * sigmoid(centerness logit)), computed here from the head."""
    model = build_model(load_config(CONFIG, SMALL)).eval()
    images = ImageList(torch.rand(1, 3, 64, 96) * 255, [(64, 96)])
    with torch.no_grad():
        features = model.backbone(images.tensor)
        cls, _, ctr = model.proposal_generator.head(
            [features[f] for f in model.proposal_generator.in_features]
        )
        proposals = model.proposal_generator(images, features)[0][0]
    location_scores = torch.cat(
        [(c.sigmoid() * t.sigmoid()).sqrt().flatten() for c, t in zip(cls, ctr)]
    )  # (R,)
    scores = proposals.objectness_logits.sigmoid()  # (P,)
    assert len(scores) > 0
    nearest = (scores[:, None] - location_scores[None, :]).abs().min(dim=1).values
    assert nearest.max() < 1e-5


def test_an_image_without_proposals_at_test_time_gives_empty_instances():
    """Every candidate is off the image (image size 0 x 0 inside the padded tensor): each
    box clips to nothing and is dropped, leaving empty proposals with both fields."""
    model = build_model(load_config(CONFIG, SMALL)).eval()
    images = ImageList(torch.rand(1, 3, 64, 96) * 255, [(0, 0)])
    proposals = proposals_of(model, images)
    assert len(proposals[0]) == 0
    assert set(proposals[0].get_fields()) == {"proposal_boxes", "objectness_logits"}

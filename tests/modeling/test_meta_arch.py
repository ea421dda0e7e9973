"""The FCOS meta-architecture end to end on CPU: build, train steps (empty, half-empty,
small and elongated images), inference (NaN / Inf inputs), overfitting."""

import pytest
import torch
from conftest import CONFIGS, finite, load_config, make_instances, train_step
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import pairwise_iou

from fcos_d2 import FCOS
from fcos_d2.modeling.head import ModulatedDeformConv3x3


def synthetic_batch(size=64):
    """Two images: one with two boxes, one with none."""
    images = [torch.rand(3, size, size) * 255 for _ in range(2)]
    return [
        {
            "image": images[0],
            "instances": make_instances((size, size), [[4, 6, 30, 40], [20, 20, 60, 50]], [0, 3]),
        },
        {"image": images[1], "instances": make_instances((size, size), [], [])},
    ]


def test_fcos_is_registered():
    assert META_ARCH_REGISTRY.get("FCOS") is FCOS


def test_r50_parameter_count_matches_detectron2_fcos_plus_scales():
    model = build_model(load_config(CONFIGS / "FCOS_R_50_1x.yaml"))
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    reference = instantiate(model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Same backbone, FPN and head; ours adds one learnable Scale per level (5).
    assert count(model) == count(reference) + 5


def _centerness_reads_box_tower(model) -> bool:
    """Whether changing the box tower changes the centerness output (it reads that tower)."""
    features = [torch.randn(1, model.head.cls_logits.in_channels, 8, 8)]
    model.eval()
    with torch.no_grad():
        before = model.head(features)[2][0].clone()
        for module in model.head.box_tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.add_(torch.randn_like(module.weight))
        after = model.head(features)[2][0]
    return not torch.equal(before, after)


def _norm_layers(model):
    return [
        m
        for m in model.head.cls_tower.modules()
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
    ]


# What each option set must visibly change in the built model.
OPTION_EFFECTS = {
    "default": lambda m: (
        isinstance(_norm_layers(m)[0], torch.nn.GroupNorm)
        and m.head.scales is not None
        and _centerness_reads_box_tower(m)
    ),
    "bn": lambda m: isinstance(_norm_layers(m)[0], torch.nn.BatchNorm2d),
    "no-norm-no-scale": lambda m: not _norm_layers(m) and m.head.scales is None,
    "shared-conv": lambda m: (
        any(isinstance(x, torch.nn.Conv2d) for x in m.head.share_tower.modules())
        and not _centerness_reads_box_tower(m)
    ),
    "exp-iou": lambda m: not m.norm_reg_targets and m.box_loss_type == "iou",
    "deformable": lambda m: (
        any(isinstance(x, ModulatedDeformConv3x3) for x in m.head.modules())
        and m.box_loss_type == "ciou"
    ),
    "no-sampling": lambda m: m.center_sampling_radius == 0.0 and m.box_loss_type == "diou",
}


@pytest.mark.parametrize(
    "opts",
    [
        [],
        ["MODEL.FCOS.NORM", "BN"],
        ["MODEL.FCOS.NORM", "none", "MODEL.FCOS.USE_SCALE", "False"],
        ["MODEL.FCOS.NUM_SHARE_CONVS", "1", "MODEL.FCOS.CENTERNESS_ON_REG", "False"],
        ["MODEL.FCOS.NORM_REG_TARGETS", "False", "MODEL.FCOS.BOX_LOSS_TYPE", "iou"],
        ["MODEL.FCOS.USE_DEFORMABLE", "True", "MODEL.FCOS.BOX_LOSS_TYPE", "ciou"],
        ["MODEL.FCOS.CENTER_SAMPLING_RADIUS", "0.0", "MODEL.FCOS.BOX_LOSS_TYPE", "diou"],
    ],
    ids=list(OPTION_EFFECTS),
)
def test_half_empty_batch_trains_and_infers(opts, request):
    # Score threshold 0: an untrained head scores about PRIOR_PROB, so inference has work to do.
    model = build_model(load_config(opts=[*opts, "MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]))
    assert OPTION_EFFECTS[request.node.callspec.id](model)
    model = build_model(load_config(opts=[*opts, "MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]))
    losses = train_step(model, synthetic_batch())
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"] > 0  # the image with boxes has positives
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        outputs = model(
            [{"image": b["image"], "height": 32, "width": 48} for b in synthetic_batch()]
        )
    for output in outputs:
        instances = output["instances"]
        assert instances.image_size == (32, 48)  # rescaled by detector_postprocess
        assert 0 < len(instances) <= 100
        boxes = instances.pred_boxes.tensor
        assert torch.isfinite(boxes).all() and instances.pred_boxes.nonempty().all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 32).all()


def test_all_empty_batch_trains_with_finite_losses():
    model = build_model(load_config())
    batch = [
        {"image": torch.rand(3, 64, 64) * 255, "instances": make_instances((64, 64), [], [])}
    ] * 2
    losses = train_step(model, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"].item() == 0.0
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_mismatched_strides_name_the_key():
    with pytest.raises(ValueError, match="FPN_STRIDES"):
        build_model(load_config(opts=["MODEL.FCOS.FPN_STRIDES", "[8, 16, 64]"]))


@pytest.mark.slow
def test_tiny_model_overfits_one_image_and_detects_both_boxes():
    model = build_model(load_config(opts=["MODEL.FCOS.NUM_CLASSES", "2"]))
    image = torch.full((3, 64, 64), 40.0)
    image[:, 8:28, 6:30] = torch.tensor([250.0, 30, 30])[:, None, None]
    image[:, 30:60, 34:58] = torch.tensor([30.0, 250, 30])[:, None, None]
    gt = make_instances((64, 64), [[6, 8, 30, 28], [34, 30, 58, 60]], [0, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        optimizer.zero_grad()
        train_step(model, [{"image": image, "instances": gt}])
        optimizer.step()
    model.eval()
    with torch.no_grad():
        detections = model([{"image": image}])[0]["instances"][:2]
    iou = pairwise_iou(gt.gt_boxes, detections.pred_boxes)  # (2 gt, 2 detections)
    best_iou, best = iou.max(dim=1)
    assert (best_iou > 0.5).all(), iou
    assert detections.pred_classes[best].tolist() == [0, 1]


# Images smaller than the largest stride, extreme aspect ratios.
@pytest.mark.parametrize("size", [(48, 64), (32, 512), (600, 40)])
def test_small_and_elongated_images_train_and_infer(size):
    opts = [
        "MODEL.FCOS.IN_FEATURES",
        "['p3', 'p4', 'p5', 'p6', 'p7']",
        "MODEL.FCOS.FPN_STRIDES",
        "[8, 16, 32, 64, 128]",
        "MODEL.FCOS.SIZES_OF_INTEREST",
        "[64, 128, 256, 512]",
        "MODEL.FCOS.TOP_LEVELS",
        "2",
        # GN(32) needs 2+ values a group: on a 1x1 P7 that takes 64 channels (real configs: 256).
        "MODEL.FPN.OUT_CHANNELS",
        "64",
        # An untrained head scores about PRIOR_PROB: threshold 0 so inference has candidates.
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "0.0",
    ]
    model = build_model(load_config(opts=opts))
    height, width = size
    gt = make_instances(size, [[2, 2, width - 3, height - 3]], [1])
    losses = train_step(model, [{"image": torch.rand(3, height, width) * 255, "instances": gt}])
    assert finite(losses)
    model.eval()
    with torch.no_grad():
        result = model([{"image": torch.rand(3, height, width) * 255}])[0]["instances"]
    assert result.image_size == size
    boxes = result.pred_boxes.tensor
    assert len(result) > 0 and torch.isfinite(boxes).all() and result.pred_boxes.nonempty().all()
    assert (
        (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    )


# NaN / Inf in the input at inference.
def test_nan_and_inf_inputs_give_no_nan_boxes():
    model = build_model(load_config(opts=["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]))
    model.eval()
    image = torch.rand(3, 64, 64) * 255
    image[:, :10, :10] = float("nan")
    image[:, 30:40, 30:40] = float("inf")
    with torch.no_grad():
        outputs = model([{"image": image}, {"image": torch.rand(3, 64, 64) * 255}])
    for output in outputs:
        instances = output["instances"]
        assert torch.isfinite(instances.pred_boxes.tensor).all()
        assert torch.isfinite(instances.scores).all()
    assert len(outputs[1]["instances"]) > 0  # a clean image in the same batch still detects

"""The FCOS meta-architecture end to end on CPU: build, train steps, inference, overfitting."""

import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import pairwise_iou

from fcos_d2 import FCOS
from fcos_d2.head import DeformableConv3x3

from conftest import CONFIGS, load_config, make_instances

ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))


def synthetic_batch(size=64):
    """Two images: one with two boxes, one with none."""
    images = [torch.rand(3, size, size) * 255 for _ in range(2)]
    return [
        {"image": images[0], "instances": make_instances((size, size), [[4, 6, 30, 40], [20, 20, 60, 50]], [0, 3])},
        {"image": images[1], "instances": make_instances((size, size), [], [])},
    ]


def train_step(model, batch):
    model.train()
    losses = model(batch)
    total = sum(losses.values())
    total.backward()
    return losses


def test_fcos_is_registered():
    assert META_ARCH_REGISTRY.get("FCOS") is FCOS


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads_and_builds(path):
    cfg = load_config(path)
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    if isinstance(model, FCOS):
        assert model.head_in_features == list(cfg.MODEL.FCOS.IN_FEATURES)
        assert model.strides == list(cfg.MODEL.FCOS.FPN_STRIDES)


def test_r50_parameter_count_matches_detectron2_fcos_plus_scales():
    model = build_model(load_config(CONFIGS / "FCOS_R_50_1x.yaml"))
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    reference = instantiate(model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Same backbone, FPN and head; ours adds one learnable Scale per level (5).
    assert count(model) == count(reference) + 5


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
    ids=["default", "bn", "no-norm-no-scale", "shared-conv", "exp-iou", "deformable", "no-sampling"],
)
def test_half_empty_batch_trains_and_infers(opts):
    model = build_model(load_config(opts=opts))
    losses = train_step(model, synthetic_batch())
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"], "height": 32, "width": 48} for b in synthetic_batch()])
    for output in outputs:
        instances = output["instances"]
        assert instances.image_size == (32, 48)  # rescaled by detector_postprocess
        assert len(instances) <= 100
        boxes = instances.pred_boxes.tensor
        assert (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 32).all()


def test_deformable_head_uses_deformable_convs():
    model = build_model(load_config(opts=["MODEL.FCOS.USE_DEFORMABLE", "True"]))
    assert sum(isinstance(m, DeformableConv3x3) for m in model.head.modules()) == 2


def test_all_empty_batch_trains_with_finite_losses():
    model = build_model(load_config())
    batch = [{"image": torch.rand(3, 64, 64) * 255, "instances": make_instances((64, 64), [], [])}] * 2
    losses = train_step(model, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"].item() == 0.0
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_mismatched_strides_name_the_key():
    with pytest.raises(ValueError, match="FPN_STRIDES"):
        build_model(load_config(opts=["MODEL.FCOS.FPN_STRIDES", "[8, 16, 64]"]))


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

"""Test-time augmentation for FCOS: the one-scale case is the plain model, flips and scales
map back exactly, empty results merge, and batches hold one image size."""

import torch
from conftest import QUICK_CONFIG, load_config
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch import nn

from fcos_d2.modeling.successors import SuccessorOptions
from fcos_d2.modeling.tta import FCOSWithTTA

AUG = ["TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "100"]


def test_one_scale_without_flip_is_the_plain_model():
    cfg = load_config(
        QUICK_CONFIG, [*AUG, "TEST.AUG.FLIP", "False", "MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]
    )
    model = build_model(cfg).eval()
    torch.manual_seed(1)
    image = (torch.rand(3, 64, 80) * 255).to(torch.uint8)
    with torch.no_grad():
        plain = model([{"image": image, "height": 64, "width": 80}])[0]["instances"]
        augmented = FCOSWithTTA(cfg, model)([{"image": image, "height": 64, "width": 80}])[0][
            "instances"
        ]
    assert len(plain) > 10
    assert torch.equal(augmented.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(augmented.scores, plain.scores)
    assert torch.equal(augmented.pred_classes, plain.pred_classes)


class FixedBoxModel(nn.Module):
    """Detects one box at (10, 20, 30, 40) of whatever image it is given (or nothing)."""

    nms_thresh, detections_per_image = 0.6, 100
    successors = SuccessorOptions()  # hard NMS

    def __init__(self, empty=False):
        super().__init__()
        self.empty = empty
        self.sizes = []
        self.batches = []  # the image sizes of each forward call

    def forward(self, inputs):
        self.batches.append([tuple(x["image"].shape[-2:]) for x in inputs])
        results = []
        for x in inputs:
            size = tuple(x["image"].shape[-2:])
            self.sizes.append(size)
            instances = Instances(size)
            boxes = torch.zeros(0, 4) if self.empty else torch.tensor([[10.0, 20.0, 30.0, 40.0]])
            instances.pred_boxes = Boxes(boxes)
            instances.scores = torch.full((len(boxes),), 0.9)
            instances.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
            results.append({"instances": instances})
        return results


def test_a_flipped_image_maps_back_exactly():
    cfg = load_config(QUICK_CONFIG, [*AUG, "TEST.AUG.FLIP", "True"])
    model = FixedBoxModel()
    image = torch.zeros(3, 64, 80, dtype=torch.uint8)
    result = FCOSWithTTA(cfg, model)([{"image": image, "height": 64, "width": 80}])[0]["instances"]
    assert model.sizes == [(64, 80), (64, 80)]  # as is, and flipped
    # The flipped image's box at x 10..30 is at x 80-30..80-10 of the original.
    assert sorted(result.pred_boxes.tensor.tolist()) == [
        [10.0, 20.0, 30.0, 40.0],
        [50.0, 20.0, 70.0, 40.0],
    ]


def test_scales_map_back_to_the_original_pixels():
    cfg = load_config(
        QUICK_CONFIG,
        ["TEST.AUG.MIN_SIZES", "(128,)", "TEST.AUG.MAX_SIZE", "1000", "TEST.AUG.FLIP", "False"],
    )
    model = FixedBoxModel()
    result = FCOSWithTTA(cfg, model)(
        [{"image": torch.zeros(3, 64, 80, dtype=torch.uint8), "height": 64, "width": 80}]
    )[0]["instances"]
    assert model.sizes == [(128, 160)]
    assert result.pred_boxes.tensor.tolist() == [[5.0, 10.0, 15.0, 20.0]]  # halved back


def test_empty_results_merge_cleanly():
    cfg = load_config(QUICK_CONFIG, [*AUG, "TEST.AUG.FLIP", "True"])
    result = FCOSWithTTA(cfg, FixedBoxModel(empty=True))(
        [{"image": torch.zeros(3, 64, 80, dtype=torch.uint8), "height": 48, "width": 60}]
    )[0]["instances"]
    assert len(result) == 0 and result.image_size == (48, 60)
    assert result.pred_boxes.tensor.shape == (0, 4)


def test_each_forward_holds_images_of_one_size():
    """Two scales with flips: the 64-pixel pair and the 128-pixel pair go through the model
    as separate batches, so no image is padded to another's size (a GroupNorm head's
    statistics would see the padding)."""
    cfg = load_config(
        QUICK_CONFIG,
        ["TEST.AUG.MIN_SIZES", "(64, 128)", "TEST.AUG.MAX_SIZE", "1000", "TEST.AUG.FLIP", "True"],
    )
    model = FixedBoxModel()
    FCOSWithTTA(cfg, model, batch_size=3)(
        [{"image": torch.zeros(3, 64, 80, dtype=torch.uint8), "height": 64, "width": 80}]
    )
    assert sorted(model.batches) == [[(64, 80), (64, 80)], [(128, 160), (128, 160)]]

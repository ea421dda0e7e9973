"""torchvision's fcos_resnet50_fpn, converted, computes the same detections in fcos_d2.

A torchvision FCOS with random weights (calibrated, then perturbed BN statistics and
affines; a random head whose classifier bias lets some detections through the 0.2
threshold) is converted with ``tools/convert_torchvision.py``, loaded by
``DetectionCheckpointer`` into the model of ``configs/FCOS_R_50_torchvision.yaml``, and
both run on the same two images (one landscape, one portrait whose width is not a
multiple of 32, so the batch is padded).

Naming: N images, R locations over all levels, K classes, D detections of one image."""

from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from conftest import CONFIGS, load_config
from convert_torchvision import convert_file  # tools/, on the path from conftest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances
from parity_helpers import (
    BOX_TOL,
    SCORE_TOL,
    assert_same_detections,
    detection_differences,
    make_images,
)
from torch import Tensor, nn
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights, fcos_resnet50_fpn
from torchvision.models.detection.image_list import ImageList as TorchvisionImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from fcos_d2.conversion import convert_torchvision_fcos

pytestmark = pytest.mark.slow  # end to end: run by `make test`, not by `-m "not slow"`

CONFIG = CONFIGS / "FCOS_R_50_torchvision.yaml"


NUM_CLASSES = 5


# (height, width): torchvision keeps an image unresized when its long side is max_size
# and min_size >= max_size; both models pad the batch to 320 x 320 (multiple of 32).
IMAGE_SIZES = [(224, 320), (320, 200)]


MAX_SIZE = 320


HEAD_TOL = 1e-4


FEATURE_RTOL = 1e-4  # of the largest activation of a level


def make_torchvision_fcos(images: List[Tensor]) -> nn.Module:
    """A torchvision FCOS whose frozen statistics and head are random but sensible."""
    torch.manual_seed(0)
    model = fcos_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES,
        min_size=MAX_SIZE,
        max_size=MAX_SIZE,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _calibrate_batch_norms(model, images)
        _perturb_batch_norms(model, g)
        _randomise_head(model.head, g)
    return model.eval()


def _calibrate_batch_norms(model: nn.Module, images: List[Tensor]) -> None:
    """Running statistics from the images themselves, so activations keep a sane scale."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    batch = model.transform([im / 255 for im in images])[0]
    model.backbone.body(batch.tensors)
    model.eval()


def _perturb_batch_norms(model: nn.Module, g: torch.Generator) -> None:
    """Random affine and statistics: each of the four BN tensors matters."""
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            c = norm.num_features
            norm.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=g))
            norm.bias.add_(0.1 * torch.randn(c, generator=g))
            norm.running_mean.add_(0.1 * norm.running_var.sqrt() * torch.randn(c, generator=g))
            norm.running_var.mul_(torch.empty(c).uniform_(0.7, 1.4, generator=g))


def _randomise_head(head: nn.Module, g: torch.Generator) -> None:
    """Random towers and predictors; biases so that some scores pass 0.2 and boxes have
    a size of a few strides."""
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.normal_(0.0, 0.03, generator=g)
            module.bias.normal_(0.0, 0.1, generator=g)
        elif isinstance(module, nn.GroupNorm):
            module.weight.uniform_(0.5, 1.5, generator=g)
            module.bias.normal_(0.0, 0.1, generator=g)
    head.classification_head.cls_logits.bias.fill_(-4.0)
    head.regression_head.bbox_reg.bias.fill_(1.5)


def build_ours(weights: Path, opts: Tuple[str, ...] = ()) -> nn.Module:
    """The fcos_d2 model of the torchvision config, loaded by DetectionCheckpointer."""
    cfg = load_config(CONFIG, ["MODEL.FCOS.NUM_CLASSES", str(NUM_CLASSES), *opts])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    return model.eval()


@pytest.fixture(scope="module")
def images() -> List[Tensor]:
    return make_images(IMAGE_SIZES)


@pytest.fixture(scope="module")
def torchvision_model(images) -> nn.Module:
    return make_torchvision_fcos(images)


@pytest.fixture(scope="module")
def converted_file(torchvision_model, tmp_path_factory) -> Path:
    """The torchvision weights, saved as a training checkpoint would, then converted."""
    folder = tmp_path_factory.mktemp("weights")
    source = folder / "torchvision_fcos.pth"
    torch.save({"model": torchvision_model.state_dict(), "epoch": 1}, source)
    target = folder / "fcos_d2.pth"
    assert convert_file(str(source), str(target)) == NUM_CLASSES
    return target


@pytest.fixture(scope="module")
def our_model(converted_file) -> nn.Module:
    return build_ours(converted_file)


@pytest.fixture(scope="module")
def torchvision_detections(torchvision_model, images) -> List[Dict[str, Tensor]]:
    return run_torchvision(torchvision_model, images)


@pytest.fixture(scope="module")
def our_detections(our_model, images) -> List[Instances]:
    return run_ours(our_model, images)


@pytest.fixture(scope="module")
def torchvision_features(torchvision_model, images) -> Tuple[Tensor, List[Tensor]]:
    """torchvision's padded input batch (N, 3, H, W) and its P3..P7 (N, 256, H_l, W_l)."""
    with torch.no_grad():
        batch = torchvision_model.transform([im / 255 for im in images])[0].tensors
        return batch, list(torchvision_model.backbone(batch).values())


def run_torchvision(model: nn.Module, images: List[Tensor]) -> List[Dict[str, Tensor]]:
    with torch.no_grad():
        return model([im / 255 for im in images])


def run_ours(model: nn.Module, images: List[Tensor]) -> List[Instances]:
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    with torch.no_grad():
        return [out["instances"] for out in model(inputs)]


def nonempty(detections: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """torchvision's detections without zero-area boxes, which Detectron2's
    ``detector_postprocess`` drops (boxes of locations in the padding, clipped away)."""
    boxes = detections["boxes"]  # (D, 4)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {k: v[keep] for k, v in detections.items()}


def flatten_levels(per_level: List[Tensor]) -> Tensor:
    """Per-level (N, C, H, W) maps to torchvision's layout (N, R, C), levels concatenated."""
    flat = [x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]) for x in per_level]
    return torch.cat(flat, dim=1)


def test_both_models_see_the_same_tensor(torchvision_model, our_model, images):
    with torch.no_grad():
        theirs = torchvision_model.transform([im / 255 for im in images])[0]
        ours = our_model.preprocess_image([{"image": im} for im in images])
    assert theirs.image_sizes == ours.image_sizes == IMAGE_SIZES  # not resized
    assert theirs.tensors.shape == ours.tensor.shape == (2, 3, MAX_SIZE, MAX_SIZE)
    torch.testing.assert_close(ours.tensor, theirs.tensors, rtol=0, atol=1e-5)


def test_checkpoint_fills_every_parameter(our_model, converted_file, torchvision_model):
    saved = torch.load(converted_file, weights_only=True)
    assert saved["__author__"] == "torchvision" and "matching_heuristics" not in saved
    state = our_model.state_dict()
    assert sorted(saved["model"]) == sorted(state)
    for name, value in state.items():
        assert torch.equal(value, saved["model"][name]), name
    # What a wrong mapping would break: BN statistics and the classifier's prior.
    body = torchvision_model.backbone.body
    torch.testing.assert_close(
        state["backbone.bottom_up.res4.5.conv3.norm.running_var"], body.layer3[5].bn3.running_var
    )
    torch.testing.assert_close(state["head.cls_logits.bias"], torch.full((NUM_CLASSES,), -4.0))


def test_backbone_features_match(our_model, torchvision_features):
    batch, theirs = torchvision_features
    with torch.no_grad():
        ours = our_model.backbone(batch)
    assert list(ours) == ["p3", "p4", "p5", "p6", "p7"]
    for name, mine, ref in zip(ours, ours.values(), theirs):
        # Relative to the level's largest activation (a few hundred here): float
        # summation order (e.g. folded BatchNorm) differs, a wrong weight changes O(1).
        scale = ref.abs().max().item()
        torch.testing.assert_close(mine, ref, rtol=0, atol=FEATURE_RTOL * scale, msg=name)


def test_raw_head_outputs_match_on_the_same_features(
    torchvision_model, our_model, torchvision_features
):
    _, features = torchvision_features
    with torch.no_grad():
        theirs = torchvision_model.head(features)  # (N, R, K), (N, R, 4), (N, R, 1)
        logits, box_dists, centerness = our_model.head(features)
    for name, mine, ref in [
        ("cls_logits", flatten_levels(logits), theirs["cls_logits"]),
        ("bbox_regression", flatten_levels(box_dists), theirs["bbox_regression"]),
        ("bbox_ctrness", flatten_levels(centerness), theirs["bbox_ctrness"]),
    ]:
        assert mine.shape == ref.shape, name
        torch.testing.assert_close(mine, ref, rtol=0, atol=HEAD_TOL, msg=name)


def test_same_detections(torchvision_detections, our_detections):
    for mine, size in zip(our_detections, IMAGE_SIZES):
        assert mine.image_size == size
        assert len(mine) >= 5, "too few detections for a meaningful comparison"
        assert mine.pred_boxes.nonempty().all()
    assert_same_detections([nonempty(d) for d in torchvision_detections], our_detections)


def test_inference_matches_on_identical_head_outputs(torchvision_model, our_model):
    """Decoding, threshold, top-k, clipping and NMS of both on the same random head
    outputs: a (320, 200) image in a (320, 320) batch, enough candidates to hit the top-k
    and the 100-detection cap.

    The one difference of outputs: a location in the padding right of the image gives a
    box that clipping squeezes to zero width at x = 200. torchvision returns it, in one
    of its 100 places; fcos_d2 drops it before NMS and the cap, so its 100 are the 99 real
    ones torchvision kept and the next best.
    """
    image_size, padded = (320, 200), (320, 320)
    sizes = [(padded[0] // s, padded[1] // s) for s in (8, 16, 32, 64)] + [(3, 3)]
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(1, NUM_CLASSES, h, w, generator=g) - 1.0 for h, w in sizes]
    box_dists = [4 * torch.rand(1, 4, h, w, generator=g) for h, w in sizes]
    centerness = [torch.randn(1, 1, h, w, generator=g) for h, w in sizes]
    for level, stride in zip(logits, (8, 16, 32, 64, 128)):
        level[..., stride * torch.arange(level.shape[3]) >= image_size[1]] = -20.0  # padding
    # But one confident P3 location at x = 35 * 8 = 280, with a box from 272 to 288.
    logits[0][0, 2, 5, 35], centerness[0][0, 0, 5, 35] = 8.0, 8.0
    box_dists[0][0, :, 5, 35] = 1.0

    theirs = _torchvision_postprocess(torchvision_model, logits, box_dists, centerness, image_size)
    ours = _our_postprocess(our_model, logits, box_dists, centerness, image_size)

    assert len(theirs["scores"]) == 100  # the cap
    empty = theirs["boxes"][:, 2] <= theirs["boxes"][:, 0]
    assert empty.sum() == 1 and theirs["boxes"][empty][0, [0, 2]].tolist() == [200.0, 200.0]
    assert len(ours) == 100 and ours.pred_boxes.nonempty().all()
    score, box = detection_differences(nonempty(theirs), ours[:99])  # 99 each
    assert score <= SCORE_TOL and box <= BOX_TOL
    assert float(ours.scores[99]) <= float(theirs["scores"].min())


def _torchvision_postprocess(model, logits, box_dists, centerness, image_size):
    """torchvision's FCOS.postprocess_detections on per-level (1, C, H, W) outputs."""
    padded = (logits[0].shape[2] * 8, logits[0].shape[3] * 8)
    images = TorchvisionImageList(torch.zeros(1, 3, *padded), [image_size])
    anchors = model.anchor_generator(images, logits)[0]  # (R, 4)
    per_level = [x.shape[2] * x.shape[3] for x in logits]
    outputs = {
        "cls_logits": [flatten_levels([x]) for x in logits],
        "bbox_regression": [flatten_levels([x]) for x in box_dists],
        "bbox_ctrness": [flatten_levels([x]) for x in centerness],
    }
    return model.postprocess_detections(outputs, [anchors.split(per_level)], [image_size])[0]


def _our_postprocess(model, logits, box_dists, centerness, image_size):
    """fcos_d2's forward_inference, then detector_postprocess as DenseDetector.forward."""
    padded = (logits[0].shape[2] * 8, logits[0].shape[3] * 8)
    images = ImageList(torch.zeros(1, 3, *padded), [image_size])
    (result,) = model.forward_inference(images, logits, (logits, box_dists, centerness))
    return detector_postprocess(result, *image_size)


def test_comparison_fails_with_cell_centred_locations(
    converted_file, images, torchvision_detections
):
    """A control: fcos_d2's default LOCATION_OFFSET 0.5 moves boxes by half a stride,
    which the comparison must notice."""
    shifted = build_ours(converted_file, ("MODEL.FCOS.LOCATION_OFFSET", "0.5"))
    with pytest.raises(AssertionError, match="detections|boxes differ"):
        assert_same_detections([nonempty(torchvision_detections[0])], run_ours(shifted, images[:1]))


def test_config_has_as_many_parameters_as_torchvision_coco_weights():
    """The released COCO_V1 weights (FrozenBN, 91 labels) fit this config's model."""
    model = build_model(load_config(CONFIG))  # NUM_CLASSES 91; FrozenBN has no parameters
    count = sum(p.numel() for p in model.parameters())
    assert count == FCOS_ResNet50_FPN_Weights.COCO_V1.meta["num_params"]


def test_conversion_rejects_incomplete_and_foreign_state_dicts(torchvision_model, our_model):
    state = dict(torchvision_model.state_dict())
    model_state = our_model.state_dict()
    del state["head.regression_head.bbox_ctrness.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): head\.centerness\.bias"):
        convert_torchvision_fcos(state, model_state)
    state["anchor_generator.cell_anchors.0"] = torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"anchor_generator\.cell_anchors\.0"):
        convert_torchvision_fcos(state, model_state)


def test_frozen_batch_norm_checkpoint_converts_too(torchvision_model, our_model):
    """Pretrained torchvision FCOS uses FrozenBatchNorm2d: no num_batches_tracked."""
    state = {
        k: v
        for k, v in torchvision_model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert set(FrozenBatchNorm2d(1).state_dict()) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
    }
    converted = convert_torchvision_fcos(state, our_model.state_dict())
    assert len(converted) == len(state) == len(our_model.state_dict())

"""The YAML configs under configs/: every one loads and builds, and every model-zoo config
feeds its pretrained weights the input they were trained on."""

import pytest
from conftest import CONFIGS, load_config
from detectron2.modeling import build_model

from fcos_d2 import FCOS

ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads_and_builds(path):
    cfg = load_config(path)
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    if isinstance(model, FCOS):
        assert model.head_in_features == list(cfg.MODEL.FCOS.IN_FEATURES)
        assert model.strides == list(cfg.MODEL.FCOS.FPN_STRIDES)


MSRA_MEAN_BGR = [103.53, 116.28, 123.675]  # Detectron2's default, the Caffe2 convention


# The convention of each family of ImageNet weights: (FORMAT, PIXEL_MEAN, PIXEL_STD, STRIDE_IN_1X1).
CONVENTIONS = {
    # MSRA's original ResNets (Caffe2): BGR, mean subtracted, no std, stride in the 1x1.
    "ImageNetPretrained/MSRA/": ("BGR", MSRA_MEAN_BGR, [1.0, 1.0, 1.0], True),
    # FAIR's ResNeXt (Caffe2): BGR, divided by the ImageNet std in BGR order, stride in the 3x3.
    "ImageNetPretrained/FAIR/": ("BGR", MSRA_MEAN_BGR, [57.375, 57.120, 58.395], False),
    # torchvision's ResNets: RGB, ImageNet mean and std in RGB order, stride in the 3x3.
    "torchvision": ("RGB", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], False),
}


ZOO_CONFIGS = sorted(p for p in CONFIGS.glob("FCOS_*.yaml"))


def convention_of(config_path, weights: str):
    for key, convention in CONVENTIONS.items():
        if key in weights or (key == "torchvision" and "torchvision" in config_path.name):
            return convention
    return None


def test_every_zoo_config_names_weights_of_a_known_convention():
    assert len(ZOO_CONFIGS) >= 6
    for path in ZOO_CONFIGS:
        cfg = load_config(path)
        assert convention_of(path, cfg.MODEL.WEIGHTS) is not None, (
            f"{path.name}: {cfg.MODEL.WEIGHTS!r}"
        )


@pytest.mark.parametrize("path", ZOO_CONFIGS, ids=lambda p: p.name)
def test_zoo_config_matches_its_weights_convention(path):
    cfg = load_config(path)
    fmt, mean, std, stride_in_1x1 = convention_of(path, cfg.MODEL.WEIGHTS)
    assert cfg.INPUT.FORMAT == fmt
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx(mean)
    assert cfg.MODEL.PIXEL_STD == pytest.approx(std)
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 == stride_in_1x1

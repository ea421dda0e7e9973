"""The FCOS head (fcos_d2.modeling.head): the DCNv2 last conv of the class and box
towers, computed by hand, and one BatchNorm per pyramid level."""

import pytest
import torch
from conftest import load_config
from detectron2.modeling import build_model

from fcos_d2.modeling.head import ModulatedDeformConv3x3, PerLevelNorm


def test_deformable_head_uses_dcnv2_in_the_class_and_box_towers_only():
    model = build_model(
        load_config(opts=["MODEL.FCOS.USE_DEFORMABLE", "True", "MODEL.FCOS.NUM_SHARE_CONVS", "1"])
    )
    head = model.head
    assert isinstance(head.cls_tower[-3], ModulatedDeformConv3x3)
    assert isinstance(head.box_tower[-3], ModulatedDeformConv3x3)
    assert not any(isinstance(m, ModulatedDeformConv3x3) for m in head.share_tower.modules())
    # AdelaiDet's DFConv2d names and shapes: 27 = 18 offsets + 9 mask logits.
    keys = {k: tuple(v.shape) for k, v in head.cls_tower[-3].state_dict().items()}
    width = head.cls_logits.in_channels
    assert keys == {
        "offset.weight": (27, width, 3, 3),
        "offset.bias": (27,),
        "conv.weight": (width, width, 3, 3),
        "conv.bias": (width,),
    }


def test_modulated_deformable_conv_by_hand():
    """Zero offsets and mask logits: the taps stay put and each is weighed by sigmoid(0) = 1/2,
    so the result is half a plain conv (plus its bias); large mask logits give the plain conv."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv3x3(4, 5)
    plain = torch.nn.Conv2d(4, 5, 3, padding=1)
    with torch.no_grad():
        plain.weight.copy_(layer.conv.weight)
        plain.bias.copy_(layer.conv.bias)
        layer.offset.weight.zero_()
        layer.offset.bias.zero_()
        x = torch.randn(2, 4, 7, 9)
        bias = layer.conv.bias[None, :, None, None]
        torch.testing.assert_close(layer(x), 0.5 * (plain(x) - bias) + bias, atol=1e-5, rtol=1e-5)
        layer.offset.bias[18:] = 30.0  # mask sigmoid(30) = 1
        torch.testing.assert_close(layer(x), plain(x), atol=1e-5, rtol=1e-5)
        layer.offset.bias[:18] = torch.tensor([0.0, 1.0] * 9)  # every tap one pixel right
        shifted = torch.nn.functional.pad(x, (0, 1))[..., 1:]  # x(h, w + 1), zero past the edge
        # (column 0 differs: there the plain conv's left tap reads padding, not x(h, 0))
        torch.testing.assert_close(layer(x)[..., 1:], plain(shifted)[..., 1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["BN", "SyncBN"])
def test_bn_heads_keep_one_norm_per_level(norm):
    model = build_model(load_config(opts=["MODEL.FCOS.NORM", norm]))
    per_level = [m for m in model.head.cls_tower if isinstance(m, PerLevelNorm)]
    assert len(per_level) == 1  # the quick config's one-conv tower
    assert all(len(m) == len(model.strides) == 3 for m in per_level)
    head = model.head.train()
    width = head.cls_logits.in_channels
    features = [torch.randn(2, width, 8, 8) * (level + 1) + 3 * level for level in range(3)]
    head(features)
    means = [bn.running_mean for bn in per_level[0]]
    assert not torch.allclose(means[0], means[1]) and not torch.allclose(means[1], means[2])
    # GroupNorm heads keep one shared layer.
    gn = build_model(load_config()).head
    assert not any(isinstance(m, PerLevelNorm) for m in gn.modules())

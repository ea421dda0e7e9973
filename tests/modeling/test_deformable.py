"""Deformable convs of the backbone on torchvision's kernel: the function, and the ResNet."""

import torch
import torch.nn.functional as F
from conftest import QUICK_CONFIG, load_config
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import resnet

from fcos_d2.modeling.deformable import TorchvisionDeformConv, torchvision_deformable_convs


def test_zero_offsets_and_unit_mask_give_the_plain_conv():
    conv = TorchvisionDeformConv(4, 6, 3, padding=1, bias=True)
    x = torch.randn(2, 4, 7, 9)
    offset = torch.zeros(2, 18, 7, 9)
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x, offset), expected)  # DCN
    torch.testing.assert_close(conv(x, offset, torch.ones(2, 9, 7, 9)), expected)  # DCNv2


def test_offsets_of_one_pixel_shift_the_input_and_the_mask_scales_each_tap():
    conv = TorchvisionDeformConv(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 8, 8)
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 1::2] = 1.0  # every (dy, dx) pair: dx = +1 pixel
    shifted = F.pad(x[..., 1:], (0, 1))  # x(y, x + 1), zero beyond the right edge
    # Column 0 differs: its left taps read x(y, 0) there, the zero padding here.
    torch.testing.assert_close(
        conv(x, offset)[..., 1:],
        F.conv2d(shifted, conv.weight, padding=1)[..., 1:],
        atol=1e-5,
        rtol=0,
    )
    half = conv(x, torch.zeros(1, 18, 8, 8), torch.full((1, 9, 8, 8), 0.5))
    torch.testing.assert_close(half, 0.5 * F.conv2d(x, conv.weight, padding=1))


def test_resnet_with_dcnv2_stages_builds_and_trains_on_the_cpu():
    originals = resnet.DeformConv, resnet.ModulatedDeformConv
    cfg = load_config(
        QUICK_CONFIG,
        [
            "MODEL.RESNETS.DEPTH", "50",  # Detectron2 has no DCN for R-18/34
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "256",
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, True, True]",
            "MODEL.RESNETS.DEFORM_MODULATED", "True",
        ],
    )  # fmt: skip
    backbone = build_backbone(cfg)
    deformable = [m for m in backbone.modules() if isinstance(m, TorchvisionDeformConv)]
    assert len(deformable) == 6 + 3  # the blocks of res4 and res5
    assert (resnet.DeformConv, resnet.ModulatedDeformConv) == originals  # restored
    features = backbone(torch.randn(1, 3, 64, 64))
    sum(f.sum() for f in features.values()).backward()
    assert deformable[0].weight.grad is not None and deformable[0].weight.grad.abs().sum() > 0


def test_the_context_restores_detectron2_classes_after_an_error():
    originals = resnet.DeformConv, resnet.ModulatedDeformConv
    try:
        with torchvision_deformable_convs():
            assert resnet.ModulatedDeformConv is TorchvisionDeformConv
            raise RuntimeError("build failed")
    except RuntimeError:
        pass
    assert (resnet.DeformConv, resnet.ModulatedDeformConv) == originals

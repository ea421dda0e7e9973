"""Converting official FCOS checkpoints: names, the model a checkpoint is, named errors.

Fast, hand-made state dicts; ``test_official_parity.py`` checks whole official models.
"""

from typing import Dict

import convert_official  # tools/, on the path from conftest
import pytest
import torch
from torch import Tensor

from fcos_d2.conversion import convert_official_fcos, official_model_name


def backbone_keys(blocks_in_layer3: int, channels: int, per_group: int, dcn: bool):
    """The few official keys :func:`official_model_name` reads, with their shapes."""
    state: Dict[str, Tensor] = {
        f"backbone.body.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(blocks_in_layer3)
    }
    conv2 = "conv2.conv.weight" if dcn else "conv2.weight"
    state[f"backbone.body.layer1.0.{conv2}"] = torch.zeros(channels, per_group, 3, 3)
    if dcn:
        state["backbone.body.layer2.0.conv2.offset.weight"] = torch.zeros(27, 128, 3, 3)
    return state


@pytest.mark.parametrize(
    "shape, name",
    [
        ((6, 64, 64, False), "FCOS_imprv_R_50_FPN_1x"),
        ((6, 64, 64, True), "FCOS_imprv_dcnv2_R_50_FPN_1x"),
        ((23, 64, 64, False), "FCOS_imprv_R_101_FPN_2x"),
        ((23, 256, 8, True), "FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x"),
        ((23, 256, 4, False), "FCOS_imprv_X_101_64x4d_FPN_2x"),
    ],
)
def test_model_name_is_read_from_the_shapes(shape, name):
    assert official_model_name(backbone_keys(*shape)) == name


def test_unpublished_backbone_is_refused_with_its_shape():
    with pytest.raises(ValueError, match="36 blocks in layer3 and 64 channels"):
        official_model_name(backbone_keys(36, 64, 64, False))  # an R-152
    with pytest.raises(ValueError, match="not an official FCOS checkpoint"):
        official_model_name({"head.cls_logits.weight": torch.zeros(1)})


def test_keys_are_renamed_and_scales_become_scalars():
    official = {
        "backbone.body.stem.bn1.running_var": torch.full((4,), 1.0),
        "backbone.body.layer2.0.conv2.offset.bias": torch.zeros(27),
        "backbone.body.layer4.2.downsample.1.weight": torch.ones(3),
        "backbone.fpn.fpn_inner2.weight": torch.ones(2),
        "backbone.fpn.fpn_layer4.bias": torch.ones(2),
        "rpn.head.bbox_tower.9.conv.weight": torch.ones(2),
        "rpn.head.cls_tower.10.bias": torch.ones(2),
        "rpn.head.scales.3.scale": torch.tensor([1.5]),
    }
    converted = convert_official_fcos(official)
    assert sorted(converted) == [
        "backbone.bottom_up.res3.0.conv2_offset.bias",
        "backbone.bottom_up.res5.2.shortcut.norm.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.fpn_lateral3.weight",
        "backbone.fpn_output5.bias",
        "head.box_tower.9.conv.weight",
        "head.cls_tower.10.bias",
        "head.scales.3.scale",
    ]
    assert converted["head.scales.3.scale"].shape == () and converted["head.scales.3.scale"] == 1.5
    # Detectron2's FrozenBatchNorm2d adds eps = 1e-5 to the variance; maskrcnn-benchmark's not.
    torch.testing.assert_close(
        converted["backbone.bottom_up.stem.conv1.norm.running_var"], torch.full((4,), 1 - 1e-5)
    )


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): roi_heads.box.feature"):
        convert_official_fcos(
            {"rpn.head.cls_logits.bias": torch.zeros(2), "roi_heads.box.feature": torch.zeros(1)}
        )


def test_missing_and_misshapen_keys_are_named_against_the_model():
    model_state = {"head.cls_logits.bias": torch.zeros(80), "head.box_pred.bias": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"missing keys \(1\): head.box_pred.bias"):
        convert_official_fcos({"rpn.head.cls_logits.bias": torch.zeros(80)}, model_state)
    with pytest.raises(ValueError, match=r"head.box_pred.bias \(from rpn.head.bbox_pred.bias\)"):
        convert_official_fcos(
            {
                "rpn.head.cls_logits.bias": torch.zeros(80),
                "rpn.head.bbox_pred.bias": torch.zeros(5),
            },
            model_state,
        )


def test_variance_that_cannot_carry_over_is_named():
    with pytest.raises(ValueError, match="backbone.body.layer1.0.bn2.running_var"):
        convert_official_fcos({"backbone.body.layer1.0.bn2.running_var": torch.zeros(3)})


def test_tool_names_bad_input_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "out.pth"
    assert convert_official.main([str(tmp_path / "missing.pth"), str(output)]) == 1
    assert "missing.pth: no such file" in capsys.readouterr().err
    torchvision_like = tmp_path / "tv.pth"
    torch.save({"head.classification_head.cls_logits.bias": torch.zeros(91)}, torchvision_like)
    assert convert_official.main([str(torchvision_like), str(output)]) == 1
    assert "no rpn.head.cls_logits.bias; not an official FCOS" in capsys.readouterr().err
    incomplete = tmp_path / "incomplete.pth"
    state = backbone_keys(6, 64, 64, False)
    state["rpn.head.cls_logits.bias"] = torch.zeros(80)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, incomplete)
    assert convert_official.main([str(incomplete), str(output)]) == 1
    err = capsys.readouterr().err
    assert "FCOS_imprv_R_50_FPN_1x.yaml" in err and "missing keys" in err
    assert "backbone.bottom_up.res2.0.conv1.weight" in err
    assert not output.exists()

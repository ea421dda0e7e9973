"""Checkpoint conversion (fcos_d2.conversion, tools/convert_torchvision.py): AdelaiDet
FCOS checkpoints renamed to fcos_d2's parameters, and the torchvision tool's inputs.

The synthetic AdelaiDet checkpoint is written with AdelaiDet's own module names
(OneStageDetector: Detectron2's ResNet + FPN under ``backbone``, ``FCOSHead`` under
``proposal_generator.fcos_head``) and random values, independently of the converter."""

from typing import Dict

import convert_torchvision  # tools/, on the path from conftest
import pytest
import torch
from conftest import CONFIGS, load_config
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from torch import Tensor
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights, fcos_resnet50_fpn

from fcos_d2.conversion import check_keys, convert_adelaidet_fcos, torchvision_coco_class_indices

CONFIG = CONFIGS / "FCOS_R_50_1x.yaml"  # the AdelaiDet R_50_1x setup, with Scale


WIDTH, NUM_CLASSES, NUM_LEVELS = 256, 80, 5


HEAD = "proposal_generator.fcos_head"


@pytest.fixture(scope="module")
def model_state() -> Dict[str, Tensor]:
    return build_model(load_config(CONFIG)).state_dict()


def adelaidet_head(
    g: torch.Generator, deformable: bool = False, bn: bool = False
) -> Dict[str, Tensor]:
    """AdelaiDet's FCOSHead: towers of 4 x Sequential(conv, norm, ReLU).

    Written from AdelaiDet's source (adet/modeling/fcos/fcos.py, adet/layers/deform_conv.py):
    GN towers by default; ``deformable``: the last conv of cls_tower and bbox_tower is a
    DFConv2d (``offset`` conv of 27 channels, modulated ``conv`` with a bias, as the head
    passes bias=True); ``bn``: each norm is a ModuleListDial of one BatchNorm2d per level.
    """
    state = {}
    for tower in ("cls_tower", "bbox_tower"):
        for i in range(4):
            conv, norm = f"{HEAD}.{tower}.{3 * i}", f"{HEAD}.{tower}.{3 * i + 1}"
            if deformable and i == 3:
                state[f"{conv}.offset.weight"] = torch.randn(27, WIDTH, 3, 3, generator=g)
                state[f"{conv}.offset.bias"] = torch.randn(27, generator=g)
                conv = f"{conv}.conv"
            state[f"{conv}.weight"] = torch.randn(WIDTH, WIDTH, 3, 3, generator=g)
            state[f"{conv}.bias"] = torch.randn(WIDTH, generator=g)
            norms = [f"{norm}.{level}" for level in range(NUM_LEVELS)] if bn else [norm]
            for name in norms:
                state[f"{name}.weight"] = torch.randn(WIDTH, generator=g)
                state[f"{name}.bias"] = torch.randn(WIDTH, generator=g)
                if bn:
                    state[f"{name}.running_mean"] = torch.randn(WIDTH, generator=g)
                    state[f"{name}.running_var"] = torch.rand(WIDTH, generator=g) + 0.5
                    state[f"{name}.num_batches_tracked"] = torch.tensor(1000)
    for name, out in (("cls_logits", NUM_CLASSES), ("bbox_pred", 4), ("ctrness", 1)):
        state[f"{HEAD}.{name}.weight"] = torch.randn(out, WIDTH, 3, 3, generator=g)
        state[f"{HEAD}.{name}.bias"] = torch.randn(out, generator=g)
    for level in range(NUM_LEVELS):
        state[f"{HEAD}.scales.{level}.scale"] = torch.rand(1, generator=g) + 0.5  # (1,)
    return state


def adelaidet_checkpoint(model_state: Dict[str, Tensor], **head_options) -> Dict[str, Tensor]:
    """A random AdelaiDet FCOS_R_50_1x ``"model"`` dict. Its backbone has Detectron2's
    names, so they (and only they) are taken from the fcos_d2 model."""
    g = torch.Generator().manual_seed(0)
    state = {
        name: torch.rand(value.shape, generator=g) + 0.1
        for name, value in model_state.items()
        if name.startswith("backbone.")
    }
    state.update(adelaidet_head(g, **head_options))
    # Checkpoints of 2020 Detectron2 meta-archs also saved the input normalisation.
    state["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    state["pixel_std"] = torch.ones(3, 1, 1)
    return state


def test_converted_checkpoint_loads_strictly(model_state):
    source = adelaidet_checkpoint(model_state)
    converted = convert_adelaidet_fcos(source, model_state)
    model = build_model(load_config(CONFIG))
    model.load_state_dict(converted, strict=True)

    head = model.head
    torch.testing.assert_close(head.cls_logits.weight, source[f"{HEAD}.cls_logits.weight"])
    torch.testing.assert_close(head.box_pred.bias, source[f"{HEAD}.bbox_pred.bias"])
    torch.testing.assert_close(head.centerness.weight, source[f"{HEAD}.ctrness.weight"])
    torch.testing.assert_close(head.box_tower[4].weight, source[f"{HEAD}.bbox_tower.4.weight"])
    torch.testing.assert_close(head.cls_tower[9].bias, source[f"{HEAD}.cls_tower.9.bias"])
    for level in range(NUM_LEVELS):
        scale = head.scales[level].scale
        assert scale.shape == ()  # (1,) in AdelaiDet
        assert scale.item() == source[f"{HEAD}.scales.{level}.scale"].item()
    stem = model.backbone.bottom_up.stem.conv1.norm
    torch.testing.assert_close(
        stem.running_var, source["backbone.bottom_up.stem.conv1.norm.running_var"]
    )
    torch.testing.assert_close(
        model.backbone.top_block.p7.weight, source["backbone.top_block.p7.weight"]
    )


def test_every_model_parameter_comes_from_the_checkpoint(model_state):
    source = adelaidet_checkpoint(model_state)
    converted = convert_adelaidet_fcos(source)
    assert sorted(converted) == sorted(model_state)
    # Every source tensor lands somewhere, except the two normalisation buffers.
    used = {id(v) for v in converted.values()}
    unused = [k for k, v in source.items() if id(v) not in used]
    scales = [f"{HEAD}.scales.{i}.scale" for i in range(NUM_LEVELS)]  # reshaped copies
    assert sorted(unused) == sorted([*scales, "pixel_mean", "pixel_std"])


def test_unknown_key_is_named(model_state):
    source = adelaidet_checkpoint(model_state)
    source[f"{HEAD}.cls_tower_extra.0.weight"] = torch.zeros(1)
    source["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        convert_adelaidet_fcos(source, model_state)
    message = str(error.value)
    assert "unexpected keys (2)" in message
    assert f"{HEAD}.cls_tower_extra.0.weight" in message
    assert "roi_heads.box_predictor.cls_score.weight" in message


def test_missing_key_is_named(model_state):
    source = adelaidet_checkpoint(model_state)
    del source[f"{HEAD}.ctrness.bias"], source["backbone.fpn_output4.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(2\)") as error:
        convert_adelaidet_fcos(source, model_state)
    assert "head.centerness.bias" in str(error.value)
    assert "backbone.fpn_output4.weight" in str(error.value)


def test_key_the_model_lacks_is_named_with_its_source(model_state):
    """E.g. the checkpoint of a head with a shared tower, for a model without one."""
    source = adelaidet_checkpoint(model_state)
    source[f"{HEAD}.share_tower.0.weight"] = torch.zeros(WIDTH, WIDTH, 3, 3)
    with pytest.raises(ValueError) as error:
        convert_adelaidet_fcos(source, model_state)
    assert f"head.share_tower.0.weight (from {HEAD}.share_tower.0.weight)" in str(error.value)


def test_scales_need_use_scale(model_state):
    """AdelaiDet FCOS has a Scale per level; a model built with USE_SCALE False cannot take
    them, and the error says which keys."""
    no_scale = build_model(load_config(CONFIG, ["MODEL.FCOS.USE_SCALE", "False"])).state_dict()
    with pytest.raises(ValueError, match=r"head\.scales\.0\.scale"):
        convert_adelaidet_fcos(adelaidet_checkpoint(model_state), no_scale)


def test_per_level_batch_norm_head_does_not_fit_a_gn_model(model_state):
    """AdelaiDet's BN heads keep one BN per level (cls_tower.1.<level>.weight)."""
    source = adelaidet_checkpoint(model_state)
    for name in [k for k in source if k.startswith(f"{HEAD}.cls_tower.1.")]:
        value = source.pop(name)
        source[name.replace("cls_tower.1.", "cls_tower.1.0.")] = value
    with pytest.raises(ValueError, match=r"cls_tower\.1\.0\.weight"):
        convert_adelaidet_fcos(source, model_state)


def test_shape_mismatch_is_named(model_state):
    source = adelaidet_checkpoint(model_state)
    source[f"{HEAD}.cls_logits.weight"] = torch.zeros(81, WIDTH, 3, 3)
    source[f"{HEAD}.cls_logits.bias"] = torch.zeros(81)
    with pytest.raises(ValueError, match=r"shape mismatches \(2\)") as error:
        convert_adelaidet_fcos(source, model_state)
    assert "head.cls_logits.weight" in str(error.value) and "(81, 256, 3, 3)" in str(error.value)


def test_check_keys_accepts_exact_match_and_names_both_sides():
    model = {"a": torch.zeros(2), "b": torch.zeros(3)}
    check_keys({"a": torch.ones(2), "b": torch.ones(3)}, model)
    with pytest.raises(ValueError) as error:
        check_keys({"a": torch.ones(2), "c": torch.ones(1)}, model, origin={"c": "old.c"})
    message = str(error.value)
    assert "missing keys (1): b" in message
    assert "unexpected keys (1): c (from old.c)" in message


def test_deformable_head_checkpoint_loads_into_a_dcnv2_model():
    """AdelaiDet's DCN FCOS (USE_DEFORMABLE) and ours with USE_DEFORMABLE: the same modules."""
    model = build_model(load_config(CONFIG, ["MODEL.FCOS.USE_DEFORMABLE", "True"]))
    source = adelaidet_checkpoint(model.state_dict(), deformable=True)
    model.load_state_dict(convert_adelaidet_fcos(source, model.state_dict()), strict=True)
    for ours, theirs in (
        (model.head.cls_tower[9], "cls_tower.9"),
        (model.head.box_tower[9], "bbox_tower.9"),
    ):
        torch.testing.assert_close(ours.offset.weight, source[f"{HEAD}.{theirs}.offset.weight"])
        torch.testing.assert_close(ours.conv.weight, source[f"{HEAD}.{theirs}.conv.weight"])
        torch.testing.assert_close(ours.conv.bias, source[f"{HEAD}.{theirs}.conv.bias"])


def test_deformable_conv_saved_without_bias_gets_a_zero_bias():
    """The official FCOS builds its deformable conv without a bias: the checkpoint still
    loads strictly, with a zero bias (the same function); a plain conv's bias stays required."""
    model = build_model(load_config(CONFIG, ["MODEL.FCOS.USE_DEFORMABLE", "True"]))
    source = adelaidet_checkpoint(model.state_dict(), deformable=True)
    del source[f"{HEAD}.cls_tower.9.conv.bias"], source[f"{HEAD}.bbox_tower.9.conv.bias"]
    converted = convert_adelaidet_fcos(source, model.state_dict())
    model.load_state_dict(converted, strict=True)
    assert torch.count_nonzero(model.head.cls_tower[9].conv.bias) == 0
    assert torch.count_nonzero(model.head.box_tower[9].conv.bias) == 0
    torch.testing.assert_close(
        model.head.cls_tower[9].conv.weight, source[f"{HEAD}.cls_tower.9.conv.weight"]
    )
    del source[f"{HEAD}.cls_tower.6.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): head\.cls_tower\.6\.bias"):
        convert_adelaidet_fcos(source, model.state_dict())


def test_per_level_batch_norm_head_checkpoint_loads_into_a_bn_model():
    """AdelaiDet's BN heads (ModuleListDial: one BN per level) and ours with NORM BN."""
    model = build_model(load_config(CONFIG, ["MODEL.FCOS.NORM", "BN"]))
    source = adelaidet_checkpoint(model.state_dict(), bn=True)
    model.load_state_dict(convert_adelaidet_fcos(source, model.state_dict()), strict=True)
    for level in range(NUM_LEVELS):
        torch.testing.assert_close(
            model.head.box_tower[4][level].running_mean,
            source[f"{HEAD}.bbox_tower.4.{level}.running_mean"],
        )


def test_coco80_keeps_detectron2_coco_classes(tmp_path):
    """--coco80: torchvision's 91 labels (COCO ids) to Detectron2's 80 contiguous ids."""
    indices = torchvision_coco_class_indices()
    names = FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert [names[i] for i in indices] == MetadataCatalog.get("coco_2017_val").thing_classes

    torch.manual_seed(0)
    source = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    state = source.state_dict()
    torch.save(state, tmp_path / "in.pth")
    assert (
        convert_torchvision.main([str(tmp_path / "in.pth"), str(tmp_path / "out.pth"), "--coco80"])
        == 0
    )
    converted = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    weight = state["head.classification_head.cls_logits.weight"]  # (91, 256, 3, 3)
    assert torch.equal(converted["head.cls_logits.weight"], weight[indices])  # (80, 256, 3, 3)


def test_tool_names_missing_or_unreadable_input(tmp_path, capsys):
    assert convert_torchvision.main([str(tmp_path / "nope.pth"), str(tmp_path / "out.pth")]) == 1
    assert f"{tmp_path / 'nope.pth'}: no such file" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    assert convert_torchvision.main([str(garbage), str(tmp_path / "out.pth")]) == 1
    assert str(garbage) in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_tool_names_keys_that_do_not_fit(tmp_path, capsys):
    state = {
        "head.classification_head.cls_logits.bias": torch.zeros(3),
        "backbone.body.layer9.0.conv1.weight": torch.zeros(1),
    }
    torch.save(state, tmp_path / "bad.pth")
    assert convert_torchvision.main([str(tmp_path / "bad.pth"), str(tmp_path / "out.pth")]) == 1
    err = capsys.readouterr().err
    assert "bad.pth" in err and "backbone.body.layer9.0.conv1.weight" in err


def test_tool_reads_wrapped_and_data_parallel_state_dicts(tmp_path):
    weights = {"head.x": torch.ones(2)}
    torch.save({"state_dict": {"module.head.x": torch.ones(2)}, "epoch": 3}, tmp_path / "a.pth")
    torch.save({"model": weights}, tmp_path / "b.pth")
    for name in ("a.pth", "b.pth"):
        state = convert_torchvision.load_state_dict_file(str(tmp_path / name))
        assert list(state) == ["head.x"]

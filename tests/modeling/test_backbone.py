"""The FCOS backbone (fcos_d2.modeling.backbone): ResNet + FPN with P6/P7 from P5 or C5."""

import pytest
import torch
from conftest import load_config
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from fcos_d2.modeling.speedups import FrozenBNFoldedConv2d


def backbone_of(*opts):
    """The quick config's backbone (its pyramid is P3-P5), with P6/P7 unless ``opts`` say."""
    top_levels = ["MODEL.FCOS.TOP_LEVELS", "2", "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5']"]
    cfg = load_config(opts=[*top_levels, *opts])
    return build_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("in_feature, p6_in_channels", [("p5", 32), ("res5", 512)])
def test_p3_to_p7_with_p6_from_p5_or_c5(in_feature, p6_in_channels):
    backbone = backbone_of("MODEL.FCOS.TOP_LEVELS_IN_FEATURE", in_feature)
    shapes = backbone.output_shape()
    assert {name: s.stride for name, s in shapes.items()} == {
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
        "p7": 128,
    }
    assert all(s.channels == 32 for s in shapes.values())  # FPN.OUT_CHANNELS of the config
    # P6 is a stride-2 conv on P5 (FPN channels) or on C5 (R-18's 512 channels).
    assert backbone.top_block.p6.in_channels == p6_in_channels
    features = backbone(torch.rand(1, 3, 128, 128))
    assert features["p7"].shape == (1, 32, 1, 1) and features["p3"].shape == (1, 32, 16, 16)


def test_no_top_levels_gives_the_fpn_levels_alone():
    backbone = backbone_of("MODEL.FCOS.TOP_LEVELS", "0")
    assert "p6" not in backbone.output_shape() and "p5" in backbone.output_shape()


@pytest.mark.parametrize(
    "key, value", [("MODEL.FCOS.TOP_LEVELS", "1"), ("MODEL.FCOS.TOP_LEVELS_IN_FEATURE", "p4")]
)
def test_bad_top_level_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        backbone_of(key, value)


@pytest.mark.parametrize("fold", [False, True])
def test_frozen_batch_norms_are_folded_when_asked(fold):
    backbone = backbone_of("MODEL.FCOS.FOLD_FROZEN_BN", str(fold), "MODEL.RESNETS.NORM", "FrozenBN")
    folded = sum(isinstance(m, FrozenBNFoldedConv2d) for m in backbone.bottom_up.modules())
    assert (folded > 0) == fold


def test_p2_config_builds_p2_to_p7_and_trains_a_step():
    """configs/FCOS_R_50_P2_1x.yaml's pyramid (P2, stride 4, to P7) on the tiny R-18 model:
    six levels, finite losses, a location grid with P2's 16 x 16 cells of a 64-px image."""
    from conftest import CONFIGS, finite, make_instances, train_step
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from fcos_d2 import add_fcos_config

    p2 = get_cfg()
    add_fcos_config(p2)
    p2.merge_from_file(str(CONFIGS / "FCOS_R_50_P2_1x.yaml"))
    cfg = load_config(
        opts=[
            "MODEL.RESNETS.OUT_FEATURES",
            str(p2.MODEL.RESNETS.OUT_FEATURES),
            "MODEL.FPN.IN_FEATURES",
            str(p2.MODEL.FPN.IN_FEATURES),
            "MODEL.FCOS.IN_FEATURES",
            str(p2.MODEL.FCOS.IN_FEATURES),
            "MODEL.FCOS.FPN_STRIDES",
            str(p2.MODEL.FCOS.FPN_STRIDES),
            "MODEL.FCOS.SIZES_OF_INTEREST",
            str(p2.MODEL.FCOS.SIZES_OF_INTEREST),
            "MODEL.FCOS.TOP_LEVELS",
            "2",
        ]
    )
    model = build_model(cfg)
    shapes = model.backbone.output_shape()
    assert [shapes[f].stride for f in model.head_in_features] == [4, 8, 16, 32, 64, 128]
    batch = [  # two images: BatchNorm on P7's single cell needs more than one value
        {"image": torch.rand(3, 64, 64) * 255, "instances": make_instances((64, 64), [box], [1])}
        for box in ([4, 4, 12, 12], [30, 20, 50, 44])
    ]
    assert finite(train_step(model, batch))
    features = model.backbone(model.preprocess_image(batch).tensor)
    grid = model.location_grid([features[f] for f in model.head_in_features])
    assert grid.num_per_level[0] == 16 * 16


def test_p2_strides_that_do_not_match_the_features_name_the_key():
    from detectron2.modeling import build_model

    four_levels = "['res2', 'res3', 'res4', 'res5']"
    cfg = load_config(
        opts=[
            "MODEL.RESNETS.OUT_FEATURES",
            four_levels,
            "MODEL.FPN.IN_FEATURES",
            four_levels,
            "MODEL.FCOS.IN_FEATURES",
            "['p2', 'p3', 'p4', 'p5']",
            "MODEL.FCOS.FPN_STRIDES",
            "[8, 16, 32, 64]",
            "MODEL.FCOS.SIZES_OF_INTEREST",
            "[32, 64, 128]",
        ]
    )
    with pytest.raises(ValueError, match=r"MODEL.FCOS.FPN_STRIDES \[8, 16, 32, 64\] do not match"):
        build_model(cfg)

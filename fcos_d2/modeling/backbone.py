"""ResNet + FPN backbone with the FCOS pyramid P3-P7."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from .deformable import torchvision_deformable_convs
from .speedups import fold_frozen_batchnorm


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Build ResNet + FPN, with P6/P7 computed from P5 (default) or C5.

    ``MODEL.FCOS.TOP_LEVELS`` = 0 gives a pyramid of the FPN levels alone (e.g. P3-P5).
    Deformable convs (``MODEL.RESNETS.DEFORM_ON_PER_STAGE``) run on torchvision's kernel,
    so that they work on the CPU and without Detectron2's compiled extension.
    """
    with torchvision_deformable_convs():
        bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_levels = cfg.MODEL.FCOS.TOP_LEVELS
    if top_levels == 0:
        top_block = None
    elif top_levels == 2:
        in_feature = cfg.MODEL.FCOS.TOP_LEVELS_IN_FEATURE
        if in_feature == "p5":
            in_channels = out_channels
        elif in_feature == "res5":
            in_channels = bottom_up.output_shape()["res5"].channels
        else:
            raise ValueError(
                f"MODEL.FCOS.TOP_LEVELS_IN_FEATURE must be 'p5' or 'res5', got {in_feature!r}"
            )
        top_block = LastLevelP6P7(in_channels, out_channels, in_feature=in_feature)
    else:
        raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0 or 2, got {top_levels!r}")
    if cfg.MODEL.FCOS.FOLD_FROZEN_BN:
        fold_frozen_batchnorm(bottom_up)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )

"""The FCOS head: classification, box-regression and centerness branches shared by all levels.

Naming: N images, K classes, L pyramid levels; a level has H x W locations.
"""

import math
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import DeformConv2d


class Scale(nn.Module):
    """A learnable scalar multiplying its input (s_i in the paper, one per level)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def pyramid_input_shapes(fcos_cfg, available: Dict[str, ShapeSpec]) -> List[ShapeSpec]:
    """The shapes of the levels ``MODEL.FCOS.IN_FEATURES`` names, after checking them.

    Raises:
        ValueError: naming the key, when a level is not produced, the strides differ from
            ``MODEL.FCOS.FPN_STRIDES``, or ``SIZES_OF_INTEREST`` has the wrong length.
    """
    missing = [f for f in fcos_cfg.IN_FEATURES if f not in available]
    if missing:
        raise ValueError(
            f"MODEL.FCOS.IN_FEATURES names {missing}, which the backbone does not "
            f"produce; it produces {sorted(available)}"
        )
    shapes = [available[f] for f in fcos_cfg.IN_FEATURES]
    strides = [s.stride for s in shapes]
    if list(fcos_cfg.FPN_STRIDES) != strides:
        raise ValueError(
            f"MODEL.FCOS.FPN_STRIDES {list(fcos_cfg.FPN_STRIDES)} do not match the strides "
            f"{strides} of MODEL.FCOS.IN_FEATURES {list(fcos_cfg.IN_FEATURES)}"
        )
    if len(fcos_cfg.SIZES_OF_INTEREST) != len(strides) - 1:
        raise ValueError(
            f"MODEL.FCOS.SIZES_OF_INTEREST needs {len(strides) - 1} values for "
            f"{len(strides)} levels, got {list(fcos_cfg.SIZES_OF_INTEREST)}"
        )
    return shapes


class ModulatedDeformConv3x3(nn.Module):
    """3x3 modulated deformable conv (DCNv2), as AdelaiDet's ``DFConv2d``.

    A plain 3x3 conv predicts, per output location, 18 offsets (a (y, x) pair for each
    of the 9 taps) and 9 modulation logits; the deformable conv samples at the shifted
    taps and weighs each by the sigmoid of its logit. ``torchvision.ops.deform_conv2d``
    computes it, so no compiled extension is needed. Parameter names (``offset``,
    ``conv``) are AdelaiDet's.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 3 * 3 * 3, kernel_size=3, padding=1)
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        offset_mask = self.offset(x)  # (N, 27, H, W): 18 offsets, then 9 mask logits
        return self.conv(x, offset_mask[:, :18], offset_mask[:, 18:].sigmoid())


class PerLevelNorm(nn.ModuleList):
    """One normalization layer per pyramid level, chosen by the level being computed.

    Batch statistics differ between levels (P3 and P7 see very different features), so
    BN heads keep one BN per level, as AdelaiDet's FCOS-RT does; GroupNorm, whose
    statistics are per image, stays shared.
    """

    def forward(self, x: Tensor, level: int) -> Tensor:
        return self[level](x)


class Tower(nn.Sequential):
    """A head tower: (conv, norm, ReLU) x N, with per-level norms given the level."""

    def forward(self, x: Tensor, level: int) -> Tensor:
        for layer in self:
            x = layer(x, level) if isinstance(layer, PerLevelNorm) else layer(x)
        return x


def _tower(
    channels: int, num_convs: int, norm: str, deformable_last: bool, num_levels: int
) -> Tower:
    """``num_convs`` x (3x3 conv, norm, ReLU); the last conv deformable (DCNv2) if asked.

    BN and SyncBN get one layer per level (:class:`PerLevelNorm`); other norms are shared.
    """
    layers: List[nn.Module] = []
    for i in range(num_convs):
        if deformable_last and i == num_convs - 1:
            layers.append(ModulatedDeformConv3x3(channels, channels))
        else:
            layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        if norm in ("BN", "SyncBN"):
            layers.append(PerLevelNorm([get_norm(norm, channels) for _ in range(num_levels)]))
        elif norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return Tower(*layers)


class FCOSHead(nn.Module):
    """Shared convolutional head applied to every pyramid level.

    For each level it returns class logits, box distances (l, t, r, b) and a centerness
    logit. Box distances are non-negative and in units of the level's stride when
    ``norm_reg_targets`` is on, else ``exp`` of the output, in pixels.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        prior_prob: float = 0.01,
        use_scale: bool = True,
        norm_reg_targets: bool = True,
        centerness_on_reg: bool = True,
        use_deformable: bool = False,
    ):
        """
        Args:
            input_shape: shapes of the input features, one per level; all must have the
                same number of channels, which is also the width of the towers.
            num_classes: K, number of foreground classes.
            num_cls_convs, num_box_convs, num_share_convs: convs in the classification
                tower, the box tower, and the shared tower in front of both.
            norm: "GN", "BN", "SyncBN", or "" / "none" for no normalization; BN and
                SyncBN keep one layer per level.
            prior_prob: initial foreground probability of the classifier.
            use_scale: learnable scalar per level on the regression output.
            norm_reg_targets: regress ReLU'd distances in stride units (else exp, pixels).
            centerness_on_reg: centerness from the box tower (else the class tower).
            use_deformable: the last conv of the classification and box towers is a
                modulated deformable conv (DCNv2), as in AdelaiDet; the shared tower stays plain.
        """
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"FCOS head needs equal channels on every level, got {channels}")
        (width,) = channels
        norm = "" if norm.lower() == "none" else norm
        self.num_classes = num_classes
        self.norm_reg_targets = norm_reg_targets
        self.centerness_on_reg = centerness_on_reg

        levels = len(input_shape)
        self.share_tower = _tower(width, num_share_convs, norm, False, levels)
        self.cls_tower = _tower(width, num_cls_convs, norm, use_deformable, levels)
        self.box_tower = _tower(width, num_box_convs, norm, use_deformable, levels)
        self.cls_logits = nn.Conv2d(width, num_classes, kernel_size=3, padding=1)
        self.box_pred = nn.Conv2d(width, 4, kernel_size=3, padding=1)
        self.centerness = nn.Conv2d(width, 1, kernel_size=3, padding=1)
        self.scales = nn.ModuleList([Scale() for _ in input_shape]) if use_scale else None
        self._init_weights(prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]) -> dict:
        fcos = cfg.MODEL.FCOS
        return {
            "input_shape": input_shape,
            "num_classes": fcos.NUM_CLASSES,
            "num_cls_convs": fcos.NUM_CLS_CONVS,
            "num_box_convs": fcos.NUM_BOX_CONVS,
            "num_share_convs": fcos.NUM_SHARE_CONVS,
            "norm": fcos.NORM,
            "prior_prob": fcos.PRIOR_PROB,
            "use_scale": fcos.USE_SCALE,
            "norm_reg_targets": fcos.NORM_REG_TARGETS,
            "centerness_on_reg": fcos.CENTERNESS_ON_REG,
            "use_deformable": fcos.USE_DEFORMABLE,
        }

    def _init_weights(self, prior_prob: float) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, DeformConv2d)):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """
        Args:
            features: one (N, C, H, W) map per level, finest first.

        Returns:
            Three lists with one tensor per level: class logits (N, K, H, W),
            box distances (N, 4, H, W) and centerness logits (N, 1, H, W).
        """
        logits, box_dists, centerness = [], [], []
        for level, feature in enumerate(features):
            shared = self.share_tower(feature, level)
            cls_feature = self.cls_tower(shared, level)
            box_feature = self.box_tower(shared, level)
            logits.append(self.cls_logits(cls_feature))
            centerness.append(
                self.centerness(box_feature if self.centerness_on_reg else cls_feature)
            )
            box = self.box_pred(box_feature)  # (N, 4, H, W)
            if self.scales is not None:
                box = self.scales[level](box)
            box_dists.append(F.relu(box) if self.norm_reg_targets else torch.exp(box))
        return logits, box_dists, centerness

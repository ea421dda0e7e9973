"""Weights of other FCOS implementations renamed to fcos_d2's parameter names.

Two sources are supported:

* torchvision's ``fcos_resnet50_fpn``: a pytorch-style ResNet-50 (``backbone.body``),
  an FPN on C3-C5 with P6/P7 from P5 (``backbone.fpn``) and a GN head without Scale whose
  centerness sits on the regression branch (``head.classification_head`` /
  ``head.regression_head``). Use it with ``configs/FCOS_R_50_torchvision.yaml``.
* AdelaiDet's FCOS (e.g. ``FCOS_R_50_1x``): Detectron2 names for the backbone, the head
  under ``proposal_generator.fcos_head``.
* The official FCOS (tianzhi0549/FCOS, e.g. ``FCOS_imprv_R_50_FPN_1x.pth``):
  maskrcnn-benchmark's layout (``backbone.body`` ResNet / ResNeXt with FrozenBN, optional
  DCNv2, ``backbone.fpn``, the head under ``rpn.head``). Use it with ``configs/official/``.

A conversion never guesses: a key it does not know is an error that names it, and
:func:`check_keys` compares the result with a model's ``state_dict()`` key by key and
shape by shape.
"""

import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

# A rule renames the keys that match ``pattern`` (a full match) with ``repl``
# (``re.sub`` syntax); ``repl`` None drops the key, deliberately.
Rule = Tuple[str, Optional[str]]

# torchvision's ResNet stages layer1..layer4 are Detectron2's res2..res5.
_TORCHVISION_STAGES = {"1": "2", "2": "3", "3": "4", "4": "5"}

# torchvision's FPN blocks 0, 1, 2 read C3, C4, C5.
_TORCHVISION_FPN_LEVELS = {"0": "3", "1": "4", "2": "5"}

_BN = r"(weight|bias|running_mean|running_var)"

_TV_LAYER = r"backbone\.body\.layer(\d)\.(\d+)"
_D2_BLOCK = r"backbone.bottom_up.res<stage:\1>.\2"

_TORCHVISION_RULES: List[Rule] = [
    # nn.BatchNorm2d (weights=None) counts batches; FrozenBN (pretrained) has no such
    # buffer, nor has Detectron2's FrozenBatchNorm2d. The count plays no part in eval.
    (r".*\.num_batches_tracked", None),
    (r"backbone\.body\.conv1\.weight", r"backbone.bottom_up.stem.conv1.weight"),
    (rf"backbone\.body\.bn1\.{_BN}", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (rf"{_TV_LAYER}\.conv(\d)\.weight", rf"{_D2_BLOCK}.conv\3.weight"),
    (rf"{_TV_LAYER}\.bn(\d)\.{_BN}", rf"{_D2_BLOCK}.conv\3.norm.\4"),
    (rf"{_TV_LAYER}\.downsample\.0\.weight", rf"{_D2_BLOCK}.shortcut.weight"),
    (rf"{_TV_LAYER}\.downsample\.1\.{_BN}", rf"{_D2_BLOCK}.shortcut.norm.\3"),
    (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(weight|bias)", r"backbone.fpn_lateral<level:\1>.\2"),
    (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(weight|bias)", r"backbone.fpn_output<level:\1>.\2"),
    (r"backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)", r"backbone.top_block.\1.\2"),
    # Towers: the same Sequential layout (conv, GroupNorm, ReLU) x 4, so the same indices.
    (r"head\.classification_head\.conv\.(\d+)\.(weight|bias)", r"head.cls_tower.\1.\2"),
    (r"head\.classification_head\.cls_logits\.(weight|bias)", r"head.cls_logits.\1"),
    (r"head\.regression_head\.conv\.(\d+)\.(weight|bias)", r"head.box_tower.\1.\2"),
    (r"head\.regression_head\.bbox_reg\.(weight|bias)", r"head.box_pred.\1"),
    (r"head\.regression_head\.bbox_ctrness\.(weight|bias)", r"head.centerness.\1"),
]

_ADELAIDET_RULES: List[Rule] = [
    # Old Detectron2 meta-archs saved the input normalisation; fcos_d2 takes it from
    # MODEL.PIXEL_MEAN / PIXEL_STD.
    (r"pixel_(mean|std)", None),
    # Backbone (ResNet + FPN + top block): already Detectron2's names.
    (r"(backbone\..+)", r"\1"),
    (r"proposal_generator\.fcos_head\.(cls_tower|share_tower)\.(.+)", r"head.\1.\2"),
    (r"proposal_generator\.fcos_head\.bbox_tower\.(.+)", r"head.box_tower.\1"),
    (r"proposal_generator\.fcos_head\.cls_logits\.(weight|bias)", r"head.cls_logits.\1"),
    (r"proposal_generator\.fcos_head\.bbox_pred\.(weight|bias)", r"head.box_pred.\1"),
    (r"proposal_generator\.fcos_head\.ctrness\.(weight|bias)", r"head.centerness.\1"),
    (r"proposal_generator\.fcos_head\.scales\.(\d+)\.scale", r"head.scales.\1.scale"),
]


# The official FCOS (maskrcnn-benchmark): ResNet stages layer1..layer4 as torchvision's; FPN
# blocks fpn_inner2/3/4 and fpn_layer2/3/4 read C3, C4, C5.
_OFFICIAL_FPN_LEVELS = {"2": "3", "3": "4", "4": "5"}

_MB_LAYER = r"backbone\.body\.layer(\d)\.(\d+)"

_OFFICIAL_RULES: List[Rule] = [
    (r"backbone\.body\.stem\.conv1\.weight", r"backbone.bottom_up.stem.conv1.weight"),
    (rf"backbone\.body\.stem\.bn1\.{_BN}", r"backbone.bottom_up.stem.conv1.norm.\1"),
    # DCNv2 blocks: maskrcnn-benchmark's DFConv2d holds the offset conv inside conv2.
    (rf"{_MB_LAYER}\.conv2\.offset\.(weight|bias)", rf"{_D2_BLOCK}.conv2_offset.\3"),
    (rf"{_MB_LAYER}\.conv2\.conv\.weight", rf"{_D2_BLOCK}.conv2.weight"),
    (rf"{_MB_LAYER}\.conv(\d)\.weight", rf"{_D2_BLOCK}.conv\3.weight"),
    (rf"{_MB_LAYER}\.bn(\d)\.{_BN}", rf"{_D2_BLOCK}.conv\3.norm.\4"),
    (rf"{_MB_LAYER}\.downsample\.0\.weight", rf"{_D2_BLOCK}.shortcut.weight"),
    (rf"{_MB_LAYER}\.downsample\.1\.{_BN}", rf"{_D2_BLOCK}.shortcut.norm.\3"),
    (r"backbone\.fpn\.fpn_inner(\d)\.(weight|bias)", r"backbone.fpn_lateral<level:\1>.\2"),
    (r"backbone\.fpn\.fpn_layer(\d)\.(weight|bias)", r"backbone.fpn_output<level:\1>.\2"),
    (r"backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)", r"backbone.top_block.\1.\2"),
    # Towers: (conv, GroupNorm, ReLU) x 4 as ours, a DFConv2d's offset / conv as ours too.
    (r"rpn\.head\.cls_tower\.(\d+\.(?:offset\.|conv\.)?(?:weight|bias))", r"head.cls_tower.\1"),
    (r"rpn\.head\.bbox_tower\.(\d+\.(?:offset\.|conv\.)?(?:weight|bias))", r"head.box_tower.\1"),
    (r"rpn\.head\.cls_logits\.(weight|bias)", r"head.cls_logits.\1"),
    (r"rpn\.head\.bbox_pred\.(weight|bias)", r"head.box_pred.\1"),
    (r"rpn\.head\.centerness\.(weight|bias)", r"head.centerness.\1"),
    (r"rpn\.head\.scales\.(\d+)\.scale", r"head.scales.\1.scale"),
]

# Detectron2's FrozenBatchNorm2d divides by sqrt(running_var + eps); maskrcnn-benchmark's
# by sqrt(running_var).
_DETECTRON2_FROZEN_BN_EPS = 1e-5


def _level_names(stages: Mapping[str, str], levels: Mapping[str, str]) -> Callable[[str], str]:
    """A function resolving the ``<stage:i>`` / ``<level:i>`` placeholders of a renamed key
    with these tables; it raises KeyError for an index that has no Detectron2 counterpart
    (e.g. ``layer5``)."""
    tables = {"stage": stages, "level": levels}
    return lambda name: re.sub(
        r"<(stage|level):(\d+)>", lambda m: tables[m.group(1)][m.group(2)], name
    )


_torchvision_level_names = _level_names(_TORCHVISION_STAGES, _TORCHVISION_FPN_LEVELS)
_official_level_names = _level_names(_TORCHVISION_STAGES, _OFFICIAL_FPN_LEVELS)


def _rename(
    state_dict: Mapping[str, Tensor],
    rules: Sequence[Rule],
    source: str,
    finish: Callable[[str], str] = lambda name: name,
) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Rename every key of ``state_dict`` with the first rule that matches it.

    Args:
        state_dict: the source parameters.
        rules: (pattern, replacement) pairs; a None replacement drops the key.
        source: the checkpoint's origin, for error messages.
        finish: applied to each new name (resolves placeholders).

    Returns:
        The renamed parameters and, for each new name, the source key it came from.

    Raises:
        ValueError: naming every key no rule knows, and any two keys that would land
            on the same name.
    """
    renamed: Dict[str, Tensor] = {}
    origin: Dict[str, str] = {}
    unknown: List[str] = []
    clashes: List[str] = []
    for key, value in state_dict.items():
        for pattern, repl in rules:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            if repl is None:
                break
            try:
                name = finish(match.expand(repl))
            except KeyError:
                unknown.append(key)
                break
            if name in renamed:
                clashes.append(f"{origin[name]} and {key} -> {name}")
            renamed[name] = value
            origin[name] = key
            break
        else:
            unknown.append(key)
    if unknown or clashes:
        lines = [f"Cannot convert this {source} checkpoint:"]
        if unknown:
            lines.append(f"  unexpected keys ({len(unknown)}): {', '.join(unknown)}")
        if clashes:
            lines.append(f"  keys mapped to the same name: {'; '.join(clashes)}")
        raise ValueError("\n".join(lines))
    return renamed, origin


def check_keys(
    converted: Mapping[str, Tensor],
    model_state: Mapping[str, Tensor],
    origin: Optional[Mapping[str, str]] = None,
) -> None:
    """Check that ``converted`` fills exactly the keys of ``model_state``, with its shapes.

    Args:
        converted: the renamed checkpoint.
        model_state: ``model.state_dict()`` of the model that is to load it.
        origin: for each converted name, the source key, to name it in errors.

    Raises:
        ValueError: listing the model keys the checkpoint lacks (missing), the
            checkpoint keys the model lacks (unexpected) and shape mismatches.
    """
    origin = origin or {}

    def describe(name: str) -> str:
        return f"{name} (from {origin[name]})" if name in origin else name

    missing = sorted(set(model_state) - set(converted))
    unexpected = sorted(set(converted) - set(model_state))
    shapes = [
        f"{describe(name)}: checkpoint {tuple(converted[name].shape)}, "
        f"model {tuple(model_state[name].shape)}"
        for name in sorted(set(converted) & set(model_state))
        if tuple(converted[name].shape) != tuple(model_state[name].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = ["The converted checkpoint does not match the model:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(
            f"  unexpected keys ({len(unexpected)}): {', '.join(map(describe, unexpected))}"
        )
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    raise ValueError("\n".join(lines))


def _select_classes(
    converted: Dict[str, Tensor], class_indices: Sequence[int]
) -> Dict[str, Tensor]:
    """Keep the classifier rows ``class_indices`` (K_src, ...) -> (len(class_indices), ...)."""
    out = dict(converted)
    for name in ("head.cls_logits.weight", "head.cls_logits.bias"):
        rows = converted[name]
        bad = [i for i in class_indices if not 0 <= i < rows.shape[0]]
        if bad:
            raise ValueError(
                f"class indices {bad} are out of range for {rows.shape[0]} classes in {name}"
            )
        out[name] = rows[list(class_indices)]
    return out


def torchvision_coco_class_indices() -> List[int]:
    """The 80 COCO classes among torchvision's 91 detection labels, by category id.

    torchvision's label i is COCO category id i (0 is ``__background__``, and 10 ids are
    unused "N/A"). Selecting these rows, in this order, gives Detectron2's contiguous
    COCO ids 0..79 (``coco_2017_*`` metadata).
    """
    from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

    categories = FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return [i for i, name in enumerate(categories) if name not in ("__background__", "N/A")]


def convert_torchvision_fcos(
    state_dict: Mapping[str, Tensor],
    model_state: Optional[Mapping[str, Tensor]] = None,
    class_indices: Optional[Sequence[int]] = None,
) -> Dict[str, Tensor]:
    """Rename a torchvision ``fcos_resnet50_fpn`` state dict to fcos_d2's names.

    The result loads into the model of ``configs/FCOS_R_50_torchvision.yaml`` (with
    ``MODEL.FCOS.NUM_CLASSES`` = the checkpoint's classes, 91 for torchvision's COCO
    weights, or ``len(class_indices)``), which then computes the same detections.

    Args:
        state_dict: ``model.state_dict()`` of a torchvision FCOS (FrozenBN or BatchNorm).
        model_state: if given, the ``state_dict()`` of the target model; the result
            must then fill exactly its keys with its shapes.
        class_indices: keep only these classifier rows, in this order (e.g.
            :func:`torchvision_coco_class_indices` for Detectron2's 80 COCO classes).

    Returns:
        The renamed tensors (the same tensor objects; nothing is copied).

    Raises:
        ValueError: naming unknown keys, or missing / unexpected / misshapen keys with
            respect to ``model_state``.
    """
    converted, origin = _rename(
        state_dict, _TORCHVISION_RULES, "torchvision FCOS", _torchvision_level_names
    )
    if class_indices is not None:
        converted = _select_classes(converted, class_indices)
    if model_state is not None:
        check_keys(converted, model_state, origin)
    return converted


def _scales_to_scalars(converted: Dict[str, Tensor]) -> None:
    """Each level's scale, a (1,) tensor in AdelaiDet and the official code, as a scalar."""
    for name, value in converted.items():
        if name.startswith("head.scales.") and value.numel() == 1:
            converted[name] = value.reshape(())  # (1,) -> ()


_DEFORMABLE_BIAS = re.compile(r"head\.(cls|box)_tower\.\d+\.conv\.bias")


def _zero_deformable_biases(
    converted: Mapping[str, Tensor], model_state: Mapping[str, Tensor]
) -> Dict[str, Tensor]:
    """Zero biases for deformable convs that a checkpoint saved without one.

    AdelaiDet's FCOS head builds its ``DFConv2d`` with a bias; the official FCOS
    (maskrcnn-benchmark) builds it without. A zero bias computes the same function, so
    such a checkpoint still loads strictly into our DCNv2 head.
    """
    return {
        name: torch.zeros_like(value)
        for name, value in model_state.items()
        if _DEFORMABLE_BIAS.fullmatch(name)
        and name not in converted
        and name.replace(".bias", ".weight") in converted
    }


def convert_adelaidet_fcos(
    state_dict: Mapping[str, Tensor],
    model_state: Optional[Mapping[str, Tensor]] = None,
) -> Dict[str, Tensor]:
    """Rename an AdelaiDet FCOS state dict (e.g. ``FCOS_R_50_1x``) to fcos_d2's names.

    The backbone keeps its Detectron2 names; the head moves from
    ``proposal_generator.fcos_head`` to ``head`` (``bbox_tower`` -> ``box_tower``,
    ``bbox_pred`` -> ``box_pred``, ``ctrness`` -> ``centerness``), and each level's
    scale, a (1,) tensor in AdelaiDet, becomes a scalar.

    Args:
        state_dict: the ``"model"`` entry of an AdelaiDet checkpoint.
        model_state: if given, the ``state_dict()`` of the target model; the result
            must then fill exactly its keys with its shapes.

    Returns:
        The renamed tensors.

    Raises:
        ValueError: naming unknown keys, or missing / unexpected / misshapen keys with
            respect to ``model_state``.
    """
    converted, origin = _rename(state_dict, _ADELAIDET_RULES, "AdelaiDet FCOS")
    _scales_to_scalars(converted)
    if model_state is not None:
        converted.update(_zero_deformable_biases(converted, model_state))
        check_keys(converted, model_state, origin)
    return converted


def _frozen_bn_variance_for_detectron2(converted: Dict[str, Tensor], origin: Mapping[str, str]):
    """Lower each backbone BatchNorm's ``running_var`` by Detectron2's eps, in place.

    maskrcnn-benchmark's FrozenBatchNorm2d scales by 1 / sqrt(var), Detectron2's by
    1 / sqrt(var + 1e-5): with var - 1e-5 both compute the same. (The published
    checkpoints hold var = 1, from Caffe2's affine-only ImageNet models.)

    Raises:
        ValueError: naming a variance too small to lower (not from a trained model).
    """
    for name in [n for n in converted if n.startswith("backbone.") and n.endswith("running_var")]:
        variance = converted[name]
        if not bool((variance > _DETECTRON2_FROZEN_BN_EPS).all()):
            raise ValueError(
                f"{origin[name]}: a frozen BatchNorm variance <= {_DETECTRON2_FROZEN_BN_EPS} "
                "cannot be carried over to Detectron2's FrozenBatchNorm2d (eps 1e-5)"
            )
        converted[name] = variance - _DETECTRON2_FROZEN_BN_EPS


def convert_official_fcos(
    state_dict: Mapping[str, Tensor],
    model_state: Optional[Mapping[str, Tensor]] = None,
) -> Dict[str, Tensor]:
    """Rename an official FCOS state dict (maskrcnn-benchmark layout) to fcos_d2's names.

    ``backbone.body`` (ResNet / ResNeXt, FrozenBN, DCNv2 blocks as ``conv2.offset`` /
    ``conv2.conv``) becomes Detectron2's ``backbone.bottom_up``; ``backbone.fpn``'s
    ``fpn_inner{2,3,4}`` / ``fpn_layer{2,3,4}`` / ``top_blocks`` become
    ``backbone.fpn_lateral{3,4,5}`` / ``fpn_output{3,4,5}`` / ``top_block``; ``rpn.head``
    becomes ``head`` (``bbox_tower`` -> ``box_tower``, ``bbox_pred`` -> ``box_pred``).
    Scales become scalars and frozen BatchNorm variances are lowered by Detectron2's eps
    (see :func:`_frozen_bn_variance_for_detectron2`), so the converted model computes
    the official function. Strip a DistributedDataParallel ``module.`` prefix first.

    Args:
        state_dict: the ``"model"`` entry of an official FCOS checkpoint.
        model_state: if given, the ``state_dict()`` of the target model (a config of
            ``configs/official/``); the result must then fill exactly its keys with its
            shapes.

    Returns:
        The renamed tensors.

    Raises:
        ValueError: naming unknown keys, or missing / unexpected / misshapen keys with
            respect to ``model_state``.
    """
    converted, origin = _rename(state_dict, _OFFICIAL_RULES, "official FCOS", _official_level_names)
    _scales_to_scalars(converted)
    _frozen_bn_variance_for_detectron2(converted, origin)
    if model_state is not None:
        converted.update(_zero_deformable_biases(converted, model_state))
        check_keys(converted, model_state, origin)
    return converted


# The official FCOS model zoo's backbones: (blocks in layer3, bottleneck channels of layer1,
# channels per group) -> the name in its file names. Published: R-50 at 1x, the rest at 2x.
_OFFICIAL_BACKBONES = {
    (6, 64, 64): ("R_50", "1x"),
    (23, 64, 64): ("R_101", "2x"),
    (23, 256, 8): ("X_101_32x8d", "2x"),
    (23, 256, 4): ("X_101_64x4d", "2x"),
}


def official_model_name(state_dict: Mapping[str, Tensor]) -> str:
    """The official model-zoo name of an official FCOS state dict, read from its shapes.

    E.g. ``FCOS_imprv_dcnv2_R_50_FPN_1x``: the depth (blocks of ``layer3``), the ResNeXt
    groups (``layer1.0.conv2``), DCNv2 (an offset conv in the backbone). ``configs/official/``
    has a config of each name.

    Raises:
        ValueError: for a state dict that is not one of the published backbones.
    """
    blocks = {
        int(m.group(1))
        for key in state_dict
        if (m := re.fullmatch(r"backbone\.body\.layer3\.(\d+)\.conv1\.weight", key))
    }
    conv2 = state_dict.get("backbone.body.layer1.0.conv2.weight")
    if conv2 is None:
        conv2 = state_dict.get("backbone.body.layer1.0.conv2.conv.weight")
    if not blocks or conv2 is None:
        raise ValueError(
            "not an official FCOS checkpoint: no backbone.body.layer3 / layer1.0.conv2 weights"
        )
    channels, per_group = int(conv2.shape[0]), int(conv2.shape[1])
    backbone = _OFFICIAL_BACKBONES.get((max(blocks) + 1, channels, per_group))
    if backbone is None:
        raise ValueError(
            f"an official FCOS backbone with {max(blocks) + 1} blocks in layer3 and "
            f"{channels} channels in groups of {per_group} is not among the published "
            "R-50, R-101, X-101-32x8d, X-101-64x4d; pass --config-file"
        )
    deformable = any(
        re.fullmatch(r"backbone\.body\.layer\d\.\d+\.conv2\.offset\.weight", k) for k in state_dict
    )
    name, schedule = backbone
    return f"FCOS_imprv_{'dcnv2_' if deformable else ''}{name}_FPN_{schedule}"

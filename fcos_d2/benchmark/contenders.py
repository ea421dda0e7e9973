"""The models compared, each randomly initialised and with how to feed it.

Every builder takes the benchmark's settings (``tools/benchmark.py``'s arguments; see
each builder for the ones it reads) and the device.
"""

import argparse
from typing import Callable, Dict, List, NamedTuple, Sequence

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg, instantiate
from detectron2.modeling import build_model
from torch import nn
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import setup_cfg
from .inputs import NUM_CLASSES, Sample, to_detectron2, to_torchvision

D2_FCOS_CONFIG = "COCO-Detection/fcos_R_50_FPN_1x.py"
D2_MASK_RCNN_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"


class Contender(NamedTuple):
    """A model and how to feed it: ``to_inputs(samples, training)`` gives its arguments."""

    name: str
    model: nn.Module
    to_inputs: Callable[[Sequence[Sample], bool], tuple]
    description: str
    notes: List[str]


def build_fcos_d2(args: argparse.Namespace, device: torch.device) -> Contender:
    """Our FCOS from ``args.config_file`` and ``args.opts``, randomly initialised, with the
    test score threshold ``args.score_thresh``."""
    # 80 classes like the other models unless --opts says otherwise.
    opts = ["MODEL.FCOS.NUM_CLASSES", str(NUM_CLASSES), *args.opts]
    opts += [
        "MODEL.DEVICE",
        device.type,
        "MODEL.WEIGHTS",
        "",
        "MODEL.FCOS.SCORE_THRESH_TEST",
        str(args.score_thresh),
    ]
    cfg = setup_cfg(args.config_file, opts)
    num_classes = cfg.MODEL.FCOS.NUM_CLASSES
    notes = []
    if num_classes != NUM_CLASSES:
        notes.append(f"fcos_d2: {num_classes} classes; ground-truth class ids taken modulo that")
    return Contender(
        "fcos_d2",
        build_model(cfg),
        lambda samples, training: to_detectron2(samples, device, False, num_classes),
        f"fcos_d2 {args.config_file} {' '.join(args.opts)}".strip(),
        notes,
    )


def build_d2_fcos(args: argparse.Namespace, device: torch.device) -> Contender:
    """Detectron2's own FCOS R-50 (LazyConfig), randomly initialised; reads
    ``args.score_thresh``."""
    cfg = model_zoo.get_config(D2_FCOS_CONFIG)
    cfg.model.test_score_thresh = args.score_thresh
    return Contender(
        "d2_fcos",
        instantiate(cfg.model).to(device),
        lambda samples, training: to_detectron2(samples, device, with_masks=False),
        f"detectron2 model_zoo {D2_FCOS_CONFIG}",
        [],
    )


def freeze_like_detectron2(model: nn.Module) -> None:
    """FrozenBN everywhere in the ResNet and stem + res2 frozen, as Detectron2's R-50.

    torchvision's ``fcos_resnet50_fpn`` trains every layer with BatchNorm when it gets
    no pretrained weights; with them it uses FrozenBatchNorm2d and trains the last three
    stages, which is also what Detectron2 (FREEZE_AT 2, FrozenBN) and fcos_d2 do.
    """
    body = model.backbone.body
    for module in list(body.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                setattr(module, child_name, frozen.to(child.weight.device))
    for name, parameter in body.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            parameter.requires_grad_(False)


def build_tv_fcos(args: argparse.Namespace, device: torch.device) -> Contender:
    """torchvision's FCOS R-50, randomly initialised, not resizing the benchmark images
    (``args.height`` x ``args.width``); reads ``args.score_thresh``."""
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None)
    freeze_like_detectron2(model)
    # GeneralizedRCNNTransform scales by min(min_size / short side, max_size / long side).
    model.transform.min_size = (min(args.height, args.width),)
    model.transform.max_size = max(args.height, args.width)
    model.score_thresh = args.score_thresh
    return Contender(
        "tv_fcos",
        model.to(device),
        lambda samples, training: to_torchvision(samples, device, with_targets=training),
        "torchvision fcos_resnet50_fpn(weights=None, weights_backbone=None)",
        [
            "tv_fcos: BatchNorm replaced by FrozenBatchNorm2d and stem + layer1 frozen, as "
            "torchvision does with pretrained weights and as Detectron2 does (FREEZE_AT 2)",
            "tv_fcos: its transform still calls interpolate at scale 1.0 (no size change)",
        ],
    )


def build_d2_mask_rcnn(args: argparse.Namespace, device: torch.device) -> Contender:
    """Detectron2's Mask R-CNN R-50-FPN 1x (YAML), randomly initialised; reads
    ``args.score_thresh``."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(D2_MASK_RCNN_CONFIG))
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            device.type,
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            str(args.score_thresh),
        ]
    )
    return Contender(
        "d2_mask_rcnn",
        build_model(cfg),
        lambda samples, training: to_detectron2(samples, device, with_masks=training),
        f"detectron2 model_zoo {D2_MASK_RCNN_CONFIG}",
        ["d2_mask_rcnn: gt_masks are the boxes' rectangles"],
    )


BUILDERS: Dict[str, Callable[[argparse.Namespace, torch.device], Contender]] = {
    "fcos_d2": build_fcos_d2,
    "d2_fcos": build_d2_fcos,
    "tv_fcos": build_tv_fcos,
    "d2_mask_rcnn": build_d2_mask_rcnn,
}
MODELS = tuple(BUILDERS)

"""Config keys of fcos_d2 (every key lives under ``MODEL.FCOS``), and building a config."""

import logging
from typing import List, Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

logger = logging.getLogger("fcos_d2")
_said: set = set()  # fallback warnings already logged by this process


def add_fcos_config(cfg: CN) -> None:
    """Add the ``MODEL.FCOS`` keys, with the paper's defaults, to a Detectron2 config.

    Call it before ``merge_from_file`` so that a misspelled key in a YAML is an error.
    """
    _C = cfg
    _C.MODEL.FCOS = CN()

    # Number of foreground classes (K).
    _C.MODEL.FCOS.NUM_CLASSES = 80
    # Backbone features the head reads, from the finest level to the coarsest.
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Stride s of each of those levels, in input pixels.
    _C.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]
    # Centre of location (x, y) on a level of stride s: ((x + offset) * s, (y + offset) * s).
    # 0.5 is the centre of the cell (the paper's floor(s/2) + x*s); torchvision uses 0.0.
    _C.MODEL.FCOS.LOCATION_OFFSET = 0.5

    # Extra levels P6, P7 built by the backbone on top of the FPN (0 or 2).
    _C.MODEL.FCOS.TOP_LEVELS = 2
    # What P6 is computed from: "p5" (FCOS paper, improved) or "res5" (C5, as in RetinaNet).
    _C.MODEL.FCOS.TOP_LEVELS_IN_FEATURE = "p5"

    # Head. pi in the paper: initial foreground probability of the classifier.
    _C.MODEL.FCOS.PRIOR_PROB = 0.01
    # Convs in the classification tower, the box tower, and shared before both.
    _C.MODEL.FCOS.NUM_CLS_CONVS = 4
    _C.MODEL.FCOS.NUM_BOX_CONVS = 4
    _C.MODEL.FCOS.NUM_SHARE_CONVS = 0
    # Normalization in the towers: "GN", "BN", "SyncBN" or "none".
    _C.MODEL.FCOS.NORM = "GN"
    # Learnable scalar per level multiplying the regression output (exp(s_i x) in the paper).
    _C.MODEL.FCOS.USE_SCALE = True
    # Regress distances in units of the level's stride, with a ReLU (improved FCOS);
    # when off, distances are exp() of the output, in pixels (the paper's first version).
    _C.MODEL.FCOS.NORM_REG_TARGETS = True
    # Predict centerness from the regression tower (True) or the classification tower.
    _C.MODEL.FCOS.CENTERNESS_ON_REG = True
    # Modulated deformable conv (DCNv2, torchvision.ops.deform_conv2d with a mask) as the last
    # conv of the classification and box towers, as in AdelaiDet (the shared tower stays plain).
    _C.MODEL.FCOS.USE_DEFORMABLE = False

    # Targets. Centre sampling: a location is positive only within radius * stride of the
    # box centre (clipped to the box). 0 turns centre sampling off.
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # m_2 .. m_5: boundaries between the size ranges of consecutive levels, in pixels.
    # Level i takes boxes with m_{i-1} <= max(l*, t*, r*, b*) <= m_i (m_1 = 0, m_last = inf).
    _C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]

    # Losses. Focal loss alpha and gamma for the classifier.
    _C.MODEL.FCOS.LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.LOSS_GAMMA = 2.0
    # Box regression loss: "iou" (-log IoU, the paper's), "giou", "diou" or "ciou".
    _C.MODEL.FCOS.BOX_LOSS_TYPE = "giou"
    # s in the IoU of the "iou" and "giou" losses, IoU = (I + s) / (U + s), with I and U in
    # the units the distances are regressed in (stride units with NORM_REG_TARGETS, so
    # s = 1 adds one stride squared). 0: the papers' exact IoU; 1: the official FCOS code's.
    _C.MODEL.FCOS.IOU_LOSS_SMOOTHING = 0.0

    # Inference. Candidates below this score are dropped before top-k.
    _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.05
    # Apply the threshold to sqrt(cls * centerness) (True) or to the class score alone.
    _C.MODEL.FCOS.THRESH_WITH_CENTERNESS = False
    # Candidates kept per level before NMS.
    _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    # IoU threshold of the class-aware NMS.
    _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6
    # Detections kept per image after NMS.
    _C.MODEL.FCOS.DETECTIONS_PER_IMAGE = 100

    # Beyond FCOS: its successors' fixes (fcos_d2/modeling/successors.py); the defaults are
    # plain FCOS. What the quality branch learns (BCE): "ctrness" (the centerness of the
    # target box, FCOS), "iou" (the IoU of the predicted box with its target, detached, as
    # AdelaiDet's BOX_QUALITY iou) or "none" (no branch in the score: the class score alone).
    _C.MODEL.FCOS.BOX_QUALITY = "ctrness"
    # Sample selection: "fcos" (size ranges, centre sampling) or "atss" (ATSS, anchor-free: a
    # square box of ATSS_ANCHOR_SCALE x stride per location, the ATSS_TOPK closest locations
    # of each level as candidates, IoU threshold mean + std; size ranges are not used).
    _C.MODEL.FCOS.ASSIGNER = "fcos"
    _C.MODEL.FCOS.ATSS_ANCHOR_SCALE = 8.0
    _C.MODEL.FCOS.ATSS_TOPK = 9
    # Classification loss: "focal", or "quality_focal" (GFL: the positive's class target is
    # its box's IoU; loss |y - sigmoid|^QFL_BETA x BCE). quality_focal makes the class score
    # the quality estimate: it needs BOX_QUALITY "none" (a second quality would count twice).
    _C.MODEL.FCOS.CLS_LOSS = "focal"
    _C.MODEL.FCOS.QFL_BETA = 2.0
    # NMS: "hard" (at NMS_THRESH_TEST) or "soft_gaussian" (Gaussian Soft-NMS within each
    # class: scores decay by exp(-IoU^2 / SOFT_NMS_SIGMA); those under SOFT_NMS_MIN_SCORE go).
    # Also used by TTA's merge and the FCOS proposal generator; export refuses soft_gaussian.
    _C.MODEL.FCOS.NMS_TYPE = "hard"
    _C.MODEL.FCOS.SOFT_NMS_SIGMA = 0.5
    _C.MODEL.FCOS.SOFT_NMS_MIN_SCORE = 0.001

    # Speed (the same function, computed faster). Channels-last tensors in the backbone
    # and head, and frozen BatchNorm folded into the preceding conv of the ResNet.
    _C.MODEL.FCOS.CHANNELS_LAST = True
    _C.MODEL.FCOS.FOLD_FROZEN_BN = True
    # Inference only: "float32", or "bfloat16" to run backbone and head under bfloat16
    # autocast (about 2x faster on a CPU with AVX-512 BF16 or AMX; scores move by ~1e-2).
    # Decoding and NMS stay in float32; training is unaffected.
    _C.MODEL.FCOS.INFERENCE_DTYPE = "float32"


def merge_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Config from the Detectron2 and FCOS defaults, the file, and KEY VALUE pairs (not frozen)."""
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def fall_back_to_available_hardware(cfg: CN) -> List[str]:
    """Run on the CPU when no GPU is found, and in float32 there; says what it changed."""
    changes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        changes.append("No GPU found: running on the CPU (MODEL.DEVICE cpu)")
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        # Detectron2's AMPTrainer autocasts on CUDA only (and asserts a GPU at step 1).
        cfg.SOLVER.AMP.ENABLED = False
        changes.append(
            f"SOLVER.AMP.ENABLED needs a CUDA device, MODEL.DEVICE is {cfg.MODEL.DEVICE}: "
            "training in float32"
        )
    return changes


def setup_cfg(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Frozen config from the FCOS defaults, the file, and KEY VALUE pairs, runnable here.

    What the hardware fallbacks change is logged as a warning, once per process.
    """
    cfg = merge_config(config_file, opts)
    for change in fall_back_to_available_hardware(cfg):
        if change not in _said:
            _said.add(change)
            logger.warning(change)
    cfg.freeze()
    return cfg

"""The fixes of FCOS's successors, as options (``MODEL.FCOS`` keys; defaults: plain FCOS).

- ``BOX_QUALITY``: the quality branch learns the centerness ("ctrness", FCOS), the IoU of
  the predicted box with its target ("iou", as AdelaiDet's FCOS), or nothing ("none": the
  score is the class score alone).
- ``ASSIGNER``: FCOS's size ranges and centre sampling ("fcos") or ATSS's adaptive sample
  selection ("atss", with ``ATSS_ANCHOR_SCALE`` and ``ATSS_TOPK``; see ``atss``).
- ``CLS_LOSS``: the focal loss ("focal") or GFL's quality focal loss ("quality_focal", with
  ``QFL_BETA``): the positive's class target is its box's IoU, so the class score is the
  quality estimate, and it goes with ``BOX_QUALITY`` none only.
- ``NMS_TYPE``: hard NMS ("hard") or Gaussian Soft-NMS ("soft_gaussian", with
  ``SOFT_NMS_SIGMA``; decayed scores under ``SOFT_NMS_MIN_SCORE`` are dropped).
"""

from dataclasses import dataclass
from typing import Dict

from .losses import check_quality_options
from .postprocess import check_nms_type
from .targets import ASSIGNERS


@dataclass(frozen=True)
class SuccessorOptions:
    """The options above; a bad value or combination is a ValueError naming the key."""

    box_quality: str = "ctrness"
    cls_loss: str = "focal"
    qfl_beta: float = 2.0
    assigner: str = "fcos"
    atss_anchor_scale: float = 8.0
    atss_topk: int = 9
    nms_type: str = "hard"
    soft_nms_sigma: float = 0.5
    soft_nms_min_score: float = 1e-3

    def __post_init__(self):
        check_quality_options(self.box_quality, self.cls_loss)
        check_nms_type(self.nms_type)
        if self.assigner not in ASSIGNERS:
            raise ValueError(
                f"MODEL.FCOS.ASSIGNER must be one of {ASSIGNERS}, got {self.assigner!r}"
            )
        for key, value, low in (
            ("QFL_BETA", self.qfl_beta, 0.0),
            ("ATSS_ANCHOR_SCALE", self.atss_anchor_scale, 0.0),
            ("ATSS_TOPK", self.atss_topk, 0),
            ("SOFT_NMS_SIGMA", self.soft_nms_sigma, 0.0),
        ):
            if not value > low:
                raise ValueError(f"MODEL.FCOS.{key} must be > {low:g}, got {value}")
        if self.soft_nms_min_score < 0:
            raise ValueError(
                f"MODEL.FCOS.SOFT_NMS_MIN_SCORE must be >= 0, got {self.soft_nms_min_score}"
            )

    @classmethod
    def from_config(cls, fcos_cfg) -> "SuccessorOptions":
        """From ``cfg.MODEL.FCOS``."""
        return cls(
            box_quality=fcos_cfg.BOX_QUALITY,
            cls_loss=fcos_cfg.CLS_LOSS,
            qfl_beta=fcos_cfg.QFL_BETA,
            assigner=fcos_cfg.ASSIGNER,
            atss_anchor_scale=fcos_cfg.ATSS_ANCHOR_SCALE,
            atss_topk=fcos_cfg.ATSS_TOPK,
            nms_type=fcos_cfg.NMS_TYPE,
            soft_nms_sigma=fcos_cfg.SOFT_NMS_SIGMA,
            soft_nms_min_score=fcos_cfg.SOFT_NMS_MIN_SCORE,
        )

    @property
    def with_quality(self) -> bool:
        """Whether the score multiplies in a quality branch."""
        return self.box_quality != "none"

    def loss_arguments(self) -> Dict:
        """As ``losses.fcos_losses`` takes them."""
        return dict(box_quality=self.box_quality, cls_loss=self.cls_loss, qfl_beta=self.qfl_beta)

    def assignment_arguments(self) -> Dict:
        """As ``targets.assign_targets`` takes them."""
        return dict(
            assigner=self.assigner,
            atss_anchor_scale=self.atss_anchor_scale,
            atss_topk=self.atss_topk,
        )

    def nms_arguments(self) -> Dict:
        """As ``postprocess.clip_nms_cap`` takes them."""
        return dict(
            nms_type=self.nms_type,
            soft_nms_sigma=self.soft_nms_sigma,
            soft_nms_min_score=self.soft_nms_min_score,
        )

"""FCOS as the region proposal network of Detectron2's R-CNNs.

Registered in Detectron2's ``PROPOSAL_GENERATOR_REGISTRY`` as ``"FCOS"``: any R-CNN YAML
runs with ``MODEL.PROPOSAL_GENERATOR.NAME: "FCOS"``. Class-agnostic, as in the FCOS paper's
RPN experiments: one foreground class, scored sqrt(objectness x centerness).

It is the same FCOS: the head (:class:`FCOSHead`, with one class), target assignment,
losses and candidate decoding of the meta-architecture. What differs is the end: the
per-image candidates go through class-agnostic NMS and become ``proposals``
(``proposal_boxes``, ``objectness_logits``), as Detectron2's RPN returns them.

Config: the head, targets and losses read ``MODEL.FCOS.*`` (NUM_CLASSES is ignored: one
class); the proposal counts and NMS read the RPN keys where they mean the same thing:
``MODEL.RPN.PRE_NMS_TOPK_TRAIN/TEST`` (candidates per pyramid level, as the RPN's per-level
top-k with FPN), ``MODEL.RPN.POST_NMS_TOPK_TRAIN/TEST`` (proposals per image) and
``MODEL.RPN.NMS_THRESH``. No score threshold: the top-k decides, as for the RPN.
Two differences from the RPN: NMS runs once over the candidates of all levels together (the
RPN runs it per level, then keeps the best of all levels), as FCOS's own inference does;
and the other RPN keys (``IN_FEATURES``, ``HEAD_NAME``, the anchor matching, sampling and
box-regression keys, ``LOSS_WEIGHT``) and ``MODEL.FCOS``'s test-time keys
(``SCORE_THRESH_TEST``, ``TOPK_CANDIDATES_TEST``, ``NMS_THRESH_TEST``,
``DETECTIONS_PER_IMAGE``) are not read: FCOS reads its levels from ``MODEL.FCOS.IN_FEATURES``.

Naming: N images, R locations (R_l on level l), P proposals.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from .head import FCOSHead, pyramid_input_shapes
from .losses import fcos_losses
from .postprocess import clip_nms_cap, decode_candidates
from .successors import SuccessorOptions
from .targets import assign_targets, make_location_grid, sanitize_gt_instances


@PROPOSAL_GENERATOR_REGISTRY.register()
class FCOS(nn.Module):
    """FCOS proposals for an R-CNN (registered as ``"FCOS"``; see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        head: nn.Module,
        in_features: List[str],
        strides: Sequence[int],
        sizes_of_interest: Sequence[float],
        location_offset: float = 0.5,
        center_sampling_radius: float = 1.5,
        norm_reg_targets: bool = True,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        box_loss_type: str = "giou",
        iou_loss_smoothing: float = 0.0,
        pre_nms_topk: Tuple[int, int] = (2000, 1000),
        post_nms_topk: Tuple[int, int] = (1000, 1000),
        nms_thresh: float = 0.7,
        successors: SuccessorOptions = SuccessorOptions(),
    ):
        """
        Args:
            head: an :class:`FCOSHead` with one class.
            in_features, strides: the pyramid levels it reads, finest first, and their strides.
            sizes_of_interest, location_offset, center_sampling_radius, norm_reg_targets:
                target assignment, as in the FCOS meta-architecture.
            focal_loss_alpha, focal_loss_gamma, box_loss_type, iou_loss_smoothing: losses.
            pre_nms_topk: candidates per level (training, test).
            post_nms_topk: proposals per image after NMS (training, test).
            nms_thresh: IoU of the class-agnostic NMS.
            successors: the MODEL.FCOS options of FCOS's successors, as for the detector
                (quality branch, assigner, class loss; Soft-NMS of the proposals).
        """
        super().__init__()
        self.head = head
        self.in_features = list(in_features)
        self.strides = list(strides)
        self.sizes_of_interest = list(sizes_of_interest)
        self.location_offset = location_offset
        self.center_sampling_radius = center_sampling_radius
        self.norm_reg_targets = norm_reg_targets
        self.loss_options = dict(
            num_classes=1,
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
            box_loss_type=box_loss_type,
            iou_loss_smoothing=iou_loss_smoothing,
            **successors.loss_arguments(),
        )
        self.successors = successors
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        fcos, rpn = cfg.MODEL.FCOS, cfg.MODEL.RPN
        shapes = pyramid_input_shapes(fcos, input_shape)
        strides = [s.stride for s in shapes]
        head_config = cfg.clone()
        head_config.defrost()
        head_config.MODEL.FCOS.NUM_CLASSES = 1  # class-agnostic proposals
        return {
            "head": FCOSHead(head_config, shapes),
            "in_features": list(fcos.IN_FEATURES),
            "strides": strides,
            "sizes_of_interest": fcos.SIZES_OF_INTEREST,
            "location_offset": fcos.LOCATION_OFFSET,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "norm_reg_targets": fcos.NORM_REG_TARGETS,
            "focal_loss_alpha": fcos.LOSS_ALPHA,
            "focal_loss_gamma": fcos.LOSS_GAMMA,
            "box_loss_type": fcos.BOX_LOSS_TYPE,
            "iou_loss_smoothing": fcos.IOU_LOSS_SMOOTHING,
            "pre_nms_topk": (rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
            "post_nms_topk": (rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
            "nms_thresh": rpn.NMS_THRESH,
            "successors": SuccessorOptions.from_config(fcos),
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """
        Returns:
            proposals: per image, Instances with ``proposal_boxes`` and ``objectness_logits``,
                best first; losses: ``loss_fcos_cls/loc/ctr`` in training, else empty.
        """
        level_features = [features[f] for f in self.in_features]
        predictions = self.head(level_features)
        # (N, R_l, 1), (N, R_l, 4), (N, R_l, 1) per level
        logits, box_dists, centerness = (
            [permute_to_N_HWA_K(x, channels) for x in outputs]
            for outputs, channels in zip(predictions, (1, 4, 1))
        )
        grid = make_location_grid(
            [tuple(f.shape[-2:]) for f in level_features],
            self.strides,
            self.sizes_of_interest,
            self.location_offset,
            level_features[0].device,
        )
        losses = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("the FCOS proposal generator needs gt_instances in training")
            losses = self.losses(grid, logits, box_dists, centerness, gt_instances)
        with torch.no_grad():  # proposals are inputs of the ROI heads, as the RPN's
            proposals = self.proposals(grid, logits, box_dists, centerness, images.image_sizes)
        return proposals, losses

    def losses(self, grid, logits, box_dists, centerness, gt_instances) -> Dict[str, Tensor]:
        """The FCOS losses with every box of class 0."""
        agnostic = []
        for instances in gt_instances:
            instances = instances[:]  # a shallow copy, the caller's keep their classes
            instances.gt_classes = torch.zeros_like(instances.gt_classes)
            agnostic.append(sanitize_gt_instances(instances, 1))
        labels, box_targets = assign_targets(
            grid,
            agnostic,
            1,
            self.center_sampling_radius,
            self.norm_reg_targets,
            **self.successors.assignment_arguments(),
        )
        return fcos_losses(
            torch.cat(logits, dim=1).float(),  # (N, R, 1)
            torch.cat(box_dists, dim=1).float(),  # (N, R, 4)
            torch.cat(centerness, dim=1).float().squeeze(2),  # (N, R)
            labels,
            box_targets,
            **self.loss_options,
        )

    def proposals(self, grid, logits, box_dists, centerness, image_sizes) -> List[Instances]:
        points = grid.points.split(grid.num_per_level)
        results = []
        for i, image_size in enumerate(image_sizes):
            boxes, scores, _ = decode_candidates(
                [x[i] for x in logits],
                [x[i] for x in box_dists],
                [x[i, :, 0] for x in centerness],
                points,
                self.strides,
                norm_reg_targets=self.norm_reg_targets,
                score_thresh=0.0,
                topk_candidates=self.pre_nms_topk[self.training],
                with_quality=self.successors.with_quality,
            )
            boxes, scores, _ = clip_nms_cap(
                boxes,
                scores,
                torch.zeros_like(scores, dtype=torch.int64),  # one class: class-agnostic NMS
                image_size,
                self.nms_thresh,
                self.post_nms_topk[self.training],
                **self.successors.nms_arguments(),
            )
            proposals = Instances(image_size)
            proposals.proposal_boxes = Boxes(boxes)
            # The score as a logit, as the RPN's objectness (sorted the same way).
            eps = 1e-6
            # In float32: under autocast 1 - 1e-6 rounds to 1 in float16, and the logit to inf.
            proposals.objectness_logits = torch.logit(scores.float().clamp(eps, 1 - eps))
            results.append(proposals)
        return results

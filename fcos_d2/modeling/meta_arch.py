"""The FCOS meta-architecture: wires backbone, head, target assignment, losses and inference.

Each stage of a forward pass runs in a profiler range, ``fcos_d2.<stage>``
(``torch.profiler.record_function``: next to free when no profiler is running), so that a
profiler times the stages of the model as it is (``fcos_d2.benchmark.stages`` does).

Naming: N images, R locations over all levels, K classes.
"""

import contextlib
from typing import Any, ContextManager, Dict, List, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn
from torch.profiler import record_function

from .head import FCOSHead, pyramid_input_shapes
from .losses import BOX_LOSS_TYPES, check_iou_loss_smoothing, fcos_losses
from .postprocess import fcos_inference_single_image
from .successors import SuccessorOptions
from .targets import LocationGrid, assign_targets, make_location_grid, sanitize_gt_instances

# Grids kept per (feature sizes, device); multi-scale training sees a few dozen.
_GRID_CACHE_SIZE = 64
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@META_ARCH_REGISTRY.register()
class FCOS(DenseDetector):
    """FCOS: Fully Convolutional One-Stage Object Detection (Tian et al., 2019)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        strides: Sequence[int],
        num_classes: int,
        sizes_of_interest: Sequence[float] = (64, 128, 256, 512),
        location_offset: float = 0.5,
        center_sampling_radius: float = 1.5,
        norm_reg_targets: bool = True,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        box_loss_type: str = "giou",
        iou_loss_smoothing: float = 0.0,
        score_thresh: float = 0.05,
        thresh_with_centerness: bool = False,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_image: int = 100,
        successors: SuccessorOptions = SuccessorOptions(),
        channels_last: bool = False,
        inference_dtype: str = "float32",
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        """
        Args:
            backbone: produces the pyramid features.
            head: maps the features of ``head_in_features`` to per-level class logits,
                box distances and centerness logits (see :class:`FCOSHead`).
            head_in_features: names of the pyramid levels, finest first.
            strides: stride of each of those levels.
            num_classes: K.
            sizes_of_interest: the boundaries m_2..m_L between the levels' size ranges.
            location_offset: a location's position inside its cell, in strides.
            center_sampling_radius: in strides; 0 turns centre sampling off.
            norm_reg_targets: the head regresses distances in stride units.
            focal_loss_alpha, focal_loss_gamma: focal loss parameters.
            box_loss_type: "iou", "giou", "diou" or "ciou".
            iou_loss_smoothing: s in IoU = (I + s) / (U + s) of the iou / giou losses;
                0 is the papers' IoU, 1 the official FCOS code's.
            score_thresh, thresh_with_centerness, topk_candidates, nms_thresh,
                detections_per_image: inference, see :func:`fcos_inference_single_image`.
            successors: the fixes of FCOS's successors (quality branch, assigner, class
                loss, NMS), see ``successors``; the default is plain FCOS.
            channels_last: run backbone and head on channels-last tensors (faster convs
                on CPU and on tensor-core GPUs; same function).
            inference_dtype: "float32", or "bfloat16": backbone and head run under
                bfloat16 autocast at inference (decoding and NMS in float32).
            pixel_mean, pixel_std: input normalisation.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if box_loss_type not in BOX_LOSS_TYPES:
            raise ValueError(
                f"MODEL.FCOS.BOX_LOSS_TYPE must be one of {BOX_LOSS_TYPES}, got {box_loss_type!r}"
            )
        check_iou_loss_smoothing(box_loss_type, iou_loss_smoothing)
        if inference_dtype not in INFERENCE_DTYPES:
            raise ValueError(
                f"MODEL.FCOS.INFERENCE_DTYPE must be one of {tuple(INFERENCE_DTYPES)}, "
                f"got {inference_dtype!r}"
            )
        self.strides = list(strides)
        self.num_classes = num_classes
        self.sizes_of_interest = list(sizes_of_interest)
        self.location_offset = location_offset
        self.center_sampling_radius = center_sampling_radius
        self.norm_reg_targets = norm_reg_targets
        # Loss parameters:
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.box_loss_type = box_loss_type
        self.iou_loss_smoothing = iou_loss_smoothing
        # Inference parameters:
        self.score_thresh = score_thresh
        self.thresh_with_centerness = thresh_with_centerness
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.successors = successors
        self.channels_last = channels_last
        self.inference_dtype = inference_dtype
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._grids: Dict[Tuple, LocationGrid] = {}

    @classmethod
    def from_config(cls, cfg) -> dict:
        fcos = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        backbone_shapes = backbone.output_shape()
        feature_shapes = pyramid_input_shapes(fcos, backbone_shapes)
        backbone_strides = [s.stride for s in feature_shapes]
        return {
            "backbone": backbone,
            "head": FCOSHead(cfg, feature_shapes),
            "head_in_features": list(fcos.IN_FEATURES),
            "strides": backbone_strides,
            "num_classes": fcos.NUM_CLASSES,
            "sizes_of_interest": fcos.SIZES_OF_INTEREST,
            "location_offset": fcos.LOCATION_OFFSET,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "norm_reg_targets": fcos.NORM_REG_TARGETS,
            # Loss parameters:
            "focal_loss_alpha": fcos.LOSS_ALPHA,
            "focal_loss_gamma": fcos.LOSS_GAMMA,
            "box_loss_type": fcos.BOX_LOSS_TYPE,
            "iou_loss_smoothing": fcos.IOU_LOSS_SMOOTHING,
            # Inference parameters:
            "score_thresh": fcos.SCORE_THRESH_TEST,
            "thresh_with_centerness": fcos.THRESH_WITH_CENTERNESS,
            "topk_candidates": fcos.TOPK_CANDIDATES_TEST,
            "nms_thresh": fcos.NMS_THRESH_TEST,
            "detections_per_image": fcos.DETECTIONS_PER_IMAGE,
            "successors": SuccessorOptions.from_config(fcos),
            "channels_last": fcos.CHANNELS_LAST,
            "inference_dtype": fcos.INFERENCE_DTYPE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward(
        self, batched_inputs: List[Dict[str, Any]]
    ) -> Union[Dict[str, Tensor], List[Dict[str, Instances]]]:
        """Detectron2's ``DenseDetector.forward``, the same steps in the same order, each
        stage in a profiler range ``fcos_d2.<stage>``.

        Args:
            batched_inputs: one dict per image: "image" (C, H, W), in training "instances",
                and optionally the output size "height", "width".

        Returns:
            In training, the losses; else one {"instances": detections} per image, in the
            output size.
        """
        with record_function("fcos_d2.preprocess"):
            images = self.preprocess_image(batched_inputs)
        with self.inference_autocast():
            with record_function("fcos_d2.backbone_fpn"):
                features = self.backbone(images.tensor)
                features = [features[f] for f in self.head_in_features]  # (N, C, H_l, W_l)
            with record_function("fcos_d2.head"):
                predictions = self.head(features)  # per level (N, K | 4 | 1, H_l, W_l)
        if predictions[0][0].dtype != torch.float32:  # decode and NMS in float32
            predictions = tuple([p.float() for p in per_level] for per_level in predictions)

        if self.training:
            assert "instances" in batched_inputs[0], "Instance annotations are missing in training!"
            with record_function("fcos_d2.preprocess"):
                gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.forward_training(images, features, predictions, gt_instances)

        with record_function("fcos_d2.decoding_nms"):
            results = self.forward_inference(images, features, predictions)
        with record_function("fcos_d2.postprocess"):
            processed_results = []
            for results_per_image, input_per_image, image_size in zip(
                results, batched_inputs, images.image_sizes
            ):
                height = input_per_image.get("height", image_size[0])
                width = input_per_image.get("width", image_size[1])
                instances = detector_postprocess(results_per_image, height, width)
                processed_results.append({"instances": instances})
        return processed_results

    def inference_autocast(self) -> ContextManager:
        """Autocast to ``inference_dtype`` in eval mode; in training or float32, a no-op.

        The no-op is a null context, not a disabled autocast: a disabled autocast would
        switch off the trainer's own AMP (``SOLVER.AMP.ENABLED``) around the model.
        """
        dtype = INFERENCE_DTYPES[self.inference_dtype]
        if self.training or dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        images = super().preprocess_image(batched_inputs)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def location_grid(self, features: List[Tensor]) -> LocationGrid:
        """The locations of the pyramid for these feature sizes, built once per size."""
        sizes = tuple(tuple(f.shape[-2:]) for f in features)
        key = (sizes, str(features[0].device))
        grid = self._grids.get(key)
        if grid is None:
            if len(self._grids) >= _GRID_CACHE_SIZE:
                self._grids.clear()
            grid = make_location_grid(
                sizes,
                self.strides,
                self.sizes_of_interest,
                self.location_offset,
                features[0].device,
            )
            self._grids[key] = grid
        return grid

    def flatten_predictions(
        self, predictions: Tuple[List[Tensor], List[Tensor], List[Tensor]]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Per-level (N, C, H, W) head outputs to (N, H*W, C), C = K, 4 and 1."""
        return tuple(self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1]))

    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], List[Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        with record_function("fcos_d2.flatten"):
            logits, box_dists, centerness = self.concat_predictions(predictions)
        with record_function("fcos_d2.target_assignment"):
            labels, box_targets = self.label_locations(features, gt_instances)
        with record_function("fcos_d2.losses"):
            return self.losses(logits, box_dists, centerness, labels, box_targets)

    def concat_predictions(
        self, predictions: Tuple[List[Tensor], List[Tensor], List[Tensor]]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Head outputs of all levels as (N, R, K), (N, R, 4), (N, R), in float32 for the losses."""
        logits, box_dists, centerness = (
            torch.cat(level_outputs, dim=1).float()
            for level_outputs in self.flatten_predictions(predictions)
        )
        return logits, box_dists, centerness.squeeze(2)

    def label_locations(
        self, features: List[Tensor], gt_instances: List[Instances]
    ) -> Tuple[Tensor, Tensor]:
        """Target assignment: labels (N, R) and box targets (N, R, 4) for every location."""
        grid = self.location_grid(features)
        gt_instances = [sanitize_gt_instances(x, self.num_classes) for x in gt_instances]
        return assign_targets(
            grid,
            gt_instances,
            self.num_classes,
            self.center_sampling_radius,
            norm_reg_targets=self.norm_reg_targets,
            **self.successors.assignment_arguments(),
        )

    def losses(
        self,
        logits: Tensor,
        box_dists: Tensor,
        centerness: Tensor,
        labels: Tensor,
        box_targets: Tensor,
    ) -> Dict[str, Tensor]:
        """The FCOS losses (see :func:`fcos_losses`) with this model's loss parameters."""
        return fcos_losses(
            logits,
            box_dists,
            centerness,
            labels,
            box_targets,
            num_classes=self.num_classes,
            focal_loss_alpha=self.focal_loss_alpha,
            focal_loss_gamma=self.focal_loss_gamma,
            box_loss_type=self.box_loss_type,
            iou_loss_smoothing=self.iou_loss_smoothing,
            **self.successors.loss_arguments(),
        )

    def forward_inference(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], List[Tensor]],
    ) -> List[Instances]:
        logits, box_dists, centerness = self.flatten_predictions(predictions)
        grid = self.location_grid(features)
        points_per_level = grid.points.split(grid.num_per_level)
        return [
            fcos_inference_single_image(
                [x[i] for x in logits],
                [x[i] for x in box_dists],
                [x[i, :, 0] for x in centerness],
                points_per_level,
                self.strides,
                image_size,
                **self.postprocess_arguments(),
            )
            for i, image_size in enumerate(images.image_sizes)
        ]

    def postprocess_arguments(self) -> Dict:
        """This model's inference parameters, as :func:`detect_single_image` takes them."""
        return dict(
            norm_reg_targets=self.norm_reg_targets,
            score_thresh=self.score_thresh,
            thresh_with_centerness=self.thresh_with_centerness,
            topk_candidates=self.topk_candidates,
            nms_thresh=self.nms_thresh,
            detections_per_image=self.detections_per_image,
            with_quality=self.successors.with_quality,
            **self.successors.nms_arguments(),
        )

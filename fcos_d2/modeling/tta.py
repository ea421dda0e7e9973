"""Test-time augmentation for FCOS: several scales and flips, merged by class-aware NMS.

Detectron2's ``TEST.AUG`` keys (``ENABLED``, ``MIN_SIZES``, ``MAX_SIZE``, ``FLIP``) choose
the augmentations, made by Detectron2's ``DatasetMapperTTA``, as its R-CNN TTA does. Each
augmented image goes through the model; its boxes are mapped back to the original image
by the inverse of its transforms, and all detections are merged with the model's own
post-processing (clip, drop empty, class-aware NMS at NMS_THRESH_TEST, the best
DETECTIONS_PER_IMAGE).

Merging is by NMS, not by the box voting the official FCOS code offers: NMS keeps
every kept box an actual prediction with its own score, is what Detectron2's R-CNN TTA
does, and leaves the one-scale, no-flip case the plain model (bit for bit at the image's
own size; rescaled boxes round differently in the last bits, as the inverse resize is
computed in float64 and Detectron2's ``detector_postprocess`` in float32).
"""

from typing import Dict, List

import torch
from detectron2.modeling import DatasetMapperTTA
from detectron2.structures import Boxes, Instances
from torch import nn

from .postprocess import clip_nms_cap


class FCOSWithTTA(nn.Module):
    """An FCOS model with test-time augmentation; called like the model in eval mode."""

    def __init__(self, cfg, model: nn.Module, tta_mapper=None, batch_size: int = 3):
        """
        Args:
            cfg: the config (``TEST.AUG``).
            model: a built FCOS (possibly wrapped in DistributedDataParallel).
            tta_mapper: makes the augmented inputs; Detectron2's ``DatasetMapperTTA(cfg)``.
            batch_size: augmented images of one size per forward.
        """
        super().__init__()
        self.model = (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        )
        self.tta_mapper = tta_mapper or DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    def _same_size_batches(self, augmented: List[Dict]) -> List[List[int]]:
        """Indices of the augmented inputs in batches of one image size (a scale and its
        flip), at most ``batch_size`` each. Mixing sizes would pad the smaller images, and a
        GroupNorm head's statistics would then depend on which images share the batch."""
        by_size: Dict[tuple, List[int]] = {}
        for j, x in enumerate(augmented):
            by_size.setdefault(tuple(x["image"].shape[-2:]), []).append(j)
        return [
            indices[start : start + self.batch_size]
            for indices in by_size.values()
            for start in range(0, len(indices), self.batch_size)
        ]

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        return [{"instances": self.inference_one_image(x)} for x in batched_inputs]

    def inference_one_image(self, input: Dict) -> Instances:
        """Detections of one input (with "image", "height", "width") in original pixels."""
        original_size = (input["height"], input["width"])
        augmented = self.tta_mapper(input)
        transforms = [x.pop("transforms") for x in augmented]
        for x in augmented:  # detections in the augmented image's pixels
            x.pop("height", None)
            x.pop("width", None)
        boxes, scores, classes = [], [], []
        for batch in self._same_size_batches(augmented):
            outputs = self.model([augmented[j] for j in batch])
            for output, transform in zip(outputs, [transforms[j] for j in batch]):
                instances = output["instances"]
                back = transform.inverse().apply_box(instances.pred_boxes.tensor.cpu().numpy())
                boxes.append(torch.as_tensor(back, dtype=torch.float32).reshape(-1, 4))
                scores.append(instances.scores.cpu())
                classes.append(instances.pred_classes.cpu())
        merged = clip_nms_cap(
            torch.cat(boxes),
            torch.cat(scores),
            torch.cat(classes),
            original_size,
            self.model.nms_thresh,
            self.model.detections_per_image,
            **self.model.successors.nms_arguments(),
        )
        result = Instances(original_size)
        result.pred_boxes, result.scores, result.pred_classes = (
            Boxes(merged[0]),
            merged[1],
            merged[2],
        )
        return result

"""Detectron2's DatasetMapper, keeping crowd boxes so FCOS can ignore them, and reading
16-bit images right."""

import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.structures import Instances

from .image_io import eight_bit_reading

_CROWD_KEYS = ("bbox", "bbox_mode", "category_id")


class EightBitDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper`, with 16-bit images scaled to 8 bits
    (:mod:`fcos_d2.data.image_io`) instead of clipped to white."""

    def __call__(self, dataset_dict):
        with eight_bit_reading():
            return super().__call__(dataset_dict)


class CrowdAwareDatasetMapper(EightBitDatasetMapper):
    """Like :class:`DatasetMapper`, but crowd annotations (``iscrowd=1``) are kept.

    Detectron2's mapper drops them, which makes the locations they cover negatives by
    accident. Here they are appended to ``instances`` (boxes and classes only) and
    flagged by a bool field ``gt_is_crowd``; FCOS ignores the locations they cover.
    16-bit images are scaled to 8 bits, as in :class:`EightBitDatasetMapper`.
    """

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        annotations = dataset_dict["annotations"]
        crowd = [obj for obj in annotations if obj.get("iscrowd", 0)]
        dataset_dict["annotations"] = [obj for obj in annotations if not obj.get("iscrowd", 0)]
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        instances = dataset_dict["instances"]
        instances.gt_is_crowd = torch.zeros(len(instances), dtype=torch.bool)
        if not crowd:
            return
        if instances.has("gt_masks"):
            raise ValueError(
                "crowd boxes cannot be kept beside instance masks; "
                "use Detectron2's DatasetMapper for models with masks"
            )
        crowd_annotations = [
            utils.transform_instance_annotations(
                {key: obj[key] for key in _CROWD_KEYS}, transforms, image_shape
            )
            for obj in crowd
        ]
        crowd_instances = utils.filter_empty_instances(
            utils.annotations_to_instances(crowd_annotations, image_shape)
        )
        crowd_instances.gt_is_crowd = torch.ones(len(crowd_instances), dtype=torch.bool)
        dataset_dict["instances"] = Instances.cat([instances, crowd_instances])

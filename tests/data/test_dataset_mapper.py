"""The dataset mappers (fcos_d2.data.dataset_mapper): crowd boxes reach the model and
are ignored by the loss, 16-bit images are read right, a missing or corrupt image is
named."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import QUICK_CONFIG, load_config
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from fcos_d2.config import setup_cfg
from fcos_d2.data.dataset_mapper import CrowdAwareDatasetMapper
from fcos_d2.data.datasets import generate_shapes_split
from fcos_d2.engine import Trainer
from fcos_d2.modeling import targets as targets_module
from fcos_d2.modeling.losses import fcos_losses
from fcos_d2.modeling.targets import IGNORE

# Crowd annotations.
CROWD_RECORD = {
    "file_name": "unused.png",
    "height": 64,
    "width": 64,
    "annotations": [
        # A real box and a crowd region that overlaps it.
        {"bbox": [2, 2, 32, 32], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
        {"bbox": [16, 16, 40, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
    ],
}


def test_crowd_annotations_are_kept_by_the_mapper_and_ignored_by_the_loss(monkeypatch):
    from fcos_d2.data import image_io

    cfg = load_config()
    mapper = CrowdAwareDatasetMapper(cfg, is_train=True)
    mapper.augmentations.augs = []  # no random flip here (the next test flips)
    # The mapper reads the file; give it the image directly.
    monkeypatch.setattr(
        image_io, "read_image", lambda file_name, format=None: np.zeros((64, 64, 3), np.uint8)
    )
    instances = mapper(copy.deepcopy(CROWD_RECORD))["instances"]
    assert instances.gt_is_crowd.tolist() == [False, True]
    assert instances.gt_classes.tolist() == [0, 1]

    model = build_model(cfg)
    grid = model.location_grid(
        [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    )
    labels, box_targets = targets_module.assign_targets(grid, [instances], 4, 1.5)
    x, y = grid.points[:, 0], grid.points[:, 1]
    in_crowd = (x > 16) & (x < 56) & (y > 16) & (y < 56)
    positive = labels[0] == 0
    # Where the crowd region overlaps the real box, the real box's positives stay positive.
    assert (positive & in_crowd).any()
    # Every other location of the crowd region is ignored, never a negative nor class 1.
    assert (labels[0][in_crowd & ~positive] == IGNORE).all() and (in_crowd & ~positive).any()
    assert not (labels[0] == 1).any()

    # The classification loss does not see the ignored logits: changing them changes nothing,
    # while changing a negative location's logits does.
    num_locations = len(labels[0])
    logits = torch.randn(1, num_locations, 4)
    box_dists = torch.rand(1, num_locations, 4) + 0.5
    centerness = torch.randn(1, num_locations)
    loss = lambda z: fcos_losses(z, box_dists, centerness, labels, box_targets, num_classes=4)  # noqa: E731
    ignored = labels[0] == IGNORE
    moved = logits.clone()
    moved[0, ignored] += 5.0
    assert loss(moved)["loss_fcos_cls"] == loss(logits)["loss_fcos_cls"]
    negative = labels[0] == 4
    control = logits.clone()
    control[0, negative] += 5.0
    assert loss(control)["loss_fcos_cls"] > loss(logits)["loss_fcos_cls"]


@pytest.mark.slow
def test_crowd_boxes_reach_the_model_through_the_trainer_loader_with_flips(tmp_path):
    """Trainer.build_train_loader (FCOS) with its random horizontal flip keeps the crowd box,
    flipped with the image."""
    json_path = generate_shapes_split(str(tmp_path), "crowdflip", 2, 64, seed=4, progress=False)
    content = json.loads(open(json_path).read())
    content["annotations"] = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [2, 2, 20, 20],
            "area": 400,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 2,
            "bbox": [30, 10, 20, 40],
            "area": 800,
            "iscrowd": 1,
        },
    ]
    content["images"] = content["images"][:1]
    (tmp_path / "crowd.json").write_text(json.dumps(content))
    from fcos_d2.data.coco_dataset import register_coco_dataset

    register_coco_dataset(
        "reliability_crowd_flip", str(tmp_path / "crowd.json"), str(tmp_path / "crowdflip")
    )
    cfg = setup_cfg(
        str(QUICK_CONFIG),
        [
            "DATASETS.TRAIN",
            "('reliability_crowd_flip',)",
            "SOLVER.IMS_PER_BATCH",
            "1",
            "INPUT.RANDOM_FLIP",
            "horizontal",
        ],
    )
    crowd_boxes = set()
    loader = iter(Trainer.build_train_loader(cfg))
    for _ in range(20):
        instances = next(loader)[0]["instances"]
        assert instances.gt_is_crowd.tolist() == [False, True]
        crowd_boxes.add(tuple(instances.gt_boxes.tensor[1].tolist()))
    # As given, or mirrored about the vertical axis of the 64-px image: both seen in 20 draws.
    assert crowd_boxes == {(30.0, 10.0, 50.0, 50.0), (14.0, 10.0, 34.0, 50.0)}


# A missing or corrupt image file in training (demo: see test_demo.py).
@pytest.mark.parametrize("content", [None, b"garbage, not a PNG"])
def test_missing_or_corrupt_training_image_is_named(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    mapper = CrowdAwareDatasetMapper(load_config(), is_train=True)
    record = {"file_name": str(path), "height": 8, "width": 8, "annotations": []}
    with pytest.raises(Exception, match="broken.png"):
        mapper(record)

"""Shared helpers for the tests: configs and tiny hand-made inputs."""

import os
import sys
from pathlib import Path
from typing import Sequence

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import Boxes, Instances

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICK_CONFIG = CONFIGS / "quick_schedules" / "FCOS_R_18_quick.yaml"

sys.path[:0] = [str(REPO), str(REPO / "tools")]  # train_net.py, tools/

import fcos_d2  # noqa: E402  (registers FCOS)


def load_config(path: os.PathLike = QUICK_CONFIG, opts: Sequence[str] = ()) -> CfgNode:
    """A Detectron2 config with the FCOS keys, merged from ``path`` and ``opts``, on CPU."""
    cfg = get_cfg()
    fcos_d2.add_fcos_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def make_instances(image_size, boxes, classes, crowd=None) -> Instances:
    """Ground-truth Instances from plain lists."""
    instances = Instances(image_size)
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if crowd is not None:
        instances.gt_is_crowd = torch.tensor(crowd, dtype=torch.bool)
    return instances


def train_step(model: torch.nn.Module, batch: list) -> dict:
    """One training forward and backward; returns the losses."""
    model.train()
    losses = model(batch)
    sum(losses.values()).backward()
    return losses


def finite(losses: dict) -> bool:
    """Whether every loss is finite."""
    return all(torch.isfinite(v) for v in losses.values())


@torch.no_grad()
def randomize_frozen_bn(model: torch.nn.Module) -> None:
    """Give every frozen BatchNorm random statistics and affine terms (not 0 / 1)."""
    for name, buffer in model.named_buffers():
        if "norm.running_var" in name:
            buffer.uniform_(0.5, 2.0)
        elif "norm.running_mean" in name or "norm.bias" in name:
            buffer.normal_(0, 0.2)
        elif "norm.weight" in name:
            buffer.uniform_(0.5, 1.5)


def pytest_collection_modifyitems(config, items):
    """Leave out the tests marked ``cuda`` unless the -m expression names them."""
    if "cuda" in config.getoption("markexpr"):
        return
    deselected = [item for item in items if item.get_closest_marker("cuda")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield

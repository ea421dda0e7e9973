"""ATSS's adaptive training sample selection (Zhang et al., 2020) on FCOS's locations.

The anchor-free form of ATSS: each location carries one square box of side
``anchor_scale * stride`` centred on it. For each ground-truth box, the ``topk`` locations
of each level whose centres are closest to the box's centre are its candidates; its IoU
threshold is the mean plus the standard deviation (unbiased, as ATSS's code) of the
candidates' IoUs with it; a candidate is positive when its IoU reaches the threshold and
its centre lies inside the box (more than 0.01 px from every side, as ATSS's code). A
location positive for several boxes goes to the one it overlaps most (the lowest index on
equal IoUs). No size ranges: the statistics choose the levels.

Naming as in ``targets``: R locations, M ground-truth boxes, L levels, c boxes of a chunk.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .targets import (
    MAX_PAIRS_PER_CHUNK,
    LocationGrid,
    _distances_to_sides,
    background_and_crowd,
)

INSIDE_MARGIN = 0.01  # px: a candidate's centre must be this far inside the box


def location_anchors(grid: LocationGrid, anchor_scale: float) -> Tensor:
    """(R, 4) the square box of side ``anchor_scale * stride`` centred on each location."""
    half = (anchor_scale * grid.strides / 2)[:, None]  # (R, 1)
    return torch.cat([grid.points - half, grid.points + half], dim=1)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes paired elementwise: (..., 4) and (..., 4) (x0, y0, x1, y1) -> (...)."""
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(dim=-1)
    return intersection / (area_a + area_b - intersection).clamp(min=1e-9)


def _candidates(grid: LocationGrid, centers: Tensor, topk: int) -> Tensor:
    """(L * k, c) indices of each box's ``topk`` closest locations on every level."""
    indices, start = [], 0
    for count in grid.num_per_level:  # a loop over the levels, not over boxes
        points = grid.points[start : start + count]  # (R_l, 2)
        distances = torch.cdist(points, centers)  # (R_l, c)
        k = min(topk, count)
        indices.append(distances.topk(k, dim=0, largest=False).indices + start)  # (k, c)
        start += count
    return torch.cat(indices)


def _select_chunk(
    grid: LocationGrid, anchors: Tensor, boxes: Tensor, topk: int
) -> Tuple[Tensor, Tensor]:
    """ATSS for a chunk of (c, 4) boxes: each location's best box among those it is positive
    for.

    Returns:
        the IoU (R,) of each location with that box (-1: positive for none of these
        boxes) and the box's index in the chunk (R,).
    """
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # (c, 2)
    candidates = _candidates(grid, centers, topk)  # (L * k, c)
    ious = paired_iou(anchors[candidates], boxes[None].expand(len(candidates), -1, -1))
    # One candidate in all (a one-location pyramid) has no spread: its IoU is the threshold.
    threshold = ious.mean(dim=0) + ious.std(dim=0).nan_to_num(0.0)  # (c,)
    points = grid.points[candidates]  # (L * k, c, 2)
    sides = torch.cat([points - boxes[None, :, :2], boxes[None, :, 2:] - points], dim=2)
    inside = sides.min(dim=2).values > INSIDE_MARGIN  # (L * k, c)
    positive = (ious >= threshold[None]) & inside
    dense = torch.full(
        (len(grid.points), len(boxes)), -1.0, dtype=ious.dtype, device=ious.device
    )  # (R, c)
    dense.scatter_(0, candidates, torch.where(positive, ious, torch.full_like(ious, -1.0)))
    return dense.max(dim=1)


def atss_assign_single_image(
    grid: LocationGrid,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    num_classes: int,
    anchor_scale: float = 8.0,
    topk: int = 9,
    gt_is_crowd: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Assign one image's boxes to the locations of the pyramid by ATSS (module docstring).

    Same arguments and results as ``targets.assign_targets_single_image`` (crowd boxes
    handled alike: locations inside one that are positive for no other box are ignored),
    with ``anchor_scale`` and ``topk`` in place of the size ranges and centre sampling.

    Returns:
        labels (R,) in [0, K] with K for background and IGNORE for ignored locations;
        box_targets (R, 4) distances (l, t, r, b) in pixels, meaningful where positive.
    """
    num_locations = len(grid.points)
    labels, box_targets, gt_boxes, gt_classes = background_and_crowd(
        grid, gt_boxes, gt_classes, num_classes, gt_is_crowd
    )
    if len(gt_boxes) == 0:
        return labels, box_targets

    anchors = location_anchors(grid, anchor_scale)  # (R, 4)
    best_iou = torch.full((num_locations,), -1.0, device=labels.device)
    matched = torch.zeros(num_locations, dtype=torch.int64, device=labels.device)
    chunk = max(1, MAX_PAIRS_PER_CHUNK // num_locations)  # boxes per chunk
    for start in range(0, len(gt_boxes), chunk):
        chunk_iou, chunk_match = _select_chunk(grid, anchors, gt_boxes[start : start + chunk], topk)
        better = chunk_iou > best_iou  # strict: an earlier box keeps an equal IoU
        best_iou = torch.where(better, chunk_iou, best_iou)
        matched = torch.where(better, chunk_match + start, matched)
    positive = best_iou >= 0
    labels = torch.where(positive, gt_classes[matched], labels)
    box_targets = _distances_to_sides(grid.points, gt_boxes[matched])
    return labels, box_targets

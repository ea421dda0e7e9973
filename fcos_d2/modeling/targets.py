"""Locations on the feature pyramid and the assignment of ground-truth boxes to them.

Naming: N images, R locations over all levels, M ground-truth boxes of one image,
K foreground classes. Labels use K for background and IGNORE (-1) for locations that
count neither as positive nor negative (inside a crowd box).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor

IGNORE = -1

# Location x box pairs examined at once; bounds the working memory of assignment
# (about 40 bytes a pair) whatever the number of boxes.
MAX_PAIRS_PER_CHUNK = 1 << 20


@dataclass
class LocationGrid:
    """Every location of the pyramid, levels concatenated from the finest."""

    points: Tensor  # (R, 2) x, y in input pixels
    strides: Tensor  # (R,) stride of each location's level
    size_ranges: Tensor  # (R, 2) [lo, hi] of max(l, t, r, b) a location's level accepts
    num_per_level: List[int]  # locations on each level; sums to R


def make_location_grid(
    feature_sizes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    sizes_of_interest: Sequence[float],
    offset: float = 0.5,
    device: torch.device = torch.device("cpu"),
) -> LocationGrid:
    """Build the locations of all pyramid levels.

    Args:
        feature_sizes: (H, W) of each level, finest first.
        strides: stride of each level.
        sizes_of_interest: the L - 1 boundaries m_2..m_L between consecutive levels.
        offset: location (x, y) of a level is at ((x + offset) * s, (y + offset) * s).
        device: where to build the tensors.
    """
    if not (len(feature_sizes) == len(strides) == len(sizes_of_interest) + 1):
        raise ValueError(
            f"{len(feature_sizes)} levels need {len(feature_sizes)} strides and "
            f"{len(feature_sizes) - 1} sizes of interest; got {list(strides)} and "
            f"{list(sizes_of_interest)}"
        )
    bounds = [0.0, *map(float, sizes_of_interest), float("inf")]
    points, level_strides, ranges, counts = [], [], [], []
    for level, ((height, width), stride) in enumerate(zip(feature_sizes, strides)):
        xs = (torch.arange(width, dtype=torch.float32, device=device) + offset) * stride
        ys = (torch.arange(height, dtype=torch.float32, device=device) + offset) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
        count = height * width
        level_strides.append(torch.full((count,), float(stride), device=device))
        ranges.append(
            torch.tensor([bounds[level], bounds[level + 1]], device=device).expand(count, 2)
        )
        counts.append(count)
    return LocationGrid(
        points=torch.cat(points),
        strides=torch.cat(level_strides),
        size_ranges=torch.cat(ranges),
        num_per_level=counts,
    )


def _distances_to_sides(points: Tensor, boxes: Tensor) -> Tensor:
    """(l, t, r, b) from each point to its own box: (R, 2), (R, 4) -> (R, 4)."""
    return torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], dim=1)


def _pairwise_sides(points: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """l, t, r, b from every point to every box, each (R, M).

    Four separate (R, M) tensors rather than one (R, M, 4): reductions over a
    trailing dimension of 4 are several times slower than elementwise min / max.
    """
    x, y = points[:, 0:1], points[:, 1:2]  # (R, 1)
    return x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y


def _match_chunk(
    points: Tensor,
    strides: Tensor,
    size_ranges: Tensor,
    boxes: Tensor,
    areas: Tensor,
    center_sampling_radius: float,
) -> Tuple[Tensor, Tensor]:
    """Match a chunk of locations to boxes.

    Returns:
        positive (r,) bool and the matched box index (r,), meaningful where positive.
    """
    left, top, right, bottom = _pairwise_sides(points, boxes)  # each (r, M)
    # Strictly inside the box.
    qualifies = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
    if center_sampling_radius > 0:
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # (M, 2)
        offset = torch.maximum(
            (points[:, 0:1] - centers[:, 0]).abs(), (points[:, 1:2] - centers[:, 1]).abs()
        )  # (r, M)
        qualifies &= offset < strides[:, None] * center_sampling_radius
    max_dist = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))  # (r, M)
    qualifies &= (max_dist >= size_ranges[:, :1]) & (max_dist <= size_ranges[:, 1:])
    # The smallest qualifying box wins; min() takes the first index on equal areas.
    candidate_areas = torch.where(
        qualifies, areas[None, :], torch.full_like(max_dist, float("inf"))
    )
    min_area, matched = candidate_areas.min(dim=1)  # (r,)
    return torch.isfinite(min_area), matched


def _inside_any(points: Tensor, boxes: Tensor) -> Tensor:
    """(R,) whether each point lies strictly inside at least one box."""
    inside = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    if len(boxes) == 0:
        return inside
    chunk = max(1, MAX_PAIRS_PER_CHUNK // len(boxes))
    for start in range(0, len(points), chunk):
        sides = _pairwise_sides(points[start : start + chunk], boxes)
        nearest = torch.minimum(
            torch.minimum(sides[0], sides[1]), torch.minimum(sides[2], sides[3])
        )
        inside[start : start + chunk] = (nearest > 0).any(dim=1)
    return inside


def background_and_crowd(
    grid: LocationGrid,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    num_classes: int,
    gt_is_crowd: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where every assignment starts: all locations background, those inside a crowd box
    ignored, and the boxes to assign (the non-crowd ones, in float32).

    Returns:
        labels (R,), zero box_targets (R, 4), the boxes (M', 4) and their classes (M',).
    """
    num_locations = len(grid.points)
    device = grid.points.device
    labels = torch.full((num_locations,), num_classes, dtype=torch.int64, device=device)
    box_targets = torch.zeros((num_locations, 4), dtype=torch.float32, device=device)
    gt_boxes = gt_boxes.to(torch.float32)
    if gt_is_crowd is not None and bool(gt_is_crowd.any()):
        crowd_boxes = gt_boxes[gt_is_crowd]
        gt_boxes, gt_classes = gt_boxes[~gt_is_crowd], gt_classes[~gt_is_crowd]
        labels[_inside_any(grid.points, crowd_boxes)] = IGNORE
    return labels, box_targets, gt_boxes, gt_classes


def assign_targets_single_image(
    grid: LocationGrid,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    num_classes: int,
    center_sampling_radius: float = 1.5,
    gt_is_crowd: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Assign one image's boxes to the locations of the pyramid.

    A location is positive for a box when it lies inside the box (and, with centre
    sampling, within ``radius * stride`` of its centre) and the box's largest distance
    max(l, t, r, b) falls in the location's size range; among several such boxes the
    smallest area wins, the lowest index on equal areas. Locations inside a crowd box
    that are not positive for another box are ignored.

    Args:
        grid: the pyramid's locations.
        gt_boxes: (M, 4) boxes as x0, y0, x1, y1.
        gt_classes: (M,) class of each box in [0, K).
        num_classes: K.
        center_sampling_radius: in units of the stride; 0 turns centre sampling off.
        gt_is_crowd: (M,) bool, boxes that are crowd regions; None means none are.

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

    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # (M,)
    chunk = max(1, MAX_PAIRS_PER_CHUNK // len(gt_boxes))
    for start in range(0, num_locations, chunk):
        rows = slice(start, start + chunk)
        positive, matched = _match_chunk(
            grid.points[rows],
            grid.strides[rows],
            grid.size_ranges[rows],
            gt_boxes,
            areas,
            center_sampling_radius,
        )
        labels[rows] = torch.where(positive, gt_classes[matched], labels[rows])
        box_targets[rows] = _distances_to_sides(grid.points[rows], gt_boxes[matched])
    return labels, box_targets


def sanitize_gt_instances(instances: Instances, num_classes: int) -> Instances:
    """Clip boxes to the image, drop those left empty, and check the class ids.

    Detectron2's data loader already clips and drops; this makes the model itself safe
    for Instances built by other code.

    Raises:
        ValueError: naming a class id outside [0, num_classes).
    """
    boxes = instances.gt_boxes.clone()
    boxes.clip(instances.image_size)
    keep = boxes.nonempty()
    instances = instances[keep]
    instances.gt_boxes = boxes[keep]
    classes = instances.gt_classes
    if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        bad = sorted({c for c in classes.tolist() if not 0 <= c < num_classes})
        raise ValueError(
            f"ground-truth class ids {bad} are outside [0, {num_classes}): "
            f"check MODEL.FCOS.NUM_CLASSES and the dataset's categories"
        )
    return instances


ASSIGNERS = ("fcos", "atss")


def assign_targets(
    grid: LocationGrid,
    gt_instances: List[Instances],
    num_classes: int,
    center_sampling_radius: float = 1.5,
    norm_reg_targets: bool = True,
    assigner: str = "fcos",
    atss_anchor_scale: float = 8.0,
    atss_topk: int = 9,
) -> Tuple[Tensor, Tensor]:
    """Assign targets for a batch; see :func:`assign_targets_single_image` (``assigner``
    "fcos") and ``atss.atss_assign_single_image`` ("atss", with ``atss_anchor_scale`` and
    ``atss_topk``; the size ranges and centre sampling play no part).

    Crowd boxes are read from the optional ``gt_is_crowd`` field of each Instances.

    Returns:
        labels (N, R) and box_targets (N, R, 4), the latter divided by each location's
        stride when ``norm_reg_targets``.
    """
    from .atss import atss_assign_single_image  # atss builds on this module

    if assigner not in ASSIGNERS:
        raise ValueError(f"MODEL.FCOS.ASSIGNER must be one of {ASSIGNERS}, got {assigner!r}")
    labels, box_targets = [], []
    for instances in gt_instances:
        crowd = instances.gt_is_crowd if instances.has("gt_is_crowd") else None
        boxes, classes = instances.gt_boxes.tensor, instances.gt_classes
        if assigner == "atss":
            image_labels, image_targets = atss_assign_single_image(
                grid, boxes, classes, num_classes, atss_anchor_scale, atss_topk, crowd
            )
        else:
            image_labels, image_targets = assign_targets_single_image(
                grid, boxes, classes, num_classes, center_sampling_radius, crowd
            )
        labels.append(image_labels)
        box_targets.append(image_targets)
    box_targets_batch = torch.stack(box_targets)  # (N, R, 4)
    if norm_reg_targets:
        box_targets_batch = box_targets_batch / grid.strides[None, :, None]
    return torch.stack(labels), box_targets_batch


def centerness_targets(box_targets: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (..., 4) distances (l, t, r, b).

    Only meaningful for positive locations, whose distances are all > 0.
    """
    left_right = box_targets[..., 0::2]  # (..., 2) l, r
    top_bottom = box_targets[..., 1::2]  # (..., 2) t, b
    ratio = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * (
        top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values
    )
    return torch.sqrt(ratio)

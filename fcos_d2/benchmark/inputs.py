"""One set of random images and ground-truth boxes, converted to each model's input format.

Naming: an H x W image, M boxes.
"""

from typing import List, NamedTuple, Sequence

import torch
from detectron2.structures import Boxes, Instances, PolygonMasks
from torch import Tensor

NUM_CLASSES = 80


class Sample(NamedTuple):
    """One image and its ground truth, model-independent."""

    image: Tensor  # (3, H, W) float32 in [0, 255]
    boxes: Tensor  # (M, 4) x0, y0, x1, y1 in pixels
    classes: Tensor  # (M,) int64 in [0, 80)


def random_boxes(generator: torch.Generator, num_boxes: int, height: int, width: int) -> Tensor:
    """(M, 4) boxes inside the image, sides log-uniform from small to most of the image."""
    short_side = min(height, width)
    low, high = min(16.0, short_side / 4), 0.8 * short_side
    log_sides = torch.empty(num_boxes, 2).uniform_(
        float(torch.tensor(low).log()), float(torch.tensor(high).log()), generator=generator
    )
    sides = log_sides.exp()  # (M, 2) w, h
    x0 = torch.rand(num_boxes, generator=generator) * (width - sides[:, 0])  # (M,)
    y0 = torch.rand(num_boxes, generator=generator) * (height - sides[:, 1])  # (M,)
    return torch.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], dim=1)


def make_samples(
    generator: torch.Generator, num_images: int, height: int, width: int, num_boxes: int
) -> List[Sample]:
    """Random 0-255 images with ``num_boxes`` random boxes of random classes each."""
    samples = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        boxes = random_boxes(generator, num_boxes, height, width)
        classes = torch.randint(0, NUM_CLASSES, (num_boxes,), generator=generator)
        samples.append(Sample(image, boxes, classes))
    return samples


def rectangle_masks(boxes: Tensor) -> PolygonMasks:
    """One rectangular polygon per box of ``boxes`` (M, 4), for Mask R-CNN's mask loss."""
    return PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()])


def to_detectron2(
    samples: Sequence[Sample],
    device: torch.device,
    with_masks: bool,
    num_classes: int = NUM_CLASSES,
) -> tuple:
    """Arguments of a Detectron2 model: ([{"image", "height", "width", "instances"}],).

    Class ids are taken modulo ``num_classes`` for a model with fewer than 80 classes.
    """
    inputs = []
    for sample in samples:
        height, width = sample.image.shape[1:]
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(sample.boxes.to(device))
        instances.gt_classes = (sample.classes % num_classes).to(device)
        if with_masks:
            instances.gt_masks = rectangle_masks(sample.boxes)
        inputs.append(
            {
                "image": sample.image.to(device),
                "height": height,
                "width": width,
                "instances": instances,
            }
        )
    return (inputs,)


def to_torchvision(samples: Sequence[Sample], device: torch.device, with_targets: bool) -> tuple:
    """Arguments of a torchvision detector: (images in [0, 1], targets) or (images,)."""
    images = [(sample.image / 255.0).to(device) for sample in samples]  # (3, H, W) each
    if not with_targets:
        return (images,)
    targets = [
        {"boxes": sample.boxes.to(device), "labels": (sample.classes + 1).to(device)}
        for sample in samples
    ]
    return (images, targets)

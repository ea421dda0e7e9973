"""Helpers of the parity tests: fcos_d2 against another implementation on the same inputs.

A reference's detections of one image are a dict of "boxes" (D, 4), "scores" (D,) and
"labels" (D,) (0-based classes); ours are Detectron2 ``Instances``.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor, nn

SCORE_TOL = 1e-4

BOX_TOL = 1e-2  # pixels


def make_images(sizes: Sequence[Tuple[int, int]], seed: int = 0) -> List[Tensor]:
    """0-255 float images (3, H, W) of these (H, W) ``sizes``: smooth noise, so that the
    features vary from place to place like a picture's."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for height, width in sizes:
        coarse = torch.rand(1, 3, height // 16, width // 16, generator=g)
        smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
        fine = torch.rand(3, height, width, generator=g)
        images.append((0.8 * smooth + 0.2 * fine) * 255)  # (3, H, W)
    return images


def match_detections(reference: Dict[str, Tensor], ours: Instances) -> Tensor:
    """Pairs (reference index, our index), reference best score first.

    Each reference detection gets the unpaired detection of ours with the same class, a
    score within ``SCORE_TOL`` and the closest box. Near-equal scores may be ordered
    differently by the two models; this pairing does not depend on that order.

    Raises:
        AssertionError: when the counts differ or a detection has no counterpart.
    """
    assert len(reference["scores"]) == len(ours), (
        f"the reference found {len(reference['scores'])} detections, fcos_d2 {len(ours)}"
    )
    boxes = ours.pred_boxes.tensor  # (D, 4)
    free = torch.ones(len(ours), dtype=torch.bool)
    matches = []
    for i in reference["scores"].argsort(descending=True).tolist():
        candidates = (
            free
            & (ours.pred_classes == reference["labels"][i])
            & ((ours.scores - reference["scores"][i]).abs() <= SCORE_TOL)
        )
        assert candidates.any(), (
            f"no fcos_d2 detection matches the reference's class {reference['labels'][i]} "
            f"score {reference['scores'][i]:.6f} box {reference['boxes'][i].tolist()}"
        )
        distance = (boxes - reference["boxes"][i]).abs().amax(dim=1)  # (D,)
        j = int(torch.where(candidates, distance, torch.inf).argmin())
        free[j] = False
        matches.append((i, j))
    return torch.tensor(matches, dtype=torch.long).reshape(-1, 2)  # (D, 2) pairs (i, j)


def detection_differences(reference: Dict[str, Tensor], ours: Instances) -> Tuple[float, float]:
    """Max |score difference| and max |box coordinate difference| over matched pairs."""
    pairs = match_detections(reference, ours)
    if len(pairs) == 0:
        return 0.0, 0.0
    i, j = pairs[:, 0], pairs[:, 1]
    score = (reference["scores"][i] - ours.scores[j]).abs().max().item()
    box = (reference["boxes"][i] - ours.pred_boxes.tensor[j]).abs().max().item()
    return score, box


def assert_same_detections(reference: List[Dict[str, Tensor]], ours: List[Instances]) -> None:
    for image_index, (ref, mine) in enumerate(zip(reference, ours)):
        score, box = detection_differences(ref, mine)
        assert score <= SCORE_TOL, f"image {image_index}: scores differ by {score}"
        assert box <= BOX_TOL, f"image {image_index}: boxes differ by {box} px"

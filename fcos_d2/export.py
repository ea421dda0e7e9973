"""FCOS inference as a tensor-in / tensor-out module, for ``torch.export`` and ONNX.

``FCOSExportModule(model)`` maps one image (3, H, W) to its detections (boxes, scores,
classes) with the model's own modules and the candidate selection and decoding of
:mod:`fcos_d2.modeling.postprocess`. It exports with ``torch.export.export`` (see
:func:`export_program`) and ``torch.onnx.export(..., dynamo=True)``, for a fixed input
size or, with :func:`dynamic_image_shapes`, for any size. ``tools/export.py`` does both
from a config and checks the result against the eager model.

Naming: an H x W input image, R_l locations on level l, K classes, C candidates,
D detections.
"""

from typing import Dict, NamedTuple, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor, nn
from torch.nn import functional as F

from .modeling.meta_arch import FCOS
from .modeling.postprocess import detect_single_image
from .modeling.targets import make_location_grid

# An exported program agrees with the eager model within these, after sorting by score
# (near-ties, within SCORE_TOLERANCE, paired by box: see compare_detections).
SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE = 1e-2  # input pixels


class FCOSExportModule(nn.Module):
    """Detections of one image from a built :class:`FCOS`, with tensors only.

    Runs the model's normalisation, backbone and head, then the post-processing the eager
    model runs, :func:`~fcos_d2.modeling.postprocess.detect_single_image`: tensors only, since
    ``Boxes.clip`` asserts on tensor values and ``Instances`` checks lengths, which an
    export cannot trace when the number of boxes depends on the data.

    The model's channels-last layout and folded frozen BatchNorm export as they are.
    """

    def __init__(self, model: FCOS):
        """
        Args:
            model: a built FCOS, in eval mode; its modules are shared, not copied.
        """
        super().__init__()
        if not isinstance(model, FCOS):
            raise TypeError(
                f"FCOSExportModule needs an fcos_d2 FCOS model, got {type(model).__name__}"
            )
        if model.successors.nms_type != "hard":
            # Soft-NMS picks boxes one at a time, as many as the data has: a loop whose
            # length an exported graph cannot hold.
            raise ValueError(
                f"MODEL.FCOS.NMS_TYPE {model.successors.nms_type} does not export (its loop "
                "runs once per detection kept); export with MODEL.FCOS.NMS_TYPE hard"
            )
        if model.inference_dtype != "float32":
            raise ValueError(
                f"MODEL.FCOS.INFERENCE_DTYPE {model.inference_dtype} does not export (the "
                "export is checked against float32 detections); export with "
                "MODEL.FCOS.INFERENCE_DTYPE float32"
            )
        self.model = model

    def preprocess(self, image: Tensor) -> Tensor:
        """``FCOS.preprocess_image`` of one image: normalised and padded, (1, 3, H', W').

        Detectron2's ``ImageList.from_tensors`` computes the padding in tensors and reads
        it back, which an export sees as a size that depends on data; here it is computed
        from the (possibly symbolic) sizes.
        """
        model = self.model
        height, width = image.shape[-2:]
        constraints = model.backbone.padding_constraints
        divisibility = constraints.get("size_divisibility", model.backbone.size_divisibility)
        square_size = constraints.get("square_size", 0)
        padded_height, padded_width = (
            (square_size, square_size) if square_size > 0 else (height, width)
        )
        if divisibility > 1:
            padded_height = (padded_height + divisibility - 1) // divisibility * divisibility
            padded_width = (padded_width + divisibility - 1) // divisibility * divisibility
        x = (image.to(model.pixel_mean) - model.pixel_mean) / model.pixel_std  # (3, H, W)
        x = F.pad(x, [0, padded_width - width, 0, padded_height - height])[None]
        if model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            image: (3, H, W), 0-255, in the model's ``INPUT.FORMAT`` channel order.

        Returns:
            boxes (D, 4) as (x0, y0, x1, y1) in input pixels, scores (D,), and classes
            (D,) int64; best first.
        """
        model = self.model
        height, width = image.shape[-2:]
        features = model.backbone(self.preprocess(image))
        features = [features[f] for f in model.head_in_features]
        logits, box_dists, centerness = model.flatten_predictions(model.head(features))
        # Built here rather than by ``model.location_grid``: its cache is keyed by the
        # feature sizes, which are unhashable SymInts in a dynamic-size export.
        grid = make_location_grid(
            [tuple(f.shape[-2:]) for f in features],
            model.strides,
            model.sizes_of_interest,
            model.location_offset,
            image.device,
        )
        points_per_level = grid.points.split(grid.num_per_level)

        return detect_single_image(
            [x[0] for x in logits],  # (R_l, K)
            [x[0] for x in box_dists],  # (R_l, 4)
            [x[0, :, 0] for x in centerness],  # (R_l,)
            points_per_level,
            model.strides,
            (height, width),
            **model.postprocess_arguments(),
        )


def dynamic_image_shapes(
    model: FCOS, max_size: int = 4096
) -> Dict[str, Dict[int, torch.export.Dim]]:
    """``dynamic_shapes`` for exporting :class:`FCOSExportModule` for any image size.

    Heights and widths range from one more than the coarsest level's stride to
    ``max_size``: up to that stride the coarsest level is one cell high or wide, and an
    export specialises sizes of 1, so smaller images need an export of their own size.
    """
    min_size = max(model.strides) + 1
    return {
        "image": {
            1: torch.export.Dim("height", min=min_size, max=max_size),
            2: torch.export.Dim("width", min=min_size, max=max_size),
        }
    }


def export_program(
    module: FCOSExportModule, image: Tensor, dynamic: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``module`` for the size of ``image`` (3, H, W), or with
    ``dynamic`` for the sizes of :func:`dynamic_image_shapes`."""
    if not dynamic:
        return torch.export.export(module, (image,))
    # With symbolic sizes, BatchNorm on channels-last tensors adds a guard that holds for
    # every size but that export cannot prove; checked at run time instead, it costs nothing.
    return torch.export.export(
        module,
        (image,),
        dynamic_shapes=dynamic_image_shapes(module.model),
        prefer_deferred_runtime_asserts_over_guards=True,
    )


# ----------------------------------------------------------------------------- checks


def instances_to_tensors(instances: Instances) -> Tuple[Tensor, Tensor, Tensor]:
    """(boxes (D, 4), scores (D,), classes (D,)) of the eager model's ``Instances``."""
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


class DetectionsDifference(NamedTuple):
    """How far two sets of detections of one image are apart, after sorting by score."""

    expected_count: int
    actual_count: int
    max_score_difference: float  # nan when the counts differ or there are none
    max_box_difference: float  # input pixels; nan likewise
    same_classes: bool

    def agrees(
        self, score_tolerance: float = SCORE_TOLERANCE, box_tolerance: float = BOX_TOLERANCE
    ) -> bool:
        """Same count and classes, scores and boxes within the tolerances."""
        if self.expected_count != self.actual_count or not self.same_classes:
            return False
        if self.expected_count == 0:
            return True
        return (
            self.max_score_difference <= score_tolerance
            and self.max_box_difference <= box_tolerance
        )

    def __str__(self) -> str:
        return (
            f"detections {self.expected_count} (eager) vs {self.actual_count} (exported), "
            f"max |score difference| {self.max_score_difference:.3g}, "
            f"max |box difference| {self.max_box_difference:.3g} px, "
            f"same classes: {self.same_classes}"
        )


def _score_order(boxes: Tensor, scores: Tensor, classes: Tensor) -> Tensor:
    """Indices (D,) sorting by decreasing score, equal scores by class, then box coordinates.

    Detections of equal scores come out of NMS in an order that depends on the kernel.
    """
    order = torch.arange(len(scores))
    for key in [*boxes.unbind(dim=1)[::-1], classes]:  # least significant first
        order = order[key[order].argsort(stable=True)]
    return order[scores[order].argsort(descending=True, stable=True)]


def _pair_near_ties(
    expected: Tuple[Tensor, Tensor, Tensor], actual: Tuple[Tensor, Tensor, Tensor], tie: float
) -> Tensor:
    """For two score-sorted sets of D detections, the index (D,) into ``actual`` of each
    ``expected`` detection's partner.

    Rank pairs with rank, except among near-ties: detections of one class whose scores are
    within ``tie`` of each other can swap places through rounding alone (a float32 kernel
    against another), so those pair with each other by closest box, closest first, one to
    one. Detections left without such a partner pair by rank, as before.
    """
    (boxes_a, scores_a, classes_a), (boxes_b, scores_b, classes_b) = expected, actual
    count = len(scores_a)
    box_distance = (boxes_a[:, None, :] - boxes_b[None, :, :]).abs().amax(dim=2)  # (D, D)
    tied = (scores_a[:, None] - scores_b[None, :]).abs() <= tie
    tied &= classes_a[:, None] == classes_b[None, :]
    candidates = tied.nonzero()  # (P, 2): (expected index, actual index)
    by_distance = box_distance[candidates[:, 0], candidates[:, 1]].argsort(stable=True)
    partner = torch.full((count,), -1, dtype=torch.long)
    taken = torch.zeros(count, dtype=torch.bool)
    for i, j in candidates[by_distance].tolist():
        if partner[i] < 0 and not taken[j]:
            partner[i], taken[j] = j, True
    unpaired = partner < 0
    partner[unpaired] = (~taken).nonzero()[:, 0]  # the rest, in rank order
    return partner


def compare_detections(expected: Tuple, actual: Tuple) -> DetectionsDifference:
    """Compare two (boxes (D, 4), scores (D,), classes (D,)), tensors or numpy arrays.

    Both are sorted by decreasing score (equal scores by class, then box) and compared
    pairwise, rank with rank; detections whose scores are within ``SCORE_TOLERANCE`` of
    each other pair by class and box instead (``_pair_near_ties``), since rounding can swap
    their order.
    """
    expected, actual = [
        [torch.as_tensor(x).detach().cpu() for x in detections] for detections in (expected, actual)
    ]
    counts = len(expected[1]), len(actual[1])
    if counts[0] != counts[1] or counts[0] == 0:
        nan = float("nan")
        return DetectionsDifference(*counts, nan, nan, counts[0] == counts[1])
    sorted_a, sorted_b = [
        (boxes[order].double(), scores[order].double(), classes[order].long())
        for boxes, scores, classes in (expected, actual)
        for order in [_score_order(boxes, scores, classes)]
    ]
    partner = _pair_near_ties(sorted_a, sorted_b, SCORE_TOLERANCE)
    (boxes_a, scores_a, classes_a) = sorted_a
    (boxes_b, scores_b, classes_b) = (x[partner] for x in sorted_b)
    return DetectionsDifference(
        *counts,
        max_score_difference=(scores_a - scores_b).abs().max().item(),
        max_box_difference=(boxes_a - boxes_b).abs().max().item(),
        same_classes=bool((classes_a == classes_b).all()),
    )


def sample_image(height: int, width: int, seed: int = 0) -> Tensor:
    """A (3, H, W) 0-255 float image of smooth noise, whose features vary like a photo's."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 16), max(1, width // 16), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    fine = torch.rand(3, height, width, generator=generator)
    return (0.8 * smooth + 0.2 * fine) * 255


# ----------------------------------------------------------------------------- contract

CONTRACT_KEY = "fcos_d2"  # ONNX metadata_props key, and "fcos_d2.json" in a .pt2's extra files


def export_contract(model: FCOS, cfg, classes, dynamic: bool, export_size: Tuple[int, int]) -> dict:
    """What an exported program takes and returns, stored in the exported file.

    Args:
        model: the exported FCOS.
        cfg: its config (input format and test resizing).
        classes: :class:`fcos_d2.classes.ModelClasses` or None.
        dynamic: exported for a range of sizes (else ``export_size`` only).
        export_size: (height, width) of the export image.
    """
    min_size = max(model.strides) + 1
    return {
        "input": {
            "name": "image",
            "shape": "(3, H, W)",
            "dtype": "float32",
            "range": "0-255 (not normalised: the program subtracts PIXEL_MEAN, divides by "
            "PIXEL_STD)",
            "channel_order": cfg.INPUT.FORMAT,
            "sizes": (
                f"any H and W from {min_size} to 4096"
                if dynamic
                else f"{export_size[0]} x {export_size[1]} only"
            ),
            "resizing": (
                f"none inside: the model was evaluated on images resized so that the short "
                f"side is {cfg.INPUT.MIN_SIZE_TEST} and the long side at most "
                f"{cfg.INPUT.MAX_SIZE_TEST}; boxes come back in the pixels of the image given"
            ),
        },
        "outputs": {
            "boxes": "(D, 4) float32, x0, y0, x1, y1 in input pixels, best first",
            "scores": "(D,) float32, sqrt(class probability x centerness)",
            "classes": "(D,) int64, an index into class_names and category_ids",
        },
        "class_names": list(classes.names) if classes else [],
        "category_ids": list(classes.category_ids) if classes else [],
        "classes_from": classes.dataset if classes else None,
        "score_threshold": model.score_thresh,
        "detections_per_image": model.detections_per_image,
    }

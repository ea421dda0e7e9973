"""Post-processing (fcos_d2.modeling.postprocess): decoding, thresholds, top-k, clipping,
empty boxes and NMS on hand-built head outputs."""

import math

import torch
from conftest import load_config
from detectron2.modeling import build_model

from fcos_d2.modeling.postprocess import (
    decode_boxes,
    detect_single_image,
    fcos_inference_single_image,
    select_level_candidates,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def one_level(cls_probs, ctr_probs, ltrb, points):
    """Head outputs of one level from probabilities and stride-unit distances."""
    logits = torch.tensor([[logit(p) for p in row] for row in cls_probs])
    centerness = torch.tensor([logit(p) for p in ctr_probs])
    return (
        logits,
        torch.tensor(ltrb, dtype=torch.float32),
        centerness,
        torch.tensor(points, dtype=torch.float32),
    )


def test_decode_boxes():
    points = torch.tensor([[10.0, 20.0]])
    dists = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert decode_boxes(points, dists).tolist() == [[9.0, 18.0, 13.0, 24.0]]


def test_score_is_sqrt_of_class_times_centerness_and_threshold_switch():
    logits = torch.tensor([[logit(0.1)]])
    centerness = torch.tensor([logit(0.01)])  # sqrt(0.1 * 0.01) = 0.0316
    kept_on_class, _, _ = select_level_candidates(logits, centerness, 0.05, False, 10)
    kept_on_final, _, _ = select_level_candidates(logits, centerness, 0.05, True, 10)
    torch.testing.assert_close(kept_on_class, torch.tensor([math.sqrt(0.1 * 0.01)]))
    assert len(kept_on_final) == 0


def test_topk_keeps_best_pairs_in_order():
    logits = torch.tensor([[logit(0.3), logit(0.9)], [logit(0.6), logit(0.2)]])
    centerness = torch.tensor([logit(1 - 1e-7), logit(1 - 1e-7)])
    scores, locations, classes = select_level_candidates(logits, centerness, 0.05, False, 2)
    assert locations.tolist() == [0, 1] and classes.tolist() == [1, 0]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.6]).sqrt(), atol=1e-5, rtol=0)


def test_nms_is_class_aware_and_boxes_are_clipped_and_scaled_by_stride():
    # Three locations on a stride-8 level; the first two predict nearly the same box.
    logits, dists, centerness, points = one_level(
        cls_probs=[[0.9, 0.01], [0.8, 0.01], [0.01, 0.7]],
        ctr_probs=[0.9, 0.9, 0.9],
        ltrb=[[1, 1, 1, 1], [1, 1, 1.1, 1], [1, 1, 1, 1]],
        points=[[20, 20], [20, 20], [22, 21]],
    )
    result = fcos_inference_single_image(
        [logits], [dists], [centerness], [points], [8], (26, 100), score_thresh=0.05
    )
    # The second box overlaps the first (same class) and goes; the third is another class.
    assert result.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(
        result.scores, torch.tensor([math.sqrt(0.9 * 0.9), math.sqrt(0.7 * 0.9)])
    )
    # (20 - 8, 20 - 8, 20 + 8, 20 + 8) and (14, 13, 30, 29), both clipped to height 26.
    assert result.pred_boxes.tensor.tolist() == [[12, 12, 28, 26], [14, 13, 30, 26]]


def test_detections_per_image_and_nan_boxes_dropped():
    logits, dists, centerness, points = one_level(
        cls_probs=[[0.9], [0.8], [0.7], [0.6]],
        ctr_probs=[0.9] * 4,
        ltrb=[[1, 1, 1, 1]] * 4,
        points=[[10, 10], [50, 10], [90, 10], [130, 10]],
    )
    dists[0, 0] = float("nan")
    result = fcos_inference_single_image(
        [logits], [dists], [centerness], [points], [8], (200, 200), detections_per_image=2
    )
    assert len(result) == 2
    assert torch.isfinite(result.pred_boxes.tensor).all()
    assert result.pred_boxes.tensor[:, 0].tolist() == [42, 82]


def test_boxes_clipped_empty_never_take_a_detection_slot():
    """150 valid, disjoint boxes and 150 better-scored ones off the image (x > width),
    which clipping squashes to zero width: exactly 100 real boxes come out."""
    valid_points = [[6 + 12 * (i % 15), 6 + 12 * (i // 15)] for i in range(150)]  # inside 200 x 200
    off_points = [[260 + 12 * (i % 15), 6 + 12 * (i // 15)] for i in range(150)]
    logits, dists, centerness, points = one_level(
        cls_probs=[[0.9]] * 150 + [[0.99]] * 150,
        ctr_probs=[0.9] * 300,
        ltrb=[[0.5, 0.5, 0.5, 0.5]] * 300,  # 8 x 8 boxes at stride 8
        points=valid_points + off_points,
    )
    boxes, scores, classes = detect_single_image(
        [logits], [dists], [centerness], [points], [8], (200, 200), detections_per_image=100
    )
    assert len(boxes) == 100
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 200).all()
    torch.testing.assert_close(scores, torch.full((100,), 0.9))


HEIGHT, WIDTH = 384, 512


def test_float16_autocast_inference_gives_finite_detections():
    cfg = load_config(opts=["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])
    model = build_model(cfg).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        (result,) = model([{"image": torch.rand(3, HEIGHT, WIDTH) * 255}])
    instances = result["instances"]
    boxes = instances.pred_boxes.tensor  # (D, 4)
    assert len(instances) > 0
    assert torch.isfinite(boxes).all()
    assert (boxes[:, [0, 2]] <= WIDTH).all() and (boxes[:, [1, 3]] <= HEIGHT).all()
    assert (boxes >= 0).all()
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()

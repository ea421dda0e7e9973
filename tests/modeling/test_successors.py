"""The fixes of FCOS's successors (fcos_d2.modeling.successors): IoU quality, ATSS, quality
focal loss and Soft-NMS, each against values computed by hand or a plain-Python reference."""

import math
import random

import pytest
import torch
from conftest import load_config, make_instances
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from fcos_d2.modeling import atss, targets
from fcos_d2.modeling.losses import fcos_losses, iou_of_distances, quality_focal_loss
from fcos_d2.modeling.postprocess import class_aware_soft_nms, clip_nms_cap
from fcos_d2.modeling.successors import SuccessorOptions

K = 3


def one_positive_case(quality_logit: float):
    """Two locations: a positive of class 1 and a negative. The positive predicts a 2 x 2
    box, (l, t, r, b) = (1, 1, 1, 1), for its 4 x 4 target (1, 1, 3, 3): IoU 4 / 16 = 1/4;
    the target's centerness is sqrt(1/3 * 1/3) = 1/3."""
    logits = torch.zeros(1, 2, K)
    pred = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]], requires_grad=True)
    target = torch.tensor([[[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]])
    quality = torch.tensor([[quality_logit, 0.0]], requires_grad=True)
    labels = torch.tensor([[1, K]])
    return logits, pred, quality, labels, target


def bce(probability: float, target: float) -> float:
    return -(target * math.log(probability) + (1 - target) * math.log(1 - probability))


def test_the_iou_of_a_known_box_pair_is_the_quality_target():
    assert iou_of_distances(
        torch.tensor([[1.0, 1, 1, 1]]), torch.tensor([[1.0, 1, 3, 3]])
    ).item() == (pytest.approx(0.25))
    case = one_positive_case(quality_logit=math.log(3))  # sigmoid 0.75
    by_iou = fcos_losses(*case, num_classes=K, box_quality="iou")
    by_centerness = fcos_losses(*case, num_classes=K)
    assert by_iou["loss_fcos_ctr"].item() == pytest.approx(bce(0.75, 0.25), rel=1e-5)  # 1.11164
    assert by_centerness["loss_fcos_ctr"].item() == pytest.approx(bce(0.75, 1 / 3), rel=1e-5)
    # The IoU target is detached: the quality loss moves no box.
    by_iou["loss_fcos_ctr"].backward()
    assert case[1].grad is None or not case[1].grad.any()


def test_with_iou_quality_the_box_loss_is_a_plain_mean_over_positives():
    """Two positives of centerness 1 and 1/3: FCOS weights their box losses by those, the
    IoU quality (as AdelaiDet) averages them."""
    logits = torch.zeros(1, 2, K)
    pred = torch.tensor([[[1.0, 1, 1, 1], [1.0, 1, 1, 1]]])
    target = torch.tensor([[[2.0, 2, 2, 2], [1.0, 1, 3, 3]]])
    case = (logits, pred, torch.zeros(1, 2), torch.tensor([[0, 2]]), target)
    per_box = 1 - torch.tensor([4 / 16, 4 / 16])  # GIoU = IoU: the predictions lie inside
    weights = torch.tensor([1.0, 1 / 3])
    by_iou = fcos_losses(*case, num_classes=K, box_quality="iou")["loss_fcos_loc"]
    by_centerness = fcos_losses(*case, num_classes=K)["loss_fcos_loc"]
    assert by_iou.item() == pytest.approx(per_box.mean().item())
    assert by_centerness.item() == pytest.approx(((per_box * weights).sum() / weights.sum()).item())


@pytest.mark.parametrize(
    "logit, target, expected",
    [
        (0.0, 0.25, 0.25**2 * math.log(2)),  # |0.25 - 0.5|^2 * BCE(0.5, 0.25) = 0.0433
        (math.log(3), 1.0, 0.25**2 * -math.log(0.75)),  # sigma 0.75, y = 1
        (-math.log(3), 0.0, 0.25**2 * -math.log(0.75)),  # sigma 0.25, y = 0
        (math.log(3), 0.75, 0.0),  # the score already is the target
    ],
)
def test_quality_focal_loss_against_its_formula(logit, target, expected):
    value = quality_focal_loss(torch.tensor([logit]), torch.tensor([target]), beta=2.0)
    assert value.item() == pytest.approx(expected, abs=1e-7)


def test_with_quality_focal_loss_the_positive_class_target_is_its_iou():
    """Positive of class 1 with IoU 1/4; every logit 0 (sigma 1/2). Its class-1 entry has
    target 1/4, the five others 0: (1/4)^2 BCE(1/2, 1/4) + 5 (1/2)^2 BCE(1/2, 0), over one
    positive; no quality loss; the box loss weighted by the (detached) top class score."""
    case = one_positive_case(quality_logit=0.0)
    losses = fcos_losses(*case, num_classes=K, box_quality="none", cls_loss="quality_focal")
    expected = 0.25**2 * bce(0.5, 0.25) + 5 * 0.25 * bce(0.5, 0.0)
    assert losses["loss_fcos_cls"].item() == pytest.approx(expected, rel=1e-5)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc"}
    focal = fcos_losses(*case, num_classes=K)["loss_fcos_cls"]
    assert not math.isclose(focal.item(), expected, rel_tol=1e-3)


@pytest.mark.parametrize("quality", ["ctrness", "iou"])
def test_a_quality_branch_with_the_quality_focal_loss_is_refused_by_name(quality):
    with pytest.raises(ValueError, match=f"CLS_LOSS quality_focal.*BOX_QUALITY {quality}"):
        SuccessorOptions(box_quality=quality, cls_loss="quality_focal")


@pytest.mark.parametrize(
    "key, value",
    [
        ("box_quality", "centerness"),
        ("cls_loss", "gfl"),
        ("assigner", "paa"),
        ("nms_type", "soft_linear"),
        ("soft_nms_sigma", 0.0),
        ("atss_topk", 0),
    ],
)
def test_a_bad_option_names_its_key(key, value):
    with pytest.raises(ValueError, match=f"MODEL.FCOS.{key.upper()}"):
        SuccessorOptions(**{key: value})


def test_soft_nms_decays_three_boxes_by_hand():
    """A (score .9) and B (.8) overlap at IoU 50 / 100 = 1/2; C (.7) overlaps nothing; D is
    B's box in another class (.85). sigma 1/2: B decays by exp(-(1/2)^2 / (1/2)) = e^-0.5;
    D, of another class, and C keep their scores."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 5], [20.0, 20, 30, 30], [0.0, 0, 10, 5]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.85])
    classes = torch.tensor([0, 0, 0, 1])
    keep, decayed = class_aware_soft_nms(boxes, scores, classes, sigma=0.5, max_detections=10)
    assert keep.tolist() == [0, 3, 2, 1]
    assert decayed.tolist() == pytest.approx([0.9, 0.85, 0.7, 0.8 * math.exp(-0.5)])
    # Decayed under the minimum score: dropped; and at most max_detections.
    keep, _ = class_aware_soft_nms(boxes, scores, classes, 0.5, 10, min_score=0.5)
    assert keep.tolist() == [0, 3, 2]
    assert class_aware_soft_nms(boxes, scores, classes, 0.5, 2)[0].tolist() == [0, 3]
    # Hard NMS at 0.5 would have removed B: the option is what changes it.
    hard = clip_nms_cap(boxes, scores, classes, (64, 64), 0.4, 10)
    soft = clip_nms_cap(boxes, scores, classes, (64, 64), 0.4, 10, nms_type="soft_gaussian")
    assert len(hard[0]) == 3 and len(soft[0]) == 4


def hand_grid():
    """Level 0 (stride 8): locations (4, 4), (12, 4), (4, 12), (12, 12); level 1 (stride
    16): (8, 8). With ATSS_ANCHOR_SCALE 2 their boxes have sides 16 and 32."""
    return targets.make_location_grid([(2, 2), (1, 1)], [8, 16], [1000.0])


def test_atss_on_a_hand_drawn_case():
    """Box A (0, 0, 12, 10), class 0, centre (6, 5): the 2 closest level-0 locations are
    (4, 4) and (12, 4), with (8, 8) of level 1. Their IoUs with A: 120/256 = .46875,
    80/296 = .27027, 120/1024 = .11719: mean .28540 + std .17627 = .46167, reached by
    (4, 4) alone (inside A). Box A2 (0, 0, 12, 11), class 1: IoUs 132/256 = .51563, 88/300 =
    .29333, 132/1024 = .12891, threshold .31262 + .19408 = .50670: (4, 4) again. (4, 4) is
    positive for both and goes to A2, which it overlaps more; its targets are the
    distances to A2's sides."""
    grid = hand_grid()
    box_a, box_a2 = [0.0, 0, 12, 10], [0.0, 0, 12, 11]
    labels, box_targets = atss.atss_assign_single_image(
        grid, torch.tensor([box_a]), torch.tensor([0]), K, anchor_scale=2, topk=2
    )
    assert labels.tolist() == [0, K, K, K, K]
    labels, box_targets = atss.atss_assign_single_image(
        grid, torch.tensor([box_a, box_a2]), torch.tensor([0, 1]), K, anchor_scale=2, topk=2
    )
    assert labels.tolist() == [1, K, K, K, K]
    assert box_targets[0].tolist() == [4.0, 4.0, 8.0, 7.0]
    # FCOS's own assignment of the same boxes differs: the option is what changes it.
    fcos_labels, _ = targets.assign_targets_single_image(
        grid, torch.tensor([box_a, box_a2]), torch.tensor([0, 1]), K
    )
    assert fcos_labels.tolist() != labels.tolist()


def reference_atss(points, strides, counts, boxes, anchor_scale, topk):
    """ATSS in plain Python, one box and one level at a time: (labels as box index or -1)."""
    best = [(-1.0, -1)] * len(points)
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        candidates, start = [], 0
        for count in counts:
            level = range(start, start + count)
            ranked = sorted(level, key=lambda r: math.dist(points[r], (cx, cy)))
            candidates += ranked[:topk]
            start += count

        def iou(r):
            half = anchor_scale * strides[r] / 2
            ax0, ay0, ax1, ay1 = (
                points[r][0] - half,
                points[r][1] - half,
                *(p + half for p in points[r]),
            )
            w = max(0.0, min(ax1, x1) - max(ax0, x0))
            h = max(0.0, min(ay1, y1) - max(ay0, y0))
            inter = w * h
            return inter / ((ax1 - ax0) * (ay1 - ay0) + (x1 - x0) * (y1 - y0) - inter)

        ious = [iou(r) for r in candidates]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for r, value in zip(candidates, ious):
            px, py = points[r]
            inside = min(px - x0, py - y0, x1 - px, y1 - py) > 0.01
            if value >= mean + std and inside and value > best[r][0]:
                best[r] = (value, index)
    return [index for _, index in best]


@pytest.mark.parametrize("pairs_per_chunk", [1 << 20, 7])  # one chunk; a few boxes a chunk
def test_atss_matches_a_plain_python_reference_on_random_boxes(pairs_per_chunk, monkeypatch):
    monkeypatch.setattr(atss, "MAX_PAIRS_PER_CHUNK", pairs_per_chunk)
    rng = random.Random(3)
    grid = targets.make_location_grid([(8, 8), (4, 4), (2, 2)], [8, 16, 32], [32.0, 64.0])
    boxes = []
    for _ in range(12):
        x0, y0 = rng.uniform(0, 50), rng.uniform(0, 50)
        boxes.append([x0, y0, x0 + rng.uniform(6, 40), y0 + rng.uniform(6, 40)])
    box_tensor = torch.tensor(boxes, dtype=torch.float64).float()
    labels, _ = atss.atss_assign_single_image(
        grid, box_tensor, torch.arange(12) % K, K, anchor_scale=8, topk=9
    )
    matched = reference_atss(
        grid.points.tolist(), grid.strides.tolist(), grid.num_per_level, box_tensor.tolist(), 8, 9
    )
    expected = [K if m < 0 else m % K for m in matched]
    assert labels.tolist() == expected
    assert sum(m >= 0 for m in matched) >= 12  # every box got positives somewhere


OPTIONS = {
    "iou quality": ["MODEL.FCOS.BOX_QUALITY", "iou"],
    "atss": ["MODEL.FCOS.ASSIGNER", "atss"],
    "quality focal": ["MODEL.FCOS.CLS_LOSS", "quality_focal", "MODEL.FCOS.BOX_QUALITY", "none"],
}
SOFT_NMS = ["MODEL.FCOS.NMS_TYPE", "soft_gaussian"]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_changes_the_model_it_builds(name):
    """The same weights and inputs: an option gives other losses or other detections."""
    common = ["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]
    torch.manual_seed(0)
    default = build_model(load_config(opts=common))
    torch.manual_seed(0)
    changed = build_model(load_config(opts=[*common, *OPTIONS[name]]))
    torch.manual_seed(1)
    image = torch.rand(3, 64, 64) * 255
    batch = [{"image": image, "instances": make_instances((64, 64), [[8, 8, 40, 36]], [1])}]
    with EventStorage():
        losses = [m(batch) for m in (default, changed)]
    for model in (default, changed):
        model.eval()
    with torch.no_grad():
        detections = [m([{"image": image}])[0]["instances"] for m in (default, changed)]
    same_losses = losses[0].keys() == losses[1].keys() and all(
        torch.equal(losses[0][k], losses[1][k]) for k in losses[0]
    )
    same_scores = torch.equal(detections[0].scores, detections[1].scores)
    assert not (same_losses and same_scores)
    assert all(torch.isfinite(v) for v in losses[1].values())


def test_the_model_and_its_tta_run_soft_nms_when_asked(monkeypatch):
    """An untrained model's boxes barely overlap, so the detections alone would not show
    which NMS ran: the Soft-NMS function is watched instead."""
    from fcos_d2.modeling import postprocess
    from fcos_d2.modeling.tta import FCOSWithTTA

    calls = []
    soft_nms = postprocess.class_aware_soft_nms

    def watched(*args, **kwargs):
        calls.append(len(args[0]))
        return soft_nms(*args, **kwargs)

    monkeypatch.setattr(postprocess, "class_aware_soft_nms", watched)
    image = {"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}
    cfg = load_config(opts=["MODEL.FCOS.SCORE_THRESH_TEST", "0.0", *SOFT_NMS])
    model = build_model(cfg).eval()
    with torch.no_grad():
        model([image])
        assert len(calls) == 1 and calls[0] > 0
        tta_cfg = load_config(
            opts=[*SOFT_NMS, "TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.FLIP", "True"]
        )
        FCOSWithTTA(tta_cfg, model)([image])
    assert len(calls) == 1 + 2 + 1  # two augmented passes, then the merge
    hard = build_model(load_config(opts=["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])).eval()
    with torch.no_grad():
        hard([image])
    assert len(calls) == 4  # hard NMS: not called


def test_soft_nms_export_is_refused_by_name():
    from fcos_d2.export import FCOSExportModule

    model = build_model(load_config(opts=SOFT_NMS)).eval()
    with pytest.raises(ValueError, match="MODEL.FCOS.NMS_TYPE soft_gaussian"):
        FCOSExportModule(model)


@pytest.mark.parametrize("name", [*OPTIONS, "soft nms"])
def test_the_fcos_proposal_generator_trains_and_proposes_with_each_option(name):
    from conftest import CONFIGS

    opts = OPTIONS.get(name, SOFT_NMS)
    config = CONFIGS / "baselines" / "mask_rcnn_FCOS_RPN_R_18_shapes_cpu.yaml"
    model = build_model(load_config(config, ["MODEL.MASK_ON", "False", *opts]))
    boxes, classes = [[4, 6, 30, 40], [20, 20, 60, 50]], [0, 3]
    batch = [
        {
            "image": torch.rand(3, 64, 80) * 255,
            "instances": make_instances((64, 80), boxes, classes),
        }
    ]
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert ("loss_fcos_ctr" in losses) == (name != "quality focal")  # no quality branch
    model.eval()
    with torch.no_grad():
        detections = model([{"image": batch[0]["image"]}])[0]["instances"]
    assert torch.isfinite(detections.pred_boxes.tensor).all()

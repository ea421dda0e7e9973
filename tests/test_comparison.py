"""tools/compare.py's analysis: overlap split and claim verdicts on hand-built cases,
and the report end to end from saved predictions."""

import json

import pytest

from fcos_d2.comparison import analysis
from fcos_d2.comparison.verdicts import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    judge_claims,
    judge_overlap,
    judge_precision,
    judge_recall,
    judge_training_time,
)

HEAVY, LIGHT, CLEAR = "IoU > 0.3", "IoU (0, 0.3]", "no overlap"


def hand_built_dataset():
    """Image 1: A, B with IoU 1/3. Image 2: C, D with IoU 1/9. Image 3: E alone."""
    boxes = {1: (1, [0, 0, 10, 10]), 2: (1, [5, 0, 10, 10]), 3: (2, [0, 0, 10, 10]),
             4: (2, [8, 0, 10, 10]), 5: (3, [20, 20, 10, 10])}
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in (1, 2, 3)],
        "annotations": [
            {"id": a, "image_id": img, "category_id": 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for a, (img, box) in boxes.items()
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }


def detection(image_id, box, score):
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score}


# A, C, D and E found exactly; B missed; one false positive that outranks everything.
PREDICTIONS = [
    detection(1, [0, 0, 10, 10], 0.9),
    detection(2, [0, 0, 10, 10], 0.85),
    detection(2, [8, 0, 10, 10], 0.84),
    detection(3, [20, 20, 10, 10], 0.8),
    detection(3, [40, 40, 10, 10], 0.95),
]


def test_max_overlap_and_bins():
    overlaps = analysis.max_overlap_per_annotation(hand_built_dataset())
    assert overlaps == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 1 / 9, 4: 1 / 9, 5: 0.0})
    assert [analysis.overlap_bin_of(overlaps[i]) for i in range(1, 6)] == [HEAVY, HEAVY, LIGHT, LIGHT, CLEAR]


def test_overlap_split_metrics_by_hand():
    split = analysis.overlap_split_metrics(hand_built_dataset(), PREDICTIONS)
    assert {b: split[b]["num_gt"] for b in split} == {CLEAR: 1, LIGHT: 2, HEAVY: 2}
    assert split[HEAVY]["recall50"] == pytest.approx(50.0)
    assert split[LIGHT]["recall50"] == pytest.approx(100.0)
    # Heavy bin: ranked FP (0.95), A (0.9); B never found. Precision 1/2 up to recall
    # 1/2 (51 of COCO's 101 recall points), 0 beyond: AP = 0.5 * 51 / 101.
    assert split[HEAVY]["AP"] == pytest.approx(100 * 0.5 * 51 / 101)
    # Clear bin: FP (0.95), E (0.8): precision 1/2 at every recall point.
    assert split[CLEAR]["AP"] == pytest.approx(50.0)
    # Light bin: FP, C, D: precision 2/3 at full recall.
    assert split[LIGHT]["AP"] == pytest.approx(100 * 2 / 3)


def test_summary_recall_counts_every_box():
    gt = analysis.coco_from_dict(hand_built_dataset())
    metrics = analysis.summary_metrics(gt, PREDICTIONS)
    assert metrics["AR100"] == pytest.approx(80.0)  # 4 of 5 boxes at every IoU threshold
    assert metrics["AR1"] == pytest.approx(40.0)  # one detection per image: A, C, and the FP over E
    _, recall = analysis.recall_vs_detections(gt, PREDICTIONS)
    assert recall[0] == pytest.approx(0.4) and recall[-1] == pytest.approx(0.8)


@pytest.mark.parametrize("fcos, baseline, expected", [(0.2, 0.3, SUPPORTED), (0.3, 0.3, INCONCLUSIVE),
                                                      (0.4, 0.3, NOT_SUPPORTED), (None, 0.3, INCONCLUSIVE)])
def test_training_time_verdict(fcos, baseline, expected):
    assert judge_training_time(fcos, baseline).verdict == expected


def test_recall_and_precision_verdicts():
    assert judge_recall({"AR100": 60.0}, {"AR100": 55.0}).verdict == SUPPORTED
    assert judge_recall({"AR100": 55.5}, {"AR100": 55.0}).verdict == INCONCLUSIVE
    assert judge_recall({"AR100": 50.0}, {"AR100": 55.0}).verdict == NOT_SUPPORTED
    assert judge_precision({"AP": 40.0}, {"AP": 45.0}).verdict == SUPPORTED
    assert judge_precision({"AP": 47.0}, {"AP": 45.0}).verdict == NOT_SUPPORTED


def overlap(clear_recall, heavy_recall, heavy_count=50):
    return {CLEAR: {"num_gt": 100, "AP": 50.0, "recall50": clear_recall},
            LIGHT: {"num_gt": 30, "AP": 40.0, "recall50": 0.0},
            HEAVY: {"num_gt": heavy_count, "AP": 5.0, "recall50": heavy_recall}}


def test_overlap_verdict_is_judged_on_recall():
    assert judge_overlap(overlap(90, 60), overlap(90, 80)).verdict == SUPPORTED  # FCOS drops 30, baseline 10
    assert judge_overlap(overlap(90, 85), overlap(90, 70)).verdict == NOT_SUPPORTED
    assert judge_overlap(overlap(90, 89.5), overlap(90, 90)).verdict == INCONCLUSIVE
    assert judge_overlap(overlap(90, 60, heavy_count=5), overlap(90, 80)).verdict == INCONCLUSIVE


def write_run(directory, name, meta_architecture, predictions, s_per_iter):
    directory.mkdir()
    (directory / "run.json").write_text(json.dumps({
        "name": name, "meta_architecture": meta_architecture, "parameters": 1000,
        "train_s_per_iter": s_per_iter, "infer_s_per_image": 0.01, "peak_memory_mb": 100.0}))
    (directory / "coco_instances_results.json").write_text(json.dumps(predictions))


def test_report_end_to_end_from_saved_predictions(tmp_path):
    import compare
    from fcos_d2.coco_dataset import register_coco_dataset

    (tmp_path / "gt.json").write_text(json.dumps(hand_built_dataset()))
    register_coco_dataset("comparison_hand_built", str(tmp_path / "gt.json"), str(tmp_path))
    write_run(tmp_path / "fcos", "fcos", "FCOS", PREDICTIONS, 0.2)
    write_run(tmp_path / "rcnn", "rcnn", "GeneralizedRCNN", PREDICTIONS[:3], 0.3)
    output = tmp_path / "report"
    compare.main(["--report-only", "--dataset", "comparison_hand_built", "--output", str(output),
                  str(tmp_path / "fcos"), str(tmp_path / "rcnn")])

    report = json.loads((output / "report.json").read_text())
    fcos, rcnn = report["models"]
    assert fcos["bbox"]["AR100"] == pytest.approx(80.0) and rcnn["bbox"]["AR100"] == pytest.approx(60.0)
    expected = judge_claims(
        {"train_s_per_iter": 0.2, "bbox": fcos["bbox"], "overlap": fcos["overlap"]},
        {"train_s_per_iter": 0.3, "bbox": rcnn["bbox"], "overlap": rcnn["overlap"]},
    )
    assert report["verdicts"] == [v.__dict__ for v in expected]
    assert [v["verdict"] for v in report["verdicts"]][:2] == [SUPPORTED, SUPPORTED]
    text = (output / "report.md").read_text()
    assert "| Higher recall" in text and "AR@100 80.0 vs 60.0" in text
    for plot in ("pr_curves.png", "recall_vs_iou.png", "recall_vs_detections.png", "overlap.png"):
        assert (output / plot).stat().st_size > 1000

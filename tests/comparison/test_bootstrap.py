"""COCO metrics under image weights (fcos_d2.comparison.bootstrap) against pycocotools
itself, and against physically duplicated images."""

import numpy as np
import pytest
from comparison_cases import hand_built_dataset, random_case

from fcos_d2.comparison import analysis, bootstrap


def test_match_table_reproduces_cocoeval():
    dataset, predictions = random_case()
    gt = analysis.coco_from_dict(dataset)
    reference = analysis.summary_metrics(gt, predictions)
    metrics = bootstrap.MatchTable(gt, predictions).metrics()
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-9), key
    thresholds, recall = analysis.recall_vs_iou(gt, predictions)
    assert metrics["R50"] == pytest.approx(100 * recall[list(thresholds).index(0.5)])
    assert metrics["R75"] == pytest.approx(100 * recall[list(thresholds).index(0.75)])


def test_image_weights_equal_duplicated_images():
    """Counting an image twice is the same as COCOeval on a dataset holding it twice."""
    dataset, predictions = random_case(num_images=12, seed=3)
    weights = np.array([0, 2, 1, 3, 0, 1, 1, 0, 2, 1, 1, 0])
    duplicated = {"images": [], "annotations": [], "categories": dataset["categories"]}
    duplicated_predictions = []
    for image, count in zip(dataset["images"], weights):
        for copy_index in range(count):
            new_id = 1000 * (copy_index + 1) + image["id"]
            duplicated["images"].append({**image, "id": new_id})
            for a in dataset["annotations"]:
                if a["image_id"] == image["id"]:
                    duplicated["annotations"].append(
                        {**a, "id": len(duplicated["annotations"]) + 1, "image_id": new_id}
                    )
            duplicated_predictions += [
                {**p, "image_id": new_id} for p in predictions if p["image_id"] == image["id"]
            ]
    reference = analysis.summary_metrics(
        analysis.coco_from_dict(duplicated), duplicated_predictions
    )
    weighted = bootstrap.MatchTable(analysis.coco_from_dict(dataset), predictions).metrics(weights)
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        # Score ties between copies of an image are ordered differently: AP may move a hair.
        assert weighted[key] == pytest.approx(reference[key], abs=1e-6), key


def test_no_predictions_give_zero_metrics():
    gt = analysis.coco_from_dict(hand_built_dataset())
    assert set(bootstrap.MatchTable(gt, []).metrics().values()) == {0.0}

"""COCO metrics under image weights (fcos_d2.comparison.bootstrap) against pycocotools
itself, and against physically duplicated images."""

import copy

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


def _duplicated(dataset, predictions, weights):
    """The dataset and predictions with image i physically present ``weights[i]`` times."""
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
    return duplicated, duplicated_predictions


def _assert_equals_duplicated_cocoeval(dataset, predictions, weights, metrics):
    duplicated, duplicated_predictions = _duplicated(dataset, predictions, weights)
    reference = analysis.summary_metrics(
        analysis.coco_from_dict(duplicated), duplicated_predictions
    )
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        # Score ties between copies of an image are ordered differently: AP may move a hair.
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6), key


def test_image_weights_equal_duplicated_images():
    """Counting an image twice is the same as COCOeval on a dataset holding it twice."""
    dataset, predictions = random_case(num_images=12, seed=3)
    weights = np.array([0, 2, 1, 3, 0, 1, 1, 0, 2, 1, 1, 0])
    weighted = bootstrap.MatchTable(analysis.coco_from_dict(dataset), predictions).metrics(weights)
    _assert_equals_duplicated_cocoeval(dataset, predictions, weights, weighted)


def test_replicates_at_once_equal_cocoeval_on_each_resampled_set():
    """Many replicates computed together, in chunks, each equal COCOeval on its own
    resampled set; a replicate that lacks a category's ground truth leaves it out."""
    dataset, predictions = random_case(num_images=12, seed=3)
    table = bootstrap.MatchTable(analysis.coco_from_dict(dataset), predictions)
    weights = bootstrap.image_weights(12, 5, seed=11)
    categories_of = {
        image["id"]: {
            a["category_id"] for a in dataset["annotations"] if a["image_id"] == image["id"]
        }
        for image in dataset["images"]
    }
    single = next(
        i for i, image in enumerate(dataset["images"]) if len(categories_of[image["id"]]) == 1
    )
    one_image = np.zeros((1, 12), dtype=np.int64)
    one_image[0, single] = 12  # one category present: the others must not count as zero AP
    weights = np.concatenate([weights, one_image, np.zeros((1, 12), dtype=np.int64)])

    replicates = table.replicate_metrics(weights, chunk_size=3)

    assert all(values.shape == (7,) for values in replicates.values())
    for row in range(6):
        metrics = {name: values[row] for name, values in replicates.items()}
        _assert_equals_duplicated_cocoeval(dataset, predictions, weights[row], metrics)
    assert replicates["AP"][5] > 0
    assert {float(values[6]) for values in replicates.values()} == {0.0}  # no images at all


def test_match_table_leaves_the_predictions_untouched():
    dataset, predictions = random_case(seed=5)
    before = copy.deepcopy(predictions)
    bootstrap.MatchTable(analysis.coco_from_dict(dataset), predictions)
    assert predictions == before


def test_no_predictions_give_zero_metrics():
    gt = analysis.coco_from_dict(hand_built_dataset())
    assert set(bootstrap.MatchTable(gt, []).metrics().values()) == {0.0}

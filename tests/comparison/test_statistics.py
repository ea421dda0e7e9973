"""Bootstrap intervals of differences (fcos_d2.comparison.statistics) on hand-made cases:
exactly zero for identical detections, away from zero when one model finds every box and
the other half; time to reach an AP; pooling of seeds."""

import math

import numpy as np
import pytest
from comparison_cases import detection, make_series, random_case

from fcos_d2.comparison import bootstrap, statistics
from fcos_d2.comparison.statistics import ALL


def test_identical_detections_give_an_exact_zero_interval():
    dataset, predictions = random_case()
    weights = bootstrap.image_weights(len(dataset["images"]), 200, seed=0)
    a = make_series("a", "FCOS", [predictions, predictions], dataset, weights)
    b = make_series("bb", "GeneralizedRCNN", [predictions], dataset, weights)
    for metric in bootstrap.METRICS:
        difference = statistics.difference_estimate(a, b, ALL, metric)
        assert (difference.value, difference.low, difference.high) == (0.0, 0.0, 0.0), metric


def test_finding_every_box_beats_finding_half_with_an_interval_away_from_zero():
    dataset, _ = random_case(num_images=40, seed=1)
    perfect = [
        detection(a["image_id"], a["bbox"], 0.9, a["category_id"])
        for a in dataset["annotations"]
        if not a["iscrowd"]
    ]
    half = perfect[::2]
    weights = bootstrap.image_weights(len(dataset["images"]), 500, seed=0)
    every = make_series("every", "FCOS", [perfect], dataset, weights)
    some = make_series("half", "GeneralizedRCNN", [half], dataset, weights)
    difference = statistics.difference_estimate(every, some, ALL, "R50")
    assert difference.value == pytest.approx(100 - some.point[ALL]["R50"])
    assert 30 < difference.low <= difference.value <= difference.high < 70
    assert every.point[ALL]["R50"] == pytest.approx(100.0)


def test_time_to_reach_interpolates_from_zero():
    assert statistics.time_to_reach([(10.0, 20.0), (20.0, 40.0)], 10.0) == pytest.approx(5.0)
    assert statistics.time_to_reach([(10.0, 20.0), (20.0, 40.0)], 30.0) == pytest.approx(15.0)
    assert statistics.time_to_reach([(10.0, math.nan), (20.0, 40.0)], 20.0) == pytest.approx(15.0)
    assert statistics.time_to_reach([(10.0, 20.0), (20.0, 40.0)], 41.0) == math.inf


def test_pool_seeds_averages_the_drawn_seeds():
    values = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])  # (S=2, B=3)
    draws = np.array([[0, 0], [0, 1], [1, 1]])
    assert statistics.pool_seeds(values, draws).tolist() == [1.0, 11.0, 30.0]


def test_common_target_is_recomputed_on_each_replicate_so_every_run_reaches_it():
    """Two runs, whole set then two replicates. On replicate 2 run b ends at 30 AP, below
    the whole-set target (0.9 * 40 = 36): a fixed target would give it an infinite time."""
    seconds = np.array([10.0, 20.0])
    a = statistics.Series("a", "FCOS", "iterations", runs=[])
    b = statistics.Series("b", "GeneralizedRCNN", "iterations", runs=[])
    a.curve_ap = [(seconds, np.array([[50.0, 50.0, 50.0], [60.0, 60.0, 60.0]]))]  # (C, 1 + B)
    b.curve_ap = [(seconds, np.array([[20.0, 20.0, 10.0], [40.0, 50.0, 30.0]]))]
    a.seed_draws = b.seed_draws = np.zeros((2, 1), dtype=int)  # (B, S)

    targets = statistics.common_target((a, b), 0.9)
    assert targets.tolist() == pytest.approx([36.0, 45.0, 27.0])
    assert statistics.point_time_to_reach(b, targets[0]) == pytest.approx(18.0)
    # Replicate 1: 45 reached at 10 + 10 * (45 - 20) / 30; replicate 2: 27 at 10 + 10 * 17 / 20.
    assert statistics.time_to_reach_replicates(b, targets[1:]).tolist() == pytest.approx(
        [10 + 250 / 30, 18.5]
    )
    assert statistics.time_to_reach_replicates(a, targets[1:]).tolist() == pytest.approx([9.0, 5.4])

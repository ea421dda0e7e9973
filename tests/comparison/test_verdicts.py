"""The verdict rules (fcos_d2.comparison.verdicts): at the interval edges, the four
verdicts on a constructed case, and the overlap verdict's minimum of boxes."""

import math

import pytest
from comparison_cases import CLEAR, HEAVY, crowded_case, detection, make_series

from fcos_d2.comparison import bootstrap
from fcos_d2.comparison.statistics import ALL, group_datasets
from fcos_d2.comparison.verdicts import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    data_to_settle,
    judge_claims,
    verdict_from_interval,
)


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (1.01, 5.0, SUPPORTED),
        (1.0, 5.0, INCONCLUSIVE),
        (-0.5, 0.5, INCONCLUSIVE),
        (-5.0, -1.01, NOT_SUPPORTED),
        (-5.0, -1.0, INCONCLUSIVE),
        (-5.0, 5.0, INCONCLUSIVE),
        (math.nan, 3.0, INCONCLUSIVE),
        (2.0, math.inf, SUPPORTED),
        (-math.inf, -2.0, NOT_SUPPORTED),
    ],
)
def test_verdict_rules_at_the_interval_edges(low, high, expected):
    assert verdict_from_interval(low, high, margin=1.0) == expected


def test_the_four_verdicts_on_a_constructed_case():
    """FCOS: misses the second box of every crowded pair and adds a false positive ranked
    first in every image; it reaches the common AP in a quarter of the baseline's time.
    The baseline finds every box, with nothing else."""
    dataset = crowded_case(isolated=30)  # 30 boxes: enough to judge the overlap claim
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    first_of_each_image = [
        d for i, d in enumerate(truth) if i == 0 or d["image_id"] != truth[i - 1]["image_id"]
    ]
    spurious = [detection(i, [70, 70, 20, 20], 0.95) for i in range(1, 51)]
    fcos_predictions = first_of_each_image + spurious
    weights = bootstrap.image_weights(50, 300, seed=0)
    fcos = make_series(
        "fcos",
        "FCOS",
        [fcos_predictions],
        dataset,
        weights,
        curves=[[(30.0, fcos_predictions), (60.0, fcos_predictions)]],
    )
    baseline = make_series(
        "baseline",
        "GeneralizedRCNN",
        [truth],
        dataset,
        weights,
        curves=[[(120.0, []), (240.0, truth)]],
    )
    groups = {
        g: sum(not a["iscrowd"] for a in d["annotations"])
        for g, d in group_datasets(dataset).items()
    }
    assert groups[HEAVY] == 40 and groups[CLEAR] == 30

    time, recall, precision, overlap = judge_claims(fcos, baseline, groups[HEAVY], groups[CLEAR])
    # Common AP: 90% of FCOS's. FCOS gets there within its first 30 s (before 60 s);
    # the baseline needs 120 + 120 * target / 100 s: FCOS saves over 80% of the time.
    assert time.verdict == SUPPORTED and time.difference.low > 0.8
    # Recall at IoU 0.5: FCOS finds 50 of 70 boxes, the baseline all of them.
    assert recall.verdict == NOT_SUPPORTED
    assert recall.difference.value == pytest.approx(100 * 50 / 70 - 100)
    assert precision.verdict == SUPPORTED and baseline.point[ALL]["AP"] == pytest.approx(100.0)
    # Crowded boxes: FCOS finds half (recall drops 50 points), the baseline all.
    assert overlap.verdict == SUPPORTED and overlap.difference.value == pytest.approx(50.0)


def test_common_ap_is_one_every_run_reaches_so_a_weak_seed_keeps_the_interval_finite():
    """FCOS seed 0 finds every box (AP 100), seed 1 half of them (AP about 50): their mean
    (about 75) is above what seed 1 ever reaches. The common AP is 90% of the weakest run's
    final AP, so every run reaches it and the time saved has a finite interval: FCOS gets
    there by 30 s, the baseline at 120 + 120 * target / 100 s."""
    dataset = crowded_case()
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    weights = bootstrap.image_weights(40, 200, seed=0)
    fcos = make_series(
        "fcos",
        "FCOS",
        [truth, truth[::2]],
        dataset,
        weights,
        curves=[[(30.0, truth), (60.0, truth)], [(30.0, truth[::2]), (60.0, truth[::2])]],
    )
    baseline = make_series(
        "baseline", "GeneralizedRCNN", [truth], dataset, weights, [[(120.0, []), (240.0, truth)]]
    )
    weakest = min(fcos.per_seed[ALL]["AP"])
    assert weakest < 0.9 * fcos.point[ALL]["AP"]  # the old target, 90% of the mean, is missed

    time = judge_claims(fcos, baseline, num_crowded=40, num_clear=20)[0]
    assert f"time to {0.9 * weakest:.1f} AP" in time.evidence
    assert math.isfinite(time.difference.low) and time.difference.low > 0.5
    assert time.verdict == SUPPORTED


def test_overlap_verdict_needs_enough_boxes():
    dataset = crowded_case()
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    weights = bootstrap.image_weights(40, 50, seed=0)
    a = make_series("a", "FCOS", [truth], dataset, weights)
    b = make_series("b", "GeneralizedRCNN", [truth], dataset, weights)
    assert judge_claims(a, b, num_crowded=40, num_clear=29)[3].verdict == INCONCLUSIVE
    assert judge_claims(a, b, num_crowded=29, num_clear=40)[3].verdict == INCONCLUSIVE
    too_few = judge_claims(a, b, num_crowded=40, num_clear=29)[3]
    assert too_few.difference is None and "30 needed" in too_few.evidence


@pytest.mark.parametrize(
    "value, low, high, expected",
    [
        (3.0, 0.0, 6.0, 2.25),  # half-width 3 must shrink to 3 - 1 = 2: (3 / 2)² the data
        (-4.0, -8.0, 0.0, 16 / 9),  # against the claim: the upper side, 4 down to 3
        (3.0, 2.0, 4.0, 1.0),  # already supported
        (0.5, -2.0, 3.0, None),  # estimate inside the ±1 margin: never settled
        (float("nan"), 0.0, 1.0, None),
    ],
)
def test_data_to_settle_by_hand(value, low, high, expected):
    factor = data_to_settle(value, low, high, margin=1.0)
    assert factor == (None if expected is None else pytest.approx(expected))

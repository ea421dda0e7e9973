"""Plateaus decided from schedule runs, and the "at convergence" budget of the report
(fcos_d2.comparison.convergence, report), on hand-made runs with known AP."""

import json

import numpy as np
import pytest
from comparison_cases import (
    crowded_case,
    detection,
    make_series,
    mask_detection,
    with_box_masks,
    write_run,
)

from fcos_d2.comparison import bootstrap
from fcos_d2.comparison.statistics import mean_curve

# One class, every detection exact and scored alike: AP is COCO's 101-point precision at the
# recall reached, i.e. (recall thresholds 0, 0.01, ... up to the recall) / 101.
HALF_AP = 100 * 51 / 101  # 30 of the 60 boxes
THREE_QUARTERS_AP = 100 * 76 / 101  # 45 of 60


@pytest.fixture
def saved_runs(tmp_path):
    """FCOS: 1x finds half the boxes, 2x and 4x all (plateau at 2x). Mask R-CNN: 1x half,
    2x three quarters, no 4x (still rising at 2x). Faster R-CNN: 1x only. Two seeds each."""
    dataset = with_box_masks(crowded_case())
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    boxes = [(a["image_id"], a["bbox"]) for a in dataset["annotations"]]
    truth = [detection(i, b, 0.9) for i, b in boxes]
    masks = [mask_detection(i, b, 0.9) for i, b in boxes]
    runs = tmp_path / "runs"
    for seed in (0, 1):
        for multiple, found in ((1, 30), (2, 60), (4, 60)):
            write_run(
                runs,
                "fcos",
                "FCOS",
                "iterations",
                seed,
                [(10 * multiple, 20.0 * multiple, truth[:found])],
                schedule_multiple=multiple,
            )
        for multiple, found in ((1, 30), (2, 45)):
            write_run(
                runs,
                "mask",
                "GeneralizedRCNN",
                "iterations",
                seed,
                [(10 * multiple, 90.0 * multiple, masks[:found])],
                with_masks=True,
                schedule_multiple=multiple,
            )
        write_run(runs, "faster", "GeneralizedRCNN", "iterations", seed, [(10, 60.0, truth[:30])])
    return runs


def test_the_plateau_is_the_shortest_schedule_whose_doubling_gains_under_one_point(
    saved_runs, tmp_path
):
    from fcos_d2.comparison.report import write_report

    summary = write_report(str(saved_runs), str(tmp_path / "report"), num_resamples=50)
    plateaus = summary["plateaus"]
    fcos, mask, faster = plateaus["fcos"], plateaus["mask"], plateaus["faster"]
    assert (fcos["multiple"], fcos["reached"]) == (2, True)
    first, second = fcos["doublings"]
    assert first["gains"]["hand"]["value"] == pytest.approx(100 - HALF_AP)
    assert second["gains"]["hand"]["value"] == pytest.approx(0.0)
    assert first["seeds"] == [0, 1]
    assert (mask["multiple"], mask["reached"]) == (2, False)
    assert mask["doublings"][0]["gains"]["hand"]["value"] == pytest.approx(
        THREE_QUARTERS_AP - HALF_AP
    )
    assert mask["status"].startswith("still rising at 2×")
    assert (faster["multiple"], faster["reached"], faster["doublings"]) == (1, False, [])

    # At convergence: FCOS at 2x against Mask R-CNN at 2x; Faster R-CNN at its only schedule.
    converged = [v for v in summary["verdicts"] if v["budget"] == "at convergence"]
    pairs = {(v["fcos"], v["baseline"]) for v in converged}
    assert pairs == {
        ("fcos (iterations ×2)", "mask (iterations ×2)"),
        ("fcos (iterations ×2)", "faster (iterations)"),
    }
    precision = next(
        v for v in converged if v["baseline_name"] == "mask" and v["claim"].startswith("Lower")
    )
    assert precision["difference"][0] == pytest.approx(THREE_QUARTERS_AP - 100)
    time = next(v for v in converged if v["baseline_name"] == "mask" and "time" in v["claim"])
    # 20 s an iteration-ten for FCOS, 90 for Mask R-CNN: 40 s (2x) against 180 s (2x).
    assert "to its own plateau: FCOS 0.7 min (2×" in time["evidence"]
    assert "vs 3.0 min (2×" in time["evidence"] and "still rising" in time["evidence"]
    assert "FCOS's time 22% of the baseline's" in time["evidence"]

    text = (tmp_path / "report" / "report.md").read_text()
    assert "## At convergence" in text
    assert "### Verdicts: FCOS against Mask R-CNN (mask)" in text
    assert "### Verdicts: FCOS against Faster R-CNN (faster)" in text
    assert (tmp_path / "report" / "ap_vs_schedule.png").stat().st_size > 1000


def test_an_overlap_group_with_too_few_boxes_gets_no_interval(saved_runs, tmp_path):
    """crowded_case: 20 boxes overlap nothing, none overlap at IoU (0, 0.3], 40 at 0.6."""
    from fcos_d2.comparison.report import write_report

    write_report(str(saved_runs), str(tmp_path / "report"), num_resamples=20)
    text = (tmp_path / "report" / "report.md").read_text()
    by_overlap = text.split("### By overlap")[1].splitlines()
    header = next(line for line in by_overlap if line.startswith("| model (schedule)"))
    assert "no overlap (20 boxes)" in header
    row = next(line for line in by_overlap if line.startswith("| fcos (iterations) "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["too few boxes (20)", "too few boxes (0)"]
    assert "[" in cells[3]  # IoU > 0.3: 40 boxes, an interval
    falls = text.split("falls from boxes that overlap nothing")[1].splitlines()
    row = next(line for line in falls if line.startswith("| fcos (iterations) "))
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["too few boxes (20)"] * 3


def test_the_mean_learning_curve_averages_the_seeds_with_a_band_around_it():
    dataset = crowded_case()
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    weights = bootstrap.image_weights(40, 100, seed=0)
    series = make_series(
        "fcos",
        "FCOS",
        [truth, truth[:30]],
        dataset,
        weights,
        curves=[[(10.0, truth[:30]), (20.0, truth)], [(10.0, truth[:30]), (20.0, truth[:30])]],
    )
    seconds, mean, low, high = mean_curve(series)
    assert seconds.tolist() == [10.0, 20.0]
    assert mean == pytest.approx([HALF_AP, (100 + HALF_AP) / 2])
    assert np.all(low <= mean) and np.all(mean <= high)
    assert high[1] - low[1] > 10  # the seeds differ by half the AP: a wide band

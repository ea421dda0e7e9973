"""The comparison report (fcos_d2.comparison.report) end to end from saved runs."""

import json

import pytest
from comparison_cases import crowded_case, detection, write_run

from fcos_d2.comparison.statistics import ALL
from fcos_d2.comparison.verdicts import (
    INCONCLUSIVE,
    SUPPORTED,
)


def test_report_end_to_end_from_saved_runs(tmp_path):
    from fcos_d2.comparison.report import write_report

    dataset = crowded_case()
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(
            runs, "fcos", "FCOS", "iterations", seed, [(10, 20.0, truth[::2]), (20, 40.0, truth)]
        )
        write_run(runs, "fcos", "FCOS", "time budget", seed, [(40, 80.0, truth)], 90.0)
        write_run(
            runs, "mask", "GeneralizedRCNN", "iterations", seed, [(10, 60.0, []), (20, 90.0, truth)]
        )
    summary = write_report(str(runs), str(tmp_path / "report"), num_resamples=50)

    verdicts = {(v["budget"], v["claim"]): v["verdict"] for v in summary["verdicts"]}
    assert len(verdicts) == 8
    assert verdicts[("equal iterations", "Training is simpler and takes less time")] == SUPPORTED
    assert verdicts[("equal iterations", "Higher recall")] == INCONCLUSIVE  # identical detections
    fcos = summary["datasets"]["hand"]["fcos (iterations)"]
    assert fcos["metrics"][ALL]["R50"]["value"] == pytest.approx(100.0)
    assert fcos["train_seconds"] == [40.0, 40.0]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## hand (40 images, 60 boxes)" in text and "**supported**" in text
    assert text.startswith("# FCOS against R-CNN baselines")
    for plot in ("ap_vs_time.png", "recall_by_overlap.png", "recall_vs_iou.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000


def test_equal_time_pairs_the_baseline_budget_run_or_the_schedule_the_budget_came_from(tmp_path):
    """FCOS's budget is 90 s. An R-CNN whose schedule took 90 s set that budget and is met
    at its schedule; one whose schedule took 60 s is met only by its own budget runs, and
    with none it gets no equal-time verdicts."""
    from fcos_d2.comparison.results import DatasetResults, group_series, load_runs, pairings

    dataset = crowded_case()
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]

    def equal_time_pairs(rcnn_schedule_seconds, rcnn_budget_run):
        runs = tmp_path / f"runs_{rcnn_schedule_seconds}_{rcnn_budget_run}"
        write_run(runs, "fcos", "FCOS", "iterations", 0, [(20, 40.0, truth)])
        write_run(runs, "fcos", "FCOS", "time budget", 0, [(45, 90.0, truth)], 90.0)
        schedule = [(20, rcnn_schedule_seconds, truth)]
        write_run(runs, "rcnn", "GeneralizedRCNN", "iterations", 0, schedule)
        if rcnn_budget_run:
            write_run(runs, "rcnn", "GeneralizedRCNN", "time budget", 0, [(30, 90.0, truth)], 90.0)
        results = DatasetResults("hand", group_series(load_runs(str(runs))), 5, seed=0)
        pairs = [(f.label, b.label) for budget, f, b in pairings(results) if budget == "equal time"]
        assert all(f == "fcos (time budget)" for f, _ in pairs)
        return [b for _, b in pairs]

    assert equal_time_pairs(90.0, rcnn_budget_run=False) == ["rcnn (iterations)"]
    assert equal_time_pairs(60.0, rcnn_budget_run=False) == []
    assert equal_time_pairs(60.0, rcnn_budget_run=True) == ["rcnn (time budget)"]


def test_with_a_clock_training_time_is_iterations_times_each_models_timed_pace(tmp_path):
    """Timed back-to-back, FCOS takes 1 s an iteration and Mask R-CNN 5 s; the runs' own wall
    clocks (another machine, 45x slower for the budget run) are shown but not used. The
    budget run records the model its budget came from, so it meets Mask R-CNN's schedule
    though its budget (100 s on the clock) is not Mask R-CNN's wall-clock time."""
    from fcos_d2.comparison.report import write_report
    from fcos_d2.comparison.results import DatasetResults, group_series, load_runs, pairings

    dataset = crowded_case()
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    runs = tmp_path / "runs"
    write_run(runs, "fcos", "FCOS", "iterations", 0, [(10, 20.0, truth[::2]), (20, 40.0, truth)])
    write_run(
        runs, "mask", "GeneralizedRCNN", "iterations", 0, [(10, 500.0, []), (20, 900.0, truth)]
    )
    write_run(
        runs, "fcos", "FCOS", "time budget", 0, [(100, 4500.0, truth)], 100.0, budget_from="mask"
    )
    clock = {
        "seconds_per_iteration": {"fcos": 1.0, "mask": 5.0},
        "rounds": {"fcos": [1.0, 1.0], "mask": [5.0, 5.0]},
        "machine": {"processor": "hand", "cpus": 2},
        "measured": "today",
        "iterations_timed": 30,
        "warmup_iterations": 10,
    }
    results = DatasetResults("hand", group_series(load_runs(str(runs))), 5, seed=0, clock=clock)
    seconds = {s.label: list(s.curve_ap[0][0]) for s in results.series}
    assert seconds == {
        "fcos (iterations)": [10.0, 20.0],
        "mask (iterations)": [50.0, 100.0],
        "fcos (time budget)": [100.0],
    }
    pairs = [(b, f.label, m.label) for b, f, m in pairings(results)]
    assert ("equal time", "fcos (time budget)", "mask (iterations)") in pairs

    summary = write_report(str(runs), str(tmp_path / "report"), num_resamples=20, clock=clock)
    mask = summary["datasets"]["hand"]["mask (iterations)"]
    assert mask["clock_train_seconds"] == [100.0] and mask["train_seconds"] == [900.0]
    time_verdict = next(
        v for v in summary["verdicts"] if v["budget"] == "equal iterations" and "time" in v["claim"]
    )
    assert "s/iter timed back-to-back 1.000 vs 5.000" in time_verdict["evidence"]
    assert time_verdict["verdict"] == SUPPORTED  # 20 s against 100 s on the clock
    assert (
        "timed back-to-back on one machine (hand, 2 CPUs"
        in (tmp_path / "report" / "report.md").read_text()
    )


def test_variants_are_reported_against_the_judged_model_of_their_kind(tmp_path):
    """A config variant of FCOS is compared with the judged FCOS, paired over images:
    identical detections differ by exactly [0, 0]; half the boxes found lose recall."""
    from fcos_d2.comparison.report import write_report

    dataset = crowded_case()
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, "fcos", "FCOS", "iterations", seed, [(20, 40.0, truth)])
        write_run(runs, "fcos_same", "FCOS", "iterations", seed, [(20, 40.0, truth)])
        write_run(runs, "fcos_half", "FCOS", "iterations", seed, [(20, 40.0, truth[::2])])
    summary = write_report(str(runs), str(tmp_path / "report"), num_resamples=50)

    variants = {v["variant"]: v for v in summary["variants"]["hand"]}
    assert set(variants) == {"fcos_half (iterations)", "fcos_same (iterations)"}
    assert {v["reference"] for v in variants.values()} == {"fcos (iterations)"}
    same = variants["fcos_same (iterations)"]["differences"]["recall@0.5"]
    assert (same["value"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    half = variants["fcos_half (iterations)"]["differences"]["recall@0.5"]
    assert half["value"] == pytest.approx(-50.0) and half["high"] < 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "### Variants against their reference" in text
    assert "fcos_half (iterations) − fcos" in text
    assert text.startswith("# FCOS variants against the default FCOS")  # no R-CNN here


def test_a_run_trained_for_the_judged_models_schedule_time_meets_its_schedule_runs(tmp_path):
    """Mask R-CNN's schedule set the budget (``budget_from``) and it has no budget runs: the
    R-CNN variants trained for that time (Faster R-CNN, Mask R-CNN with FCOS proposals) meet
    Mask R-CNN's schedule runs, not each other; a variant trained for a fixed budget of
    minutes (no ``budget_from``) meets the first R-CNN budget run instead."""
    from fcos_d2.comparison.report import write_report

    dataset = crowded_case()
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    runs = tmp_path / "runs"
    rcnn = "GeneralizedRCNN"
    write_run(runs, "mask", rcnn, "iterations", 0, [(20, 100.0, truth)])
    write_run(
        runs, "faster", rcnn, "time budget", 0, [(30, 100.0, truth[::2])], 100.0, budget_from="mask"
    )
    write_run(
        runs,
        "mask_fcos",
        rcnn,
        "time budget",
        0,
        [(21, 100.0, truth)],
        100.0,
        budget_from="mask",
        proposal_generator="FCOS",
    )
    summary = write_report(str(runs), str(tmp_path / "report"), num_resamples=20)
    variants = {v["variant"]: v for v in summary["variants"]["hand"]}
    assert {name: v["reference"] for name, v in variants.items()} == {
        "faster (time budget)": "mask (iterations)",
        "mask_fcos (time budget)": "mask (iterations)",
    }
    same = variants["mask_fcos (time budget)"]["differences"]["recall@0.5"]
    assert (same["value"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    half = variants["faster (time budget)"]["differences"]["recall@0.5"]
    assert half["value"] == pytest.approx(-50.0)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "faster (time budget) − mask (iterations)" in text

    fixed = tmp_path / "fixed"
    write_run(fixed, "mask", rcnn, "iterations", 0, [(20, 100.0, truth)])
    write_run(fixed, "faster", rcnn, "time budget", 0, [(30, 60.0, truth[::2])], 60.0)
    write_run(
        fixed,
        "mask_fcos",
        rcnn,
        "time budget",
        0,
        [(21, 60.0, truth)],
        60.0,
        proposal_generator="FCOS",
    )
    summary = write_report(str(fixed), str(tmp_path / "fixed_report"), num_resamples=20)
    references = {v["variant"]: v["reference"] for v in summary["variants"]["hand"]}
    assert references == {"mask_fcos (time budget)": "faster (time budget)"}


@pytest.mark.parametrize(
    "difference, factor, expected",
    [
        ([3.0, 0.5, 5.5], 1.6, "≈ 1.6× the images and seeds"),
        ([0.5, -2.0, 3.0], None, "estimate within the margin"),
        ([53.0, float("-inf"), 64.0], None, "unbounded interval"),
    ],
)
def test_to_settle_text_says_why_an_inconclusive_verdict_is_open(difference, factor, expected):
    from fcos_d2.comparison.tables import settle_text

    record = {"verdict": INCONCLUSIVE, "difference": difference, "data_to_settle": factor}
    assert settle_text(record).startswith(expected)
    assert settle_text({**record, "verdict": SUPPORTED}) == ""


def test_proposals_table_gives_mean_and_seed_spread_and_a_dash_for_absent_sizes():
    """AR over seeds as "mean ±sd" (sd with ddof 1), one decimal even when round, and "–"
    where COCO's AR is NaN (no ground-truth box of that size); R-CNNs without proposals and
    FCOS runs are left out."""
    from types import SimpleNamespace

    from fcos_d2.comparison.tables import PROPOSAL_COLUMNS, proposals_table

    def proposals(ar):
        return {"hand": {**{key: ar for key in PROPOSAL_COLUMNS}, "ARl@1000": float("nan")}}

    rcnn = SimpleNamespace(
        label="rcnn (iterations)",
        runs=[
            {"proposal_generator": "FCOS", "proposals": proposals(50.0)},
            {"proposal_generator": "FCOS", "proposals": proposals(60.0)},
        ],
    )
    fcos = SimpleNamespace(label="fcos (iterations)", runs=[{}])
    text = proposals_table(SimpleNamespace(dataset="hand", series=[fcos, rcnn]))

    lines = text.splitlines()
    assert len(lines) == 3 and "fcos (iterations)" not in text
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["rcnn (iterations)", "FCOS", "2", *["55.0 ±7.1"] * 4, "–"]
    single = SimpleNamespace(label="one", runs=[rcnn.runs[0]])
    assert "| 50.0 " in proposals_table(SimpleNamespace(dataset="hand", series=[single]))


@pytest.mark.parametrize("train_seconds, flagged", [(100.0, True), (94.0, False), (80.0, False)])
def test_a_budget_run_that_overran_its_budget_is_flagged(train_seconds, flagged):
    """Without a clock: a 90-s budget allows 5% more (94.5 s); 100 s is flagged, +11%."""
    from types import SimpleNamespace

    from fcos_d2.comparison.statistics import Series
    from fcos_d2.comparison.tables import overrun_notes

    run = {
        "seed": 0,
        "budget_seconds": 90.0,
        "train_seconds": train_seconds,
        "max_iter": 300,
        "train_s_per_iter": train_seconds / 300,
        "calibrated_s_per_iter": 0.3,
    }
    series = Series("fcos", "FCOS", "time budget", [run])
    other = Series("fcos", "FCOS", "iterations", [{**run, "budget_seconds": None}])
    notes = overrun_notes(SimpleNamespace(series=[other, series]))
    assert bool(notes) == flagged
    if flagged:
        assert "fcos (time budget), seed 0: trained 1.7 min for a 1.5-min budget (+11%" in notes[2]
    # A budget sized on a clock this report was not given is not judged by its wall clock.
    run["budget_from"] = "mask"
    assert not overrun_notes(SimpleNamespace(series=[other, series]))


@pytest.mark.parametrize("fcos_iterations, flagged", [(7298, True), (5625, False), (5400, False)])
def test_on_the_clock_a_budget_run_is_held_to_its_partners_clock_time(fcos_iterations, flagged):
    """Mask R-CNN's 1500 iterations at 2.816 s take 70.4 min on the clock. A budget run sized
    on another machine's wall clock (budget = Mask R-CNN's 1828 s there) that trained 7298
    iterations at 0.75 s took 91.2 min on the clock: +30%, flagged; 5625 and 5400 iterations
    are within 5%."""
    from types import SimpleNamespace

    from fcos_d2.comparison.statistics import Series
    from fcos_d2.comparison.tables import overrun_notes

    mask = {"seed": 0, "max_iter": 1500, "train_seconds": 1828.0, "budget_seconds": None}
    fcos = {
        "seed": 0,
        "max_iter": fcos_iterations,
        "train_seconds": 1725.0,
        "budget_seconds": 1828.0,
    }
    results = SimpleNamespace(
        series=[
            Series("mask", "GeneralizedRCNN", "iterations", [mask], clock_s_per_iter=2.816),
            Series("fcos", "FCOS", "time budget", [fcos], clock_s_per_iter=0.75),
        ]
    )
    notes = overrun_notes(results)
    assert bool(notes) == flagged
    if flagged:
        assert notes[2] == (
            "- fcos (time budget), seed 0: 91.2 min on the clock (7298 iterations at 0.750 s) "
            "against mask's 70.4 min (+30%)."
        )

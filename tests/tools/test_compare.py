"""tools/compare.py end to end (tiny runs, a time budget) and its plan of runs."""

import json
import os

import pytest


@pytest.mark.slow
def test_compare_cli_end_to_end_with_a_time_budget(tmp_path):
    """tools/compare.py trains FCOS and Mask R-CNN (a few iterations, tiny data), FCOS again
    for a time budget, and writes the report; a second call keeps the runs."""
    import compare
    from conftest import CONFIGS

    from fcos_d2.data.datasets import generate_shapes_split

    registrations = []
    for split, count in (("cmp_train", 6), ("cmp_val", 4)):
        json_path = generate_shapes_split(
            str(tmp_path / "data"), split, count, 64, seed=9, progress=False
        )
        registrations += [
            "--register-coco",
            f"compare_{split}",
            json_path,
            str(tmp_path / "data" / split),
        ]
    tiny = [
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "64",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "64",
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "0.01",
    ]
    fcos = str(CONFIGS / "quick_schedules" / "FCOS_R_18_quick.yaml")
    mask = str(CONFIGS / "baselines" / "mask_rcnn_R_18_shapes_cpu.yaml")
    argv = [
        *registrations,
        "--config-file",
        fcos,
        "--config-file",
        mask,
        "--budget-minutes",
        "0.02",
        "--datasets",
        "compare_cmp_val",
        "--train-datasets",
        "('compare_cmp_train',)",
        "--evaluations",
        "2",
        "--resamples",
        "20",
        "--output",
        str(tmp_path / "out"),
        *tiny,
    ]
    assert compare.main(argv) == 0
    runs_dir = tmp_path / "out" / "runs"
    runs = sorted(p.name for p in runs_dir.iterdir())
    assert runs == [
        "FCOS_R_18_quick__iterations__seed0",
        "FCOS_R_18_quick__time_budget__seed0",
        "mask_rcnn_R_18_shapes_cpu__iterations__seed0",
        "mask_rcnn_R_18_shapes_cpu__time_budget__seed0",
    ]
    budget_run = json.loads((runs_dir / runs[1] / "run.json").read_text())
    mask_run = json.loads((runs_dir / runs[2] / "run.json").read_text())
    assert budget_run["budget_seconds"] == pytest.approx(1.2) and budget_run["max_iter"] >= 30
    # The iterations that fit come from FCOS's own schedule run, not from a separate timing.
    schedule_run = json.loads((runs_dir / runs[0] / "run.json").read_text())
    assert budget_run["calibration"] == "schedule run"
    assert budget_run["calibrated_s_per_iter"] == pytest.approx(
        schedule_run["train_seconds"] / schedule_run["max_iter"]
    )
    assert [p["iteration"] for p in mask_run["curve"]] == [2, 4]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {v["budget"] for v in report["verdicts"]} == {"equal iterations", "equal time"}
    # The R-CNN records its proposals' recall; FCOS has no proposals.
    recall = mask_run["proposals"]["compare_cmp_val"]
    assert 0 <= recall["AR@100"] <= recall["AR@1000"] <= 100
    assert "proposals" not in budget_run
    modified = (runs_dir / runs[2] / "run.json").stat().st_mtime
    assert compare.main(argv) == 0  # resumes: every run.json already there
    assert (runs_dir / runs[2] / "run.json").stat().st_mtime == modified

    # A run from before proposals were recorded gets them from its model_final.pth: the
    # very numbers the run measured on its final model.
    from fcos_d2.comparison import runner

    del mask_run["proposals"]
    (runs_dir / runs[2] / "run.json").write_text(json.dumps(mask_run))
    assert runner.add_proposal_recall(str(runs_dir / runs[2]))
    again = json.loads((runs_dir / runs[2] / "run.json").read_text())["proposals"]
    assert again["compare_cmp_val"] == pytest.approx(recall, nan_ok=True)  # no medium/large
    assert not runner.add_proposal_recall(str(runs_dir / runs[0]))  # FCOS: nothing to add


def test_time_budget_is_the_named_models_measured_time_per_seed(monkeypatch, tmp_path):
    """--budget-from: every other model trains, seed by seed, for as long as that model did."""
    import compare

    calls = []

    def fake_run(args, config, run_dir, seed, budget_seconds, seconds_per_iter=None):
        calls.append((config, seed, budget_seconds))
        return {"train_seconds": 100.0 + seed}

    monkeypatch.setattr(compare, "run_in_subprocess", fake_run)
    args = compare.argument_parser().parse_args(["--seeds", "2", "--output", str(tmp_path)])
    args.budget_from = "mask.yaml"
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml", "faster.yaml"])
    assert ("fcos.yaml", 0, 100.0) in calls and ("fcos.yaml", 1, 101.0) in calls
    assert ("faster.yaml", 1, 101.0) in calls
    assert not [c for c in calls if c[0] == "mask.yaml" and c[2] is not None]
    # The judged pair first, seed by seed; the other models after: their schedule runs for
    # every seed, then their budget runs.
    assert [c[0] for c in calls].index("faster.yaml") > max(
        i for i, c in enumerate(calls) if c[0] == "fcos.yaml"
    )
    assert [c for c in calls if c[0] == "faster.yaml"] == [
        ("faster.yaml", 0, None),
        ("faster.yaml", 1, None),
        ("faster.yaml", 0, 100.0),
        ("faster.yaml", 1, 101.0),
    ]


def test_budget_runs_take_their_pace_from_the_models_schedule_run(monkeypatch, tmp_path):
    """A budget run gets the iterations that fit at its own schedule run's measured pace
    (time / iterations, same seed), not a separate timing of a few iterations."""
    import compare

    paces = {}

    def fake_run(args, config, run_dir, seed, budget_seconds, seconds_per_iter=None):
        if budget_seconds is None:
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, "run.json"), "w") as f:
                json.dump({"train_seconds": 30.0 * (seed + 1), "max_iter": 100}, f)
        else:
            paces[(config, seed)] = seconds_per_iter
        return {"train_seconds": 500.0}

    monkeypatch.setattr(compare, "run_in_subprocess", fake_run)
    args = compare.argument_parser().parse_args(["--seeds", "2", "--output", str(tmp_path)])
    args.budget_from = "mask.yaml"
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml"])
    assert paces == {("fcos.yaml", 0): pytest.approx(0.3), ("fcos.yaml", 1): pytest.approx(0.6)}


def test_each_run_waits_while_the_hold_file_exists(monkeypatch, tmp_path):
    import compare

    hold = tmp_path / "HOLD"
    hold.touch()
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            hold.unlink()

    monkeypatch.setattr(compare.time, "sleep", sleep)
    monkeypatch.setattr(compare, "run_in_subprocess", lambda *a: {"train_seconds": 1.0})
    args = compare.argument_parser().parse_args(
        ["--output", str(tmp_path), "--hold-file", str(hold), "--seeds", "1"]
    )
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml"])
    assert len(sleeps) == 3 and not hold.exists()

"""tools/compare.py end to end (tiny runs, a time budget) and its plan of runs."""

import json
import os

import pytest


@pytest.mark.slow
def test_compare_cli_end_to_end_with_a_time_budget(monkeypatch, tmp_path):
    """tools/compare.py times both models, trains FCOS and Mask R-CNN (a few iterations,
    tiny data), each again for a time budget on that clock and at twice its schedule, and
    writes the report with its three budgets; a second call keeps the runs and the timing."""
    import compare
    from conftest import CONFIGS

    from fcos_d2.data.datasets import generate_shapes_split

    monkeypatch.setitem(compare.TIMING, False, {"rounds": 2, "warmup": 1, "timed": 2})

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
    # A tenth of the shapes LR: with no warm-up, Mask R-CNN from scratch at 0.02 diverged in
    # its 30-iteration budget run (NaN boxes at iteration 26) on an AMD EPYC.
    tiny = [
        "SOLVER.BASE_LR",
        "0.002",
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
        "--schedules",
        "1",
        "2",
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
        "FCOS_R_18_quick__iterations_x2__seed0",
        "FCOS_R_18_quick__time_budget__seed0",
        "mask_rcnn_R_18_shapes_cpu__iterations__seed0",
        "mask_rcnn_R_18_shapes_cpu__iterations_x2__seed0",
        "mask_rcnn_R_18_shapes_cpu__time_budget__seed0",
    ]
    runs = [r for r in runs if "_x2_" not in r]  # the indices below
    doubled = json.loads(
        (runs_dir / "FCOS_R_18_quick__iterations_x2__seed0" / "run.json").read_text()
    )
    assert (doubled["max_iter"], doubled["schedule_multiple"]) == (8, 2)
    budget_run = json.loads((runs_dir / runs[1] / "run.json").read_text())
    mask_run = json.loads((runs_dir / runs[2] / "run.json").read_text())
    clock = json.loads((tmp_path / "out" / "timing.json").read_text())
    paces = clock["seconds_per_iteration"]
    assert set(paces) == {"FCOS_R_18_quick", "mask_rcnn_R_18_shapes_cpu"}
    assert [len(r) for r in clock["rounds"].values()] == [2, 2]
    # The iterations that fit come from the clock: FCOS's timed pace.
    assert budget_run["budget_seconds"] == pytest.approx(1.2)
    assert budget_run["calibrated_s_per_iter"] == pytest.approx(paces["FCOS_R_18_quick"])
    assert budget_run["max_iter"] == max(30, int(1.2 / paces["FCOS_R_18_quick"]))
    assert [p["iteration"] for p in mask_run["curve"]] == [2, 4]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {v["budget"] for v in report["verdicts"]} == {
        "equal iterations",
        "equal time",
        "at convergence",
    }
    assert set(report["plateaus"]) == {"FCOS_R_18_quick", "mask_rcnn_R_18_shapes_cpu"}
    # Training time in the report is on the clock: iterations times the timed pace.
    mask_report = report["datasets"]["compare_cmp_val"]["mask_rcnn_R_18_shapes_cpu (iterations)"]
    assert mask_report["clock_train_seconds"] == [
        pytest.approx(4 * paces["mask_rcnn_R_18_shapes_cpu"])
    ]
    assert "timed back-to-back" in (tmp_path / "out" / "report.md").read_text()
    # The R-CNN records its proposals' recall; FCOS has no proposals.
    recall = mask_run["proposals"]["compare_cmp_val"]
    assert 0 <= recall["AR@100"] <= recall["AR@1000"] <= 100
    assert "proposals" not in budget_run
    modified = [(runs_dir / runs[2] / "run.json").stat().st_mtime]
    modified.append((tmp_path / "out" / "timing.json").stat().st_mtime)
    assert compare.main(argv) == 0  # resumes: every run.json and the timing already there
    assert (runs_dir / runs[2] / "run.json").stat().st_mtime == modified[0]
    assert (tmp_path / "out" / "timing.json").stat().st_mtime == modified[1]

    # The trained models' inference, back-to-back on the same images, in the report.
    timed_runs = [
        "FCOS_R_18_quick__iterations__seed0",
        "mask_rcnn_R_18_shapes_cpu__iterations__seed0",
    ]
    assert (
        compare.main(
            ["--report-only", "--time-inference", *timed_runs, "--time-images", "3", *argv]
        )
        == 0
    )
    timed = json.loads((tmp_path / "out" / "inference_timing.json").read_text())
    assert timed["images"] == 3 and set(timed["models"]) == set(timed_runs)
    assert all(m["median_s"] > 0 for m in timed["models"].values())
    assert "Inference timed back-to-back" in (tmp_path / "out" / "report.md").read_text()

    # A run from before proposals were recorded gets them from its model_final.pth: the
    # very numbers the run measured on its final model.
    from fcos_d2.comparison import runner

    del mask_run["proposals"]
    (runs_dir / runs[2] / "run.json").write_text(json.dumps(mask_run))
    assert runner.add_proposal_recall(str(runs_dir / runs[2]))
    again = json.loads((runs_dir / runs[2] / "run.json").read_text())["proposals"]
    assert again["compare_cmp_val"] == pytest.approx(recall, nan_ok=True)  # no medium/large
    assert not runner.add_proposal_recall(str(runs_dir / runs[0]))  # FCOS: nothing to add


def fake_clock(monkeypatch, compare, paces, measured=None):
    """Timing by hand (``paces``: model name -> s/iter); ``measured`` collects what is timed."""

    def measure(configs, opts, output_dir, **schedule):
        if measured is not None:
            measured.append([compare.timing.model_name(c) for c in configs])
        return {"seconds_per_iteration": {compare.timing.model_name(c): paces[c] for c in configs}}

    monkeypatch.setattr(compare.timing, "measure_training_speed", measure)
    monkeypatch.setattr(compare, "schedule_iterations", lambda args, config: 200)


def test_time_budget_is_the_named_models_schedule_on_the_clock(monkeypatch, tmp_path):
    """--budget-from: every other model trains, seed by seed, for as long as that model's
    schedule takes on the clock (200 iterations at 1.5 s), at its own timed pace."""
    import compare

    calls = []

    def fake_run(
        args, config, run_dir, seed, budget_seconds, pace=None, budget_model=None, multiple=1
    ):
        calls.append((config, seed, budget_seconds, pace, budget_model))
        return {"train_seconds": 100.0 + seed}

    monkeypatch.setattr(compare, "run_in_subprocess", fake_run)
    fake_clock(monkeypatch, compare, {"fcos.yaml": 0.25, "mask.yaml": 1.5, "faster.yaml": 1.0})
    args = compare.argument_parser().parse_args(["--seeds", "2", "--output", str(tmp_path)])
    args.budget_from = "mask.yaml"
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml", "faster.yaml"])
    assert ("fcos.yaml", 0, 300.0, 0.25, "mask") in calls
    assert ("fcos.yaml", 1, 300.0, 0.25, "mask") in calls
    assert not [c for c in calls if c[0] == "mask.yaml" and c[2] is not None]
    # The judged pair first, seed by seed; the other models after: their schedule runs for
    # every seed, then their budget runs.
    assert [c[0] for c in calls].index("faster.yaml") > max(
        i for i, c in enumerate(calls) if c[0] == "fcos.yaml"
    )
    assert [c for c in calls if c[0] == "faster.yaml"] == [
        ("faster.yaml", 0, None, None, None),
        ("faster.yaml", 1, None, None, None),
        ("faster.yaml", 0, 300.0, 1.0, "mask"),
        ("faster.yaml", 1, 300.0, 1.0, "mask"),
    ]


def test_timing_is_kept_when_it_times_every_model_and_redone_for_all_when_not(
    monkeypatch, tmp_path
):
    """The clock is measured once, before any run, and written to --output and --archive;
    a later comparison with a model it lacks times every model again, back-to-back."""
    import compare

    monkeypatch.setattr(compare, "run_in_subprocess", lambda *a, **k: {"train_seconds": 1.0})
    monkeypatch.setattr(compare.archive, "pack_run", lambda run_dir, archive_dir: None)
    measured = []
    paces = {"fcos.yaml": 0.25, "mask.yaml": 1.5, "faster.yaml": 1.0}
    fake_clock(monkeypatch, compare, paces, measured)
    argv = ["--seeds", "1", "--output", str(tmp_path / "out"), "--archive", str(tmp_path / "a")]
    args = compare.argument_parser().parse_args(argv)
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml"])
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml"])
    assert measured == [["fcos", "mask"]]
    for folder in ("out", "a"):
        written = json.loads((tmp_path / folder / "timing.json").read_text())
        assert written["seconds_per_iteration"] == {"fcos": 0.25, "mask": 1.5}
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml", "faster.yaml"])
    assert measured == [["fcos", "mask"], ["fcos", "mask", "faster"]]


def test_a_kept_budget_run_from_a_model_is_not_refused_for_a_changed_clock(tmp_path):
    """A budget from a model follows the clock (re-timed, it changes); only a fixed budget
    (--budget-minutes) must match the kept run's."""
    import compare

    run_dir = tmp_path / "runs" / "fcos__time_budget__seed0"
    run_dir.mkdir(parents=True)
    kept_run = {"budget_seconds": 1828.0, "name": "fcos", "meta_architecture": "FCOS"}
    (run_dir / "run.json").write_text(json.dumps(kept_run))
    args = compare.argument_parser().parse_args(["--output", str(tmp_path)])
    kept = compare.run_in_subprocess(args, "fcos.yaml", str(run_dir), 0, 1700.0, 0.25, "mask")
    assert kept["budget_seconds"] == 1828.0
    with pytest.raises(SystemExit, match="30.5-min budget"):
        compare.run_in_subprocess(args, "fcos.yaml", str(run_dir), 0, 1700.0)


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
    monkeypatch.setattr(compare, "run_in_subprocess", lambda *a, **k: {"train_seconds": 1.0})
    fake_clock(monkeypatch, compare, {"fcos.yaml": 0.25, "mask.yaml": 1.5})
    args = compare.argument_parser().parse_args(
        ["--output", str(tmp_path), "--hold-file", str(hold), "--seeds", "1"]
    )
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml"])
    assert len(sleeps) == 3 and not hold.exists()


def test_a_broken_timing_file_stops_the_comparison_with_its_name(tmp_path):
    import compare

    (tmp_path / "timing.json").write_text('{"seconds_per_iteration": {"fcos": -1}}')
    args = compare.argument_parser().parse_args(["--output", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"timing.json: .*delete it to time the models again"):
        compare.plan_and_run(args, ["fcos.yaml", "mask.yaml"])


def test_longer_schedules_train_last_shortest_first_in_their_own_run_directories(
    monkeypatch, tmp_path
):
    """--schedules 1 2 4: after the 1x runs, every model at 2x for each seed, then at 4x;
    each run directory names its multiple, and the subprocess gets the stretched schedule."""
    import compare

    calls = []

    def fake_run(args, config, run_dir, seed, budget_seconds, pace=None, model=None, multiple=1):
        calls.append((os.path.basename(run_dir), multiple))
        return {"train_seconds": 1.0}

    monkeypatch.setattr(compare, "run_in_subprocess", fake_run)
    fake_clock(monkeypatch, compare, {"fcos.yaml": 0.25, "mask.yaml": 1.5})
    argv = ["--seeds", "2", "--schedules", "1", "2", "4", "--output", str(tmp_path)]
    args = compare.argument_parser().parse_args(argv)
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml"])
    assert calls[4:] == [
        ("fcos__iterations_x2__seed0", 2),
        ("mask__iterations_x2__seed0", 2),
        ("fcos__iterations_x2__seed1", 2),
        ("mask__iterations_x2__seed1", 2),
        ("fcos__iterations_x4__seed0", 4),
        ("mask__iterations_x4__seed0", 4),
        ("fcos__iterations_x4__seed1", 4),
        ("mask__iterations_x4__seed1", 4),
    ]
    assert sorted(calls[:4]) == [
        (f"{m}__iterations__seed{s}", 1) for m in ("fcos", "mask") for s in (0, 1)
    ]

    # --quick: the judged FCOS alone gets twice its schedule.
    args.longer_schedules_for = ["fcos.yaml"]
    assert compare.longer_schedules(args, "fcos.yaml") == [2, 4]
    assert compare.longer_schedules(args, "mask.yaml") == []


def test_a_stretched_schedule_for_the_subprocess_keeps_the_step_fractions():
    import compare
    from conftest import CONFIGS

    args = compare.argument_parser().parse_args(["SOLVER.MAX_ITER", "1500"])
    opts = compare.stretched_schedule_opts(
        args, str(CONFIGS / "shapes" / "FCOS_R_18_shapes_cpu.yaml"), 4
    )
    assert dict(zip(opts[0::2], opts[1::2])) == {
        "SOLVER.MAX_ITER": "6000",
        "SOLVER.STEPS": "(4500, 5520)",
        "SOLVER.WARMUP_ITERS": "150",
    }


@pytest.mark.parametrize("multiples", [["0.5"], ["1", "1.3"]])
def test_a_schedule_multiple_below_one_or_not_in_quarters_is_refused(multiples):
    import compare

    with pytest.raises(SystemExit, match=f"--schedules {multiples[-1]}"):
        compare.main(["--quick", "--schedules", *multiples, "--output", "/nonexistent"])

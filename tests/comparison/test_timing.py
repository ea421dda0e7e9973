"""The comparison's clock (fcos_d2.comparison.timing)."""

import json

import pytest

from fcos_d2.comparison import timing


def test_models_are_timed_in_alternating_order_and_averaged(monkeypatch, tmp_path):
    """Round 0 times A B C, round 1 C B A; a model's pace is the mean of its rounds."""
    order = []
    paces = {"a": [1.0, 3.0], "b": [2.0, 2.0], "c": [0.5, 1.5]}

    def fake_time_iterations(config_file, opts, output_dir, warmup, timed):
        name = timing.model_name(config_file)
        order.append(name)
        round_index = int(output_dir[-1])
        return [paces[name][round_index]] * 4  # four timed iterations

    monkeypatch.setattr(timing, "time_iterations", fake_time_iterations)
    clock = timing.measure_training_speed(
        ["configs/a.yaml", "configs/b.yaml", "configs/c.yaml"], ["K", "V"], str(tmp_path)
    )
    assert order == ["a", "b", "c", "c", "b", "a"]
    assert clock["seconds_per_iteration"] == {"a": 2.0, "b": 2.0, "c": 1.0}
    assert clock["rounds"]["a"] == [1.0, 3.0] and clock["opts"] == ["K", "V"]


@pytest.mark.slow
def test_time_iterations_returns_the_timed_iterations_of_a_real_training(tmp_path):
    from conftest import QUICK_CONFIG

    seconds = timing.time_iterations(
        str(QUICK_CONFIG),
        [
            "DATALOADER.NUM_WORKERS",
            "0",
            "SOLVER.IMS_PER_BATCH",
            "1",
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.MAX_SIZE_TRAIN",
            "64",
        ],
        str(tmp_path),
        warmup=2,
        timed=3,
    )
    assert len(seconds) == 3 and all(0 < s < 60 for s in seconds)
    assert (tmp_path / "metrics.json").is_file() and not list(tmp_path.glob("*.pth"))


def test_clock_seconds_are_iterations_times_the_models_pace():
    clock = {"seconds_per_iteration": {"fcos": 0.25, "mask": 1.5}}
    point = {"iteration": 400, "train_seconds": 999.0}
    assert timing.clock_seconds({"name": "fcos"}, point, clock) == 100.0
    assert timing.clock_seconds({"name": "mask"}, point, clock) == 600.0
    # A model the timing does not know, or no timing at all: the run's own wall clock.
    assert timing.clock_seconds({"name": "faster"}, point, clock) == 999.0
    assert timing.clock_seconds({"name": "fcos"}, point, None) == 999.0


def test_read_timing_round_trip_and_errors_name_the_file(tmp_path):
    path = tmp_path / "timing.json"
    assert timing.read_timing(str(path)) is None
    timing.write_timing({"seconds_per_iteration": {"fcos": 0.25}}, str(path))
    assert timing.read_timing(str(path))["seconds_per_iteration"] == {"fcos": 0.25}
    path.write_text("{not json")
    with pytest.raises(ValueError, match="timing.json: not JSON"):
        timing.read_timing(str(path))
    for bad in ({"seconds_per_iteration": {"fcos": 0}}, {"other": 1}, [1, 2]):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="timing.json: 'seconds_per_iteration'"):
            timing.read_timing(str(path))


@pytest.mark.slow
def test_a_budget_run_without_a_clock_calibrates_with_the_clocks_timing(tmp_path):
    """runner's own calibration (a budget run given no pace) is the clock's measurement:
    the mean of ``TIMED_ITERATIONS`` iterations after the untimed ones."""
    from conftest import QUICK_CONFIG

    from fcos_d2.comparison import runner

    opts = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "1"]
    pace = runner.calibrate_seconds_per_iteration(str(QUICK_CONFIG), opts, str(tmp_path))
    metrics = [
        json.loads(line)
        for line in (tmp_path / "calibration" / "metrics.json").read_text().split("\n")
        if line
    ]
    assert metrics[-1]["iteration"] == timing.WARMUP_ITERATIONS + timing.TIMED_ITERATIONS - 1
    assert 0 < pace < 60

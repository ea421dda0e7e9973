"""make bench-check: the ratios, the table beside the last record, the record file."""

import json

import bench_check  # tools/, on the path from conftest
import pytest

from fcos_d2.benchmark.check import format_check, last_record, ratios

SECONDS = {
    "fcos_d2": {"train": [2.0, 1.0, 3.0], "infer": [0.5, 0.4, 0.45]},
    "d2_fcos": {"train": [4.0, 2.5, 2.0], "infer": [0.5, 0.8, 0.6]},
}


def test_ratios_of_minimum_and_median():
    r = ratios(SECONDS)
    assert r["train"] == {"min": 1.0 / 2.0, "median": 2.0 / 2.5}
    assert r["infer"] == {"min": 0.4 / 0.5, "median": 0.45 / 0.6}


def test_table_shows_now_and_the_last_record():
    current = {"size": [512, 640], "reps": 3, "seconds": SECONDS, "ratios": ratios(SECONDS)}
    previous = dict(
        current,
        date="2026-12-01",
        ratios={p: {"min": 0.9, "median": 0.95} for p in ("train", "infer")},
    )
    previous["environment"] = {"device_name": "EPYC", "torch": "2.14.1", "torch_threads": 2}
    table = format_check(current, previous)
    assert "train" in table and "0.50 / 0.80" in table and "0.90 / 0.95" in table
    assert "last recorded 2026-12-01 on EPYC" in table
    assert "-" in format_check(current, None).splitlines()[2]


def test_no_record_file_means_no_last_record(tmp_path):
    assert last_record(tmp_path / "cpu.json") is None
    (tmp_path / "cpu.json").write_text("[]")
    assert last_record(tmp_path / "cpu.json") is None


@pytest.mark.slow
def test_tool_times_both_models_and_appends_a_record(tmp_path, capsys):
    records = tmp_path / "cpu.json"
    argv = ["--height", "64", "--width", "96", "--reps", "2", "--warmup", "0"]
    argv += ["--records", str(records), "--record"]
    assert bench_check.main(argv) == 0
    assert bench_check.main(argv) == 0
    saved = json.loads(records.read_text())
    assert len(saved) == 2 and saved[0]["size"] == [64, 96]
    assert all(len(saved[0]["seconds"][m]["train"]) == 2 for m in ("fcos_d2", "d2_fcos"))
    assert "last recorded" in capsys.readouterr().out

"""tools/run_demo.py (`make demo`): the evaluation it reports is the last one recorded."""

import json

import pytest
import run_demo  # tools/, on the path from conftest


def test_final_evaluation_is_the_last_bbox_record(tmp_path):
    metrics = tmp_path / "metrics.json"
    records = [
        {"iteration": 9, "total_loss": 1.0},
        {"iteration": 9, "bbox/AP": 10.0, "bbox/AP50": 20.0},
        {"iteration": 19, "total_loss": 0.5},
        {"iteration": 19, "bbox/AP": 30.0, "bbox/AP50": 50.0, "lr": 0.01},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_demo.final_evaluation(str(metrics)) == {"AP": 30.0, "AP50": 50.0}


def test_no_evaluation_names_the_file(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\n")
    with pytest.raises(SystemExit, match="metrics.json: no bbox"):
        run_demo.final_evaluation(str(metrics))


def test_progress_line_shows_iteration_eta_and_loss():
    record = {"iteration": 299, "eta_seconds": 200.4, "total_loss": 0.73412}
    assert run_demo.progress_line(record, 1500) == "iter 300/1500  eta 0:03:20  loss 0.734"
    assert run_demo.progress_line({"iteration": 0}, 10) == "iter 1/10  eta ?  loss ?"


def test_only_complete_new_metrics_lines_are_read(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"iteration": 1}) + "\n")
    start = metrics.stat().st_size  # an earlier run's records are skipped
    with open(metrics, "a") as f:
        f.write(json.dumps({"iteration": 19, "total_loss": 1.0}) + "\n" + '{"iteration": 3')
    records, offset = run_demo.new_records(str(metrics), start)
    assert records == [{"iteration": 19, "total_loss": 1.0}]
    with open(metrics, "a") as f:
        f.write("9}\n")
    assert run_demo.new_records(str(metrics), offset)[0] == [{"iteration": 39}]


def test_a_failing_command_shows_the_end_of_its_output(tmp_path, capsys):
    console = tmp_path / "console.txt"
    command = ["python3", "-c", "import sys; print('line 1'); sys.exit('bad config key')"]
    with pytest.raises(SystemExit, match="failed \\(exit 1\\); full output"):
        run_demo.run_quietly(command, str(console))
    assert "bad config key" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_prints_progress_and_results_in_few_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_demo, "PROGRESS_EVERY", 20)
    monkeypatch.setattr(run_demo, "NUM_DRAWN", 2)
    opts = ["SOLVER.MAX_ITER", "40", "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "(30,)"]
    assert run_demo.main([*opts, "OUTPUT_DIR", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 20, lines
    assert any(line.startswith("iter 40/40  eta") and "loss" in line for line in lines), lines
    assert any(line.startswith("|") and "AP50" in line for line in lines), lines
    assert (tmp_path / "log.txt").is_file() and (tmp_path / "console.txt").stat().st_size > 0
    assert (
        len(list((tmp_path / "predictions").glob("*.png")))
        + len(list((tmp_path / "predictions").glob("*.jpg")))
        >= 2
    )

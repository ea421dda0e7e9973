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

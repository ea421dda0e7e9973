"""tools/gpu_check.sh works end to end without a GPU (its --dry-run), and its summary
reads the files the steps write."""

import json
import os
import subprocess
import sys

import gpu_check_summary  # tools/, on the path from conftest
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # end to end: run by `make test`, not by `-m "not slow"`


def test_dry_run_fast_parts(tmp_path):
    """Packages, the cuda tests on the CPU, and the summary; exit 0."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    completed = subprocess.run(
        [
            "bash",
            str(REPO / "tools" / "gpu_check.sh"),
            "--dry-run",
            "--skip-benchmark",
            "--skip-demo",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    tests = (tmp_path / "tests.txt").read_text()
    assert "4 passed" in tests, tests[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "CPU (dry run)" in summary and "4 passed" in summary
    assert json.loads((tmp_path / "environment.json").read_text())["torch"]


def test_unknown_option_is_refused(tmp_path):
    completed = subprocess.run(
        ["bash", str(REPO / "tools" / "gpu_check.sh"), "--fast"],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": str(tmp_path)},
    )
    assert completed.returncode == 2 and "--fast" in completed.stderr


def fake_benchmark(train, infer):
    return {
        "settings": {"height": 800, "width": 1333, "train_batch": 2, "infer_batch": 1, "reps": 10},
        "models": {
            m: {"train": {"median_s": t, "peak_mb": 1000.0}, "infer_per_image": {"median_s": i}}
            for m, t, i in zip(("fcos_d2", "d2_fcos", "d2_mask_rcnn"), train, infer)
        },
    }


def test_summary_table_ratios(tmp_path):
    (tmp_path / "environment.json").write_text(json.dumps({"gpu": "NVIDIA H100", "torch": "2.11"}))
    (tmp_path / "benchmark_fp32.json").write_text(
        json.dumps(fake_benchmark((0.3, 0.4, 0.5), (0.02, 0.04, 0.05)))
    )
    (tmp_path / "benchmark_amp.json").write_text(
        json.dumps(fake_benchmark((0.15, 0.2, 0.25), (0.02, 0.04, 0.05)))
    )
    run_dir = tmp_path / "demo"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("MODEL:\n  DEVICE: cuda\n")
    (run_dir / "metrics.json").write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"iteration": 1498, "total_loss": 1.0},
                {"iteration": 1499, "bbox/AP": 64.5, "bbox/AP50": 80.0},
            )
        )
    )
    gpu_check_summary.record_demo(str(tmp_path / "demo.json"), str(run_dir), 90.0)
    summary = gpu_check_summary.summarize(str(tmp_path))
    # fcos_d2: 0.3 / 0.15 = 2.00x from AMP, 0.3 / 0.5 = 0.60 of Mask R-CNN; inference 0.02 / 0.04.
    assert "| fcos_d2 | 0.300 | 0.150 | 2.00 | 0.0200 | 1000 | 0.60 | 0.60 |" in summary
    assert "≤ 0.85× Detectron2's FCOS: 0.50" in summary
    assert "1500 iterations on cuda): 1.5 min to box AP 64.5 (AP50 80.0)" in summary

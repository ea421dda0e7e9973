"""The comparison report (fcos_d2.comparison.report) end to end from saved runs."""

import json

import pytest
from comparison_cases import crowded_case, detection

from fcos_d2.comparison.statistics import ALL
from fcos_d2.comparison.verdicts import (
    INCONCLUSIVE,
    SUPPORTED,
)


def write_run(root, name, meta_architecture, schedule, seed, curve):
    """A run directory as runner.train_and_evaluate leaves it."""
    run_dir = root / f"{name}__{schedule}__seed{seed}"
    points = []
    for iteration, seconds, predictions in curve:
        path = run_dir / "evals" / f"iter_{iteration:06d}" / "hand" / "coco_instances_results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(predictions))
        points.append(
            {
                "iteration": iteration,
                "train_seconds": seconds,
                "datasets": {
                    "hand": {
                        "predictions": str(path.relative_to(run_dir)),
                        "bbox": {},
                        "infer_s_per_image": 0.01,
                    }
                },
            }
        )
    run = {
        "name": name,
        "meta_architecture": meta_architecture,
        "schedule": schedule,
        "seed": seed,
        "max_iter": curve[-1][0],
        "train_seconds": curve[-1][1],
        "train_s_per_iter": 0.1,
        "infer_s_per_image": {"hand": 0.01},
        "peak_memory_mb": 100.0,
        "ground_truth": {"hand": str(root.parent / "gt.json")},
        "curve": points,
    }
    (run_dir / "run.json").write_text(json.dumps(run))


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
        write_run(runs, "fcos", "FCOS", "time budget", seed, [(40, 80.0, truth)])
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
    for plot in ("ap_vs_time.png", "recall_by_overlap.png", "recall_vs_iou.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000


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


@pytest.mark.parametrize(
    "difference, factor, expected",
    [
        ([3.0, 0.5, 5.5], 1.6, "≈ 1.6× the images and seeds"),
        ([0.5, -2.0, 3.0], None, "estimate within the margin"),
        ([53.0, float("-inf"), 64.0], None, "unbounded interval"),
    ],
)
def test_to_settle_text_says_why_an_inconclusive_verdict_is_open(difference, factor, expected):
    from fcos_d2.comparison.report import _settle_text

    record = {"verdict": INCONCLUSIVE, "difference": difference, "data_to_settle": factor}
    assert _settle_text(record).startswith(expected)
    assert _settle_text({**record, "verdict": SUPPORTED}) == ""

"""Compact copies of comparison runs (fcos_d2.comparison.archive): lossless, resumable."""

import json

import numpy as np
import pytest

from fcos_d2.comparison.archive import pack_run, pack_runs, unpack_run, unpack_runs


def float32(values):
    """Values as the model's float32 tensors give them to Detectron2's JSON writer."""
    return np.asarray(values, dtype=np.float32).astype(np.float64).tolist()


def boxes_only(image_id, count):
    rng = np.random.default_rng(image_id)
    return [
        {
            "image_id": image_id,
            "category_id": int(rng.integers(1, 5)),
            "bbox": float32(rng.uniform(0, 128, 4)),
            "score": np.float32(rng.uniform()).item(),
        }
        for _ in range(count)
    ]


def write_run(run_dir, predictions_per_point):
    """A run directory as runner.train_and_evaluate leaves it (extra files included)."""
    points = []
    for index, predictions in enumerate(predictions_per_point):
        relative = f"evals/iter_{index:06d}/val/coco_instances_results.json"
        (run_dir / relative).parent.mkdir(parents=True)
        (run_dir / relative).write_text(json.dumps(predictions))
        points.append({"iteration": index, "datasets": {"val": {"predictions": relative}}})
    (run_dir / "model_final.pth").write_bytes(b"weights the archive leaves out")
    (run_dir / "run.json").write_text(json.dumps({"name": "m", "curve": points}))


def test_a_run_round_trips_exactly_boxes_masks_and_empty_files(tmp_path):
    with_masks = [
        {**p, "segmentation": {"size": [128, 96], "counts": f"X{i}0Ob0\\\\1"}}
        for i, p in enumerate(boxes_only(3, 5))
    ]
    points = [boxes_only(1, 40) + boxes_only(2, 7), [], with_masks, with_masks]
    write_run(tmp_path / "run", points)

    pack_run(str(tmp_path / "run"), str(tmp_path / "archive" / "run"))
    unpack_run(str(tmp_path / "archive" / "run"), str(tmp_path / "restored"))

    # Masks are kept where the report reads them, the final evaluation; boxes everywhere.
    points[2] = [{k: v for k, v in p.items() if k != "segmentation"} for p in with_masks]
    for index, predictions in enumerate(points):
        relative = f"evals/iter_{index:06d}/val/coco_instances_results.json"
        assert json.loads((tmp_path / "restored" / relative).read_text()) == predictions
    assert (tmp_path / "restored" / "run.json").read_text() == (
        tmp_path / "run" / "run.json"
    ).read_text()
    assert not (tmp_path / "archive" / "run" / "model_final.pth").exists()
    archived = sum(f.stat().st_size for f in (tmp_path / "archive").rglob("*") if f.is_file())
    original = sum(
        f.stat().st_size for f in (tmp_path / "run").rglob("*.json") if f.name != "run.json"
    )
    assert archived < original


def test_values_float32_cannot_hold_are_refused_naming_the_file(tmp_path):
    predictions = boxes_only(1, 3)
    predictions[1]["score"] = 0.1  # a float64 value: the archive would round it
    write_run(tmp_path / "run", [predictions])
    with pytest.raises(ValueError, match=r"iter_000000/val/coco_instances_results.json"):
        pack_run(str(tmp_path / "run"), str(tmp_path / "archive" / "run"))
    assert not (tmp_path / "archive" / "run").exists()  # nothing half-written


def test_unknown_prediction_keys_are_refused(tmp_path):
    predictions = boxes_only(1, 2)
    predictions[0]["keypoints"] = [1.0, 2.0, 2]
    write_run(tmp_path / "run", [predictions])
    with pytest.raises(ValueError, match="keypoints"):
        pack_run(str(tmp_path / "run"), str(tmp_path / "archive" / "run"))


def test_restoring_keeps_runs_already_there_and_packing_only_new_skips_archived(tmp_path):
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    write_run(runs / "a", [boxes_only(1, 4)])
    write_run(runs / "b", [boxes_only(2, 4)])
    (runs / "unfinished").mkdir()  # no run.json: not a finished run
    assert pack_runs(str(runs), str(archive)) == ["a", "b"]

    write_run(runs / "c", [boxes_only(3, 4)])
    assert pack_runs(str(runs), str(archive), only_new=True) == ["c"]

    (runs / "a" / "run.json").write_text(json.dumps({"name": "kept", "curve": []}))
    (runs / "b" / "run.json").unlink()
    assert unpack_runs(str(archive), str(runs)) == ["b"]
    assert json.loads((runs / "a" / "run.json").read_text())["name"] == "kept"
    assert json.loads((runs / "b" / "run.json").read_text())["name"] == "m"


def test_a_missing_archive_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        unpack_runs(str(tmp_path / "nowhere"), str(tmp_path / "runs"))

"""A comparison run stopped at iteration k and started again ends as if never stopped
(fcos_d2.comparison.resume, runner.train_and_evaluate)."""

import json

import pytest
import torch

from fcos_d2.comparison import resume, runner

ITERATIONS, STOP_AT = 8, 4


class Stopped(Exception):
    """Stands for the kill at a session's end."""


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    from detectron2.data import DatasetCatalog

    from fcos_d2.data.coco_dataset import register_coco_datasets
    from fcos_d2.data.datasets import generate_shapes_split

    root = tmp_path_factory.mktemp("resume_data")
    names = {}
    for split, count in (("train", 6), ("val", 3)):
        name = f"resume_test_{split}"
        json_path = generate_shapes_split(str(root), split, count, 64, seed=5, progress=False)
        if name not in DatasetCatalog.list():
            register_coco_datasets([(name, json_path, str(root / split))])
        names[split] = name
    return names


def _opts(train_set: str, workers: int):
    return [
        "DATASETS.TRAIN",
        f"('{train_set}',)",
        "SOLVER.MAX_ITER",
        str(ITERATIONS),
        "SOLVER.STEPS",
        "(6,)",
        "SOLVER.WARMUP_ITERS",
        "2",
        "SOLVER.BASE_LR",
        "0.002",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        str(workers),
        "INPUT.MIN_SIZE_TRAIN",
        "(56, 64)",  # a random choice per image: augmentation draws from the generators
        "INPUT.MAX_SIZE_TRAIN",
        "64",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "64",
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "0.01",
    ]


def _train(config, run_dir, sets, workers):
    return runner.train_and_evaluate(
        config,
        str(run_dir),
        [sets["val"]],
        _opts(sets["train"], workers),
        seed=3,
        num_evaluations=2,
        checkpoint_period=2,
    )


def _final_weights(run_dir):
    return torch.load(run_dir / "model_final.pth", map_location="cpu")["model"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, workers",
    [
        ("quick_schedules/FCOS_R_18_quick.yaml", 0),  # augmentation in the main process
        ("baselines/faster_rcnn_R_18_shapes_cpu.yaml", 1),  # ROI sampling; a loader worker
    ],
)
def test_a_run_stopped_and_resumed_ends_with_the_weights_of_one_never_stopped(
    config, workers, tiny_sets, tmp_path, monkeypatch
):
    from conftest import CONFIGS

    config = str(CONFIGS / config)
    whole = _train(config, tmp_path / "whole", tiny_sets, workers)

    save = resume.ResumeCheckpointer.after_step

    def save_then_stop(hook):
        save(hook)
        if hook.trainer.iter + 1 == STOP_AT:
            raise Stopped

    monkeypatch.setattr(resume.ResumeCheckpointer, "after_step", save_then_stop)
    with pytest.raises(Stopped):
        _train(config, tmp_path / "stopped", tiny_sets, workers)
    assert not (tmp_path / "stopped" / runner.RUN_FILE).exists()
    kept = resume.resume_checkpoints(str(tmp_path / "stopped"))
    assert [p.rsplit("_", 1)[-1] for p in kept] == [f"{STOP_AT:07d}.pth"]  # the newest only
    monkeypatch.undo()

    resumed = _train(config, tmp_path / "stopped", tiny_sets, workers)
    assert resumed["resumed_at"] == [STOP_AT]
    assert whole["resumed_at"] == []
    weights, resumed_weights = (
        _final_weights(tmp_path / "whole"),
        _final_weights(tmp_path / "stopped"),
    )
    assert weights.keys() == resumed_weights.keys()
    different = [k for k in weights if not torch.equal(weights[k], resumed_weights[k])]
    assert different == []
    # The learning curve: the point before the stop came back from the checkpoint.
    assert [p["iteration"] for p in resumed["curve"]] == [STOP_AT, ITERATIONS]
    for point, resumed_point in zip(whole["curve"], resumed["curve"]):
        detections = [
            json.loads((run_dir / p["datasets"][tiny_sets["val"]]["predictions"]).read_text())
            for run_dir, p in ((tmp_path / "whole", point), (tmp_path / "stopped", resumed_point))
        ]
        assert detections[0] == detections[1]
    assert 0 < resumed["train_seconds"]
    assert resume.resume_checkpoints(str(tmp_path / "stopped")) == []  # gone once finished


def test_a_run_directory_of_another_run_is_refused_by_name(tmp_path):
    run_dir = str(tmp_path / "run")
    identity = {"config": "a.yaml", "opts": ["SOLVER.MAX_ITER", "8"], "seed": 0}
    assert resume.check_identity(run_dir, identity) is False  # written
    assert resume.check_identity(run_dir, dict(identity)) is True  # the same run
    with pytest.raises(ValueError, match=r"run.*opts.*'SOLVER.MAX_ITER', '8'.*'16'"):
        resume.check_identity(run_dir, {**identity, "opts": ["SOLVER.MAX_ITER", "16"]})
    with open(tmp_path / "run" / resume.IDENTITY_FILE) as f:
        assert json.load(f) == identity  # not overwritten by the refused one


def test_the_random_state_comes_back_exactly():
    import random

    import numpy as np

    state = resume.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(7), random.random()
    resume.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_the_clock_leaves_out_paused_spans_and_adds_the_seconds_before_a_resume(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(resume.time, "perf_counter", lambda: now[0])
    clock = resume.TrainingClock()
    clock.seconds_before = 30.0
    clock.begin()
    now[0] = 110.0
    with clock.paused():
        now[0] = 150.0
    now[0] = 155.0
    assert clock.seconds() == pytest.approx(30.0 + 55.0 - 40.0)

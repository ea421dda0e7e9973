"""The trainer (fcos_d2.engine) through faults: a NaN loss stops naming the iteration
and term with the checkpoint on disk, a killed run resumes to the same losses, and
two processes give the losses of one."""

import json

import distributed_worker
import pytest
import torch
from conftest import QUICK_CONFIG
from detectron2.engine import HookBase, launch

from fcos_d2.config import setup_cfg
from fcos_d2.data.datasets import generate_shapes_split
from fcos_d2.engine import Trainer

pytestmark = pytest.mark.slow  # end to end: run by `make test`, not by `-m "not slow"`


# Shared by 9 and 10: a train split of one image, so every batch is the same.
@pytest.fixture(scope="module")
def one_image_dataset(tmp_path_factory):
    from fcos_d2.data.coco_dataset import register_coco_dataset

    root = tmp_path_factory.mktemp("one")
    json_path = generate_shapes_split(str(root), "one", 1, 64, seed=11, progress=False)
    register_coco_dataset("reliability_one", json_path, str(root / "one"))
    return "reliability_one"


def resumable_config(dataset, output_dir, max_iter, period):
    return setup_cfg(
        str(QUICK_CONFIG),
        [
            "DATASETS.TRAIN",
            f"('{dataset}',)",
            "DATASETS.TEST",
            "()",
            "INPUT.RANDOM_FLIP",
            "none",
            "SEED",
            "5",
            "SOLVER.MAX_ITER",
            str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD",
            str(period),
            "SOLVER.STEPS",
            "(3,)",
            "SOLVER.WARMUP_ITERS",
            "2",
            "OUTPUT_DIR",
            str(output_dir),
        ],
    )


class RecordLosses(HookBase):
    def __init__(self):
        self.losses = {}

    def after_step(self):
        storage = self.trainer.storage
        self.losses[self.trainer.iter] = storage.history("total_loss").latest()


class FailAt(HookBase):
    """Stand-in for a crash or kill: raises before the given iteration runs."""

    def __init__(self, iteration, error):
        self.iteration, self.error = iteration, error

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise self.error


# A non-finite loss.
def test_nan_loss_stops_with_iteration_and_term_after_checkpoint_on_disk(
    one_image_dataset, tmp_path, monkeypatch
):
    cfg = resumable_config(one_image_dataset, tmp_path, max_iter=6, period=2)
    trainer = Trainer(cfg)
    real_losses = trainer.model.forward_training

    def poisoned(*args, **kwargs):
        losses = real_losses(*args, **kwargs)
        if trainer.iter == 3:
            losses["loss_fcos_loc"] = losses["loss_fcos_loc"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.model, "forward_training", poisoned)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    assert str(error.value).startswith(
        "Non-finite loss at iteration 3: loss_fcos_loc. "
        f"Last checkpoint on disk: {tmp_path / 'model_0000001.pth'}."
    )
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    checkpoint = torch.load(tmp_path / "model_0000001.pth")  # complete and loadable
    assert checkpoint["iteration"] == 1


# Kill, then --resume: same iteration, LR, optimizer state; same losses.
def test_resume_after_kill_matches_an_uninterrupted_run(one_image_dataset, tmp_path):
    def run(output_dir, max_iter, resume=False, fail_at=None):
        torch.manual_seed(0)
        trainer = Trainer(resumable_config(one_image_dataset, output_dir, max_iter, 3))
        recorder = RecordLosses()
        trainer.register_hooks(
            [recorder] + ([FailAt(fail_at, KeyboardInterrupt())] if fail_at else [])
        )
        trainer.resume_or_load(resume=resume)
        return trainer, recorder

    reference, reference_losses = run(tmp_path / "whole", 6)
    reference.train()

    killed, _ = run(tmp_path / "killed", 6, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed, resumed_losses = run(tmp_path / "killed", 6, resume=True)
    assert resumed.start_iter == 3  # model_0000002.pth: iterations 0-2 done
    assert resumed.scheduler.last_epoch == 3
    assert resumed.optimizer.state_dict()["state"]  # momentum buffers restored
    resumed.train()
    assert sorted(resumed_losses.losses) == [3, 4, 5]
    for iteration in (3, 4, 5):
        assert resumed_losses.losses[iteration] == pytest.approx(
            reference_losses.losses[iteration], rel=1e-5
        )
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(
        reference.optimizer.param_groups[0]["lr"]
    )


# Two GLOO processes give the losses of one process with the same total batch.
def test_two_processes_match_one_process(tmp_path):
    output_file = tmp_path / "losses.json"
    launch(distributed_worker.worker, 2, dist_url="auto", args=(str(output_file),))
    two = json.loads(output_file.read_text())
    one = distributed_worker.losses_of(distributed_worker.batch())
    assert set(two) == set(one)
    for name in one:
        assert two[name] == pytest.approx(one[name], rel=1e-5), name

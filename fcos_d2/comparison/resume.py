"""Comparison runs that survive a stopped session: periodic checkpoints and exact resumption.

A run that is killed (a session's end, a crash) leaves its run directory with the newest
``resume_XXXXXXX.pth``: Detectron2's checkpoint of the weights, the optimizer, the LR
schedule and the iteration, with the state of these hooks inside it (the learning curve
so far, the training clock, the random number generators). Started again on the same
directory, the run loads it, moves the training data stream past the batches already
trained on, restores the random state and goes on: on the CPU it ends with the same weights
as a run that was never stopped (``tests/comparison/test_resume.py`` checks that).

What makes it exact: the data loader's sampler and its workers are seeded when the
iterator is made, so drawing the same number of batches again reproduces the stream (the
drawn batches are thrown away: data loading only, no training); the main process's torch,
NumPy and Python generators (ROI sampling, augmentation without workers) are saved with
each checkpoint and restored after that replay.
"""

import glob
import json
import os
import random
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import numpy as np
import torch
from detectron2.engine import HookBase

CHECKPOINT_PREFIX = "resume_"
IDENTITY_FILE = "run_identity.json"


def rng_state() -> Dict:
    """The main process's torch, NumPy and Python random states, as a checkpoint can hold
    them (tensors, lists and numbers only: ``torch.load(weights_only=True)`` reads them)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],
        "python": [version, list(python_state), gauss],
    }


def set_rng_state(state: Dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian)
    )
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))


class TrainingClock:
    """Seconds of training: wall time since training began, less the paused spans
    (evaluations, checkpoints), plus the training seconds of the run before a resume."""

    def __init__(self):
        self.start: Optional[float] = None
        self.paused_seconds = 0.0
        self.seconds_before = 0.0  # trained before this process resumed the run

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.paused_seconds = 0.0

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start - self.paused_seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - began


def read_identity(run_dir: str) -> Optional[Dict]:
    """The identity recorded in ``run_dir`` (see :func:`check_identity`), or None."""
    path = os.path.join(run_dir, IDENTITY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_identity(run_dir: str, identity: Dict) -> bool:
    """Write ``identity`` (what the run trains: config, KEY VALUE pairs, seed) to the run
    directory, or check it against the one there. Returns whether one was there.

    Raises:
        ValueError: naming the directory and the first differing key, when the directory
            holds a different run (its checkpoints would resume the wrong model).
    """
    path = os.path.join(run_dir, IDENTITY_FILE)
    identity = json.loads(json.dumps(identity))  # tuples as lists, as the file holds them
    recorded = read_identity(run_dir)
    if recorded is not None:
        for key in sorted(set(recorded) | set(identity)):
            if recorded.get(key) != identity.get(key):
                raise ValueError(
                    f"{run_dir} holds another run ({path}: {key} = {recorded.get(key)!r}, this "
                    f"run has {identity.get(key)!r}); its checkpoints would resume the wrong "
                    "model: delete the directory to train this run afresh, or give another one"
                )
        return True
    os.makedirs(run_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(identity, f, indent=1)
    return False


def resume_checkpoints(run_dir: str) -> list:
    """The run's resume checkpoints, oldest first."""
    return sorted(glob.glob(os.path.join(run_dir, f"{CHECKPOINT_PREFIX}*.pth")))


def remove_resume_checkpoints(run_dir: str) -> None:
    """Delete the resume checkpoints of a finished run (``model_final.pth`` stays)."""
    for path in resume_checkpoints(run_dir):
        os.remove(path)


class ResumeCheckpointer(HookBase):
    """Saves a checkpoint to resume from every ``period`` iterations and after each of the
    learning curve's evaluations (``also_after``: that hook's period), keeping the newest
    only; on a resumed run, replays the data stream and restores the random state.

    Register it after the hooks whose state it must hold (Detectron2 saves every hook's
    ``state_dict`` with the trainer's).
    """

    def __init__(self, period: int, also_after: int, clock: TrainingClock):
        self.period = period
        self.also_after = also_after
        self.clock = clock
        self.resumed_rng: Optional[Dict] = None
        self.resumed_at = []  # iterations this run was resumed from, across restarts

    def state_dict(self) -> Dict:
        return {"rng": rng_state(), "resumed_at": list(self.resumed_at)}

    def load_state_dict(self, state: Dict) -> None:
        self.resumed_rng = state["rng"]
        self.resumed_at = list(state["resumed_at"])

    def before_train(self):
        start = self.trainer.start_iter
        if start == 0 or self.resumed_rng is None:
            return
        self.resumed_at.append(start)
        if start < self.trainer.max_iter:
            # The batches of iterations 0 .. start-1, drawn again and dropped. Detectron2's
            # DefaultTrainer keeps its SimpleTrainer (and the lazily made iterator) inside.
            stream = self.trainer._trainer._data_loader_iter
            with self.clock.paused():
                for _ in range(start):
                    next(stream)
        set_rng_state(self.resumed_rng)

    def after_step(self):
        iteration = self.trainer.iter + 1
        if iteration >= self.trainer.max_iter:
            return  # Detectron2 writes model_final.pth
        due = iteration % self.period == 0
        due = due or (self.also_after > 0 and iteration % self.also_after == 0)
        if not due:
            return
        with self.clock.paused():
            older = resume_checkpoints(self.trainer.checkpointer.save_dir)
            # Saved (and tagged as the last checkpoint) before the older ones go: a kill
            # during the save leaves the previous one to resume from.
            self.trainer.checkpointer.save(f"{CHECKPOINT_PREFIX}{iteration:07d}")
            for path in older:
                os.remove(path)

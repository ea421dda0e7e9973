"""One clock for every run: each model's training speed, timed back-to-back on one machine.

A full comparison takes hours and spans sessions, and the machines it runs on differ in
speed by two to three times (``runner.machine_speed_probe`` recorded 0.24 s on one and
0.9-1.5 s on another). A run's wall-clock time therefore compares only with runs timed on
the same machine. The comparison's clock instead: every model's seconds per training
iteration, measured in one sitting with nothing else running, the models alternating
(A B C, then C B A) so that a drift of the machine falls on each alike; a run's training
time on that clock is its iterations times its model's seconds per iteration. Learning
curves, the time to reach a common AP and the time budgets all use it; each run's own
wall-clock time is still reported beside it.
"""

import datetime
import glob
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from detectron2.utils.env import seed_all_rng

from ..config import setup_cfg
from ..engine import Trainer

TIMING_FILE = "timing.json"
TIMED_ITERATIONS = 30
WARMUP_ITERATIONS = 10  # not timed: allocator, caches and the first batches settle


def model_name(config_file: str) -> str:
    """The name runs of ``config_file`` carry (``run.json``'s "name"): the config's stem."""
    return Path(config_file).stem


def time_iterations(
    config_file: str,
    opts: Sequence[str],
    output_dir: str,
    warmup: int = WARMUP_ITERATIONS,
    timed: int = TIMED_ITERATIONS,
) -> List[float]:
    """Train ``warmup + timed`` iterations; the seconds of each of the last ``timed``.

    Each iteration's time is Detectron2's own (``IterationTimer``: data loading, forward,
    backward and optimizer step)."""
    cfg = setup_cfg(
        config_file,
        [
            *opts,
            "OUTPUT_DIR",
            output_dir,
            "SOLVER.MAX_ITER",
            str(warmup + timed),
            "SOLVER.CHECKPOINT_PERIOD",
            "1000000",
            "DATASETS.TEST",
            "()",
            "TEST.EVAL_PERIOD",
            "0",
        ],
    )
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.history("time").values()  # [(seconds, iteration)]
    for weights in glob.glob(os.path.join(output_dir, "model_*.pth")):  # not needed: speed only
        os.remove(weights)
    return [seconds for seconds, iteration in history if iteration >= warmup]


def processor_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_training_speed(
    config_files: Sequence[str],
    opts: Sequence[str],
    output_dir: str,
    rounds: int = 2,
    warmup: int = WARMUP_ITERATIONS,
    timed: int = TIMED_ITERATIONS,
) -> Dict:
    """Time every model's training iterations (``timed`` after ``warmup`` untimed ones),
    alternating the order round by round.

    Returns what ``TIMING_FILE`` holds: per model name, the mean seconds per iteration over
    all timed iterations of all rounds, and each round's mean.
    """
    per_round: Dict[str, List[float]] = {model_name(c): [] for c in config_files}
    for round_index in range(rounds):
        order = config_files if round_index % 2 == 0 else list(reversed(config_files))
        for config_file in order:
            name = model_name(config_file)
            times = time_iterations(
                config_file,
                opts,
                os.path.join(output_dir, f"{name}__round{round_index}"),
                warmup,
                timed,
            )
            per_round[name].append(statistics.fmean(times))
            seconds = per_round[name][-1]
            print(f"timing round {round_index}: {name} {seconds:.3f} s/iter", flush=True)
    return {
        "seconds_per_iteration": {n: statistics.fmean(v) for n, v in per_round.items()},
        "rounds": per_round,
        "configs": {model_name(c): _relative_to_cwd(c) for c in config_files},
        "opts": list(opts),
        "iterations_timed": timed,
        "warmup_iterations": warmup,
        "machine": {"processor": processor_name(), "cpus": os.cpu_count()},
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _relative_to_cwd(path: str) -> str:
    """``path`` relative to the working directory when it lies under it (the repository's
    configs stay readable on another clone), else as given."""
    relative = os.path.relpath(os.path.abspath(path))
    return path if relative.startswith("..") else relative


def write_timing(timing: Dict, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(timing, f, indent=1)


def read_timing(path: str) -> Optional[Dict]:
    """The timing file at ``path``, or None when there is none.

    Raises:
        ValueError: naming the file, when it is not a timing file.
    """
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            timing = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from error
    speeds = timing.get("seconds_per_iteration") if isinstance(timing, dict) else None
    if not isinstance(speeds, dict) or not all(
        isinstance(v, (int, float)) and v > 0 for v in speeds.values()
    ):
        raise ValueError(
            f"{path}: 'seconds_per_iteration' must map model names to positive seconds"
        )
    return timing


def seconds_per_iteration(timing: Optional[Dict], name: str) -> Optional[float]:
    """The clock's seconds per iteration of model ``name``; None without a timing for it."""
    if timing is None:
        return None
    return timing["seconds_per_iteration"].get(name)


def clock_seconds(run: Dict, point: Dict, timing: Optional[Dict]) -> float:
    """Training seconds of a learning-curve ``point`` of ``run`` on the comparison's clock:
    its iteration times its model's timed seconds per iteration; the run's own wall clock
    when the timing has no figure for the model."""
    pace = seconds_per_iteration(timing, run["name"])
    if pace is None:
        return point["train_seconds"]
    return point["iteration"] * pace

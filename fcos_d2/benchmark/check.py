"""The speed check a developer runs before stopping: fcos_d2 against Detectron2's FCOS.

Both models are built once, warmed, then timed in alternation (ours, theirs; then theirs,
ours; ...), one training step and one inference per turn, so that a machine that slows
down or speeds up mid-run slows both alike. The ratios ours / theirs of the minimum and
the median of each phase are printed beside the last recorded ones
(``docs/benchmark/cpu.json``). It prints; it never fails a build.
"""

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from detectron2.utils.events import EventStorage

from .contenders import BUILDERS, Contender
from .inputs import make_samples
from .measurement import synchronize
from .phases import make_optimizer, training_step
from .runner import environment

MODELS = ("fcos_d2", "d2_fcos")
PHASES = ("train", "infer")


def _phase_steps(contender: Contender, train_samples, infer_samples) -> Dict[str, Callable]:
    """One training step and one inference of ``contender``, as callables."""
    model = contender.model
    train_inputs = contender.to_inputs(train_samples, True)
    infer_inputs = contender.to_inputs(infer_samples, False)
    optimizer = make_optimizer(model)

    def train() -> None:
        model.train()
        training_step(model, train_inputs, optimizer)

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(*infer_inputs)

    return {"train": train, "infer": infer}


def _timed(step: Callable, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_timings(args: argparse.Namespace) -> Dict[str, Dict[str, List[float]]]:
    """Seconds of each phase of each model: ``{model: {phase: [s, ...]}}``.

    Args:
        args: ``tools/bench_check.py``'s settings (config_file, opts, score_thresh, height,
            width, train_batch, num_boxes, warmup, reps, seed, device).
    """
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    size = (args.height, args.width)
    train_samples = make_samples(generator, args.train_batch, *size, args.num_boxes)
    infer_samples = make_samples(generator, 1, *size, args.num_boxes)
    steps = {}
    for name in MODELS:
        torch.manual_seed(args.seed)
        steps[name] = _phase_steps(BUILDERS[name](args, device), train_samples, infer_samples)
    seconds = {name: {phase: [] for phase in PHASES} for name in MODELS}
    with EventStorage():  # Detectron2's models log training scalars to it
        for _ in range(args.warmup):
            for name in MODELS:
                for phase in PHASES:
                    steps[name][phase]()
        for rep in range(args.reps):
            order = MODELS if rep % 2 == 0 else MODELS[::-1]
            for phase in PHASES:
                for name in order:
                    seconds[name][phase].append(_timed(steps[name][phase], device))
    return seconds


def ratios(seconds: Dict[str, Dict[str, List[float]]]) -> Dict[str, Dict[str, float]]:
    """Ours / Detectron2's FCOS, of the minimum and of the median, per phase."""
    ours, theirs = seconds["fcos_d2"], seconds["d2_fcos"]
    return {
        phase: {
            "min": min(ours[phase]) / min(theirs[phase]),
            "median": statistics.median(ours[phase]) / statistics.median(theirs[phase]),
        }
        for phase in PHASES
    }


def record(seconds, args: argparse.Namespace) -> dict:
    """A JSON-ready record of one check: the machine, the versions, the date, the figures."""
    return {
        "date": datetime.date.today().isoformat(),
        "environment": environment(torch.device(args.device)),
        "size": [args.height, args.width],
        "train_batch": args.train_batch,
        "reps": args.reps,
        "seconds": seconds,
        "ratios": ratios(seconds),
    }


def last_record(path: Path) -> Optional[dict]:
    """The last record of ``path`` (a JSON list of records), or None if there is none."""
    if not path.is_file():
        return None
    records = json.loads(path.read_text())
    return records[-1] if records else None


def format_check(current: dict, previous: Optional[dict]) -> str:
    """The table a developer reads: each phase's ratio now and when last recorded."""

    def cell(entry: Optional[dict], phase: str) -> str:
        if entry is None:
            return "-"
        r = entry["ratios"][phase]
        return f"{r['min']:.2f} / {r['median']:.2f}"

    seconds = current["seconds"]
    lines = [
        f"fcos_d2 / Detectron2 FCOS at {current['size'][0]}x{current['size'][1]}, "
        f"{current['reps']} interleaved repetitions (ratio of min / of median; lower is faster)",
        f"{'phase':<8}{'now':>16}{'last recorded':>18}   seconds now, ours vs theirs (median)",
    ]
    for phase in PHASES:
        ours = statistics.median(seconds["fcos_d2"][phase])
        theirs = statistics.median(seconds["d2_fcos"][phase])
        lines.append(
            f"{phase:<8}{cell(current, phase):>16}{cell(previous, phase):>18}   "
            f"{ours:.3f} vs {theirs:.3f}"
        )
    if previous is not None:
        env = previous["environment"]
        lines.append(
            f"last recorded {previous['date']} on {env['device_name']}, torch {env['torch']}, "
            f"{env['torch_threads']} threads"
        )
    return "\n".join(lines)

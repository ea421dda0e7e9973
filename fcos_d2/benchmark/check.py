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
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.utils.events import EventStorage
from torch import nn

from .contenders import BUILDERS, Contender
from .inputs import make_samples
from .measurement import synchronize
from .phases import make_optimizer, training_step
from .runner import environment

MODELS = ("fcos_d2", "d2_fcos")
PHASES = ("train", "infer")


def add_check_arguments(parser: argparse.ArgumentParser, config_file: str) -> None:
    """The settings :func:`model_steps` and :func:`interleave` read, on ``parser``."""
    parser.add_argument("--config-file", default=config_file)
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--num-boxes", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--score-thresh", type=float, default=0.0, help="0: post-processing does its full work"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def image_size(text: str) -> Tuple[int, int]:
    """``HxW`` -> (H, W), for ``--sizes``."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected HEIGHTxWIDTH, e.g. 512x640")
    return height, width


def add_size_and_record_arguments(parser: argparse.ArgumentParser, records: Path) -> None:
    """``--sizes`` (default 512x640 and 800x1333), ``--records`` and ``--record``."""
    parser.add_argument(
        "--sizes", type=image_size, nargs="+", default=[(512, 640), (800, 1333)], metavar="HxW"
    )
    parser.add_argument("--records", default=str(records), help="the JSON list of past runs")
    parser.add_argument("--record", action="store_true", help="append this run to --records")


def record_results(args: argparse.Namespace, results: List[dict]) -> None:
    """Append ``results`` (one dict per size), with the machine, versions, date and the
    settings of ``args``, to ``args.records``."""
    entry = {
        "date": datetime.date.today().isoformat(),
        "environment": environment(torch.device(args.device)),
        "config_file": args.config_file,
        "opts": args.opts,
        "train_batch": args.train_batch,
        "reps": args.reps,
        "results": results,
    }
    append_record(Path(args.records), entry)
    print(f"recorded in {args.records}")


def run_at_sizes(
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace], dict],
    describe: Callable[[Tuple[int, int], dict], str],
) -> None:
    """``measure(args)`` at each of ``args.sizes`` (set as args.height, args.width), the
    text ``describe(size, figures)`` printed after each, all recorded if ``args.record``."""
    results = []
    for height, width in args.sizes:
        args.height, args.width = height, width
        figures = measure(args)
        print(describe((height, width), figures), flush=True)
        results.append({"size": [height, width], **figures})
    if args.record:
        record_results(args, results)


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


def model_steps(
    args: argparse.Namespace,
) -> Tuple[Dict[str, Dict[str, Callable]], Dict[str, nn.Module]]:
    """One training step and one inference of each of :data:`MODELS`, as callables
    (``{model: {phase: step}}``), on the same random images; and the models by name.

    Args:
        args: ``tools/bench_check.py``'s settings (config_file, opts, score_thresh, height,
            width, train_batch, num_boxes, seed, device).
    """
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    size = (args.height, args.width)
    train_samples = make_samples(generator, args.train_batch, *size, args.num_boxes)
    infer_samples = make_samples(generator, 1, *size, args.num_boxes)
    steps, models = {}, {}
    for name in MODELS:
        torch.manual_seed(args.seed)
        contender = BUILDERS[name](args, device)
        models[name] = contender.model
        steps[name] = _phase_steps(contender, train_samples, infer_samples)
    return steps, models


def interleaved_timings(args: argparse.Namespace) -> Dict[str, Dict[str, List[float]]]:
    """Seconds of each phase of each model: ``{model: {phase: [s, ...]}}`` (``args`` as
    :func:`model_steps` reads them, and warmup, reps)."""
    steps, _ = model_steps(args)
    return interleave(steps, torch.device(args.device), args.warmup, args.reps)


def interleave(
    steps: Dict[str, Dict[str, Callable]], device: torch.device, warmup: int, reps: int
) -> Dict[str, Dict[str, List[float]]]:
    """Time ``steps`` (``{name: {phase: step}}``) in alternation: ``warmup`` untimed turns,
    then ``reps`` timed ones, each turn one call of every step, the order of the names
    reversed every other turn. Returns ``{name: {phase: [s, ...]}}``."""
    names = list(steps)
    seconds = {name: {phase: [] for phase in steps[name]} for name in names}
    with EventStorage():  # Detectron2's models log training scalars to it
        for _ in range(warmup):
            for name in names:
                for step in steps[name].values():
                    step()
        for rep in range(reps):
            order = names if rep % 2 == 0 else names[::-1]
            for phase in PHASES:
                for name in order:
                    if phase in steps[name]:
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


def append_record(path: Path, entry: dict) -> None:
    """Add ``entry`` at the end of the JSON list in ``path`` (made if absent)."""
    history = json.loads(path.read_text()) if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history + [entry], indent=1) + "\n")


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

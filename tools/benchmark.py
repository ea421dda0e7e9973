#!/usr/bin/env python
"""Speed, memory, size and FLOPs of fcos_d2 next to Detectron2's FCOS, torchvision's FCOS
and Detectron2's Mask R-CNN, measured in one process on the same inputs.

    python tools/benchmark.py                                    # all four, 800x1333, CUDA if any
    python tools/benchmark.py --device cpu --height 512 --width 640 --reps 3 --warmup 1
    python tools/benchmark.py --models fcos_d2 d2_fcos --config-file configs/FCOS_R_101_2x.yaml
    python tools/benchmark.py --opts MODEL.FCOS.NORM none MODEL.FCOS.NUM_CLS_CONVS 2

Every model is randomly initialised (no weights are loaded) and sees the same random
images and ground-truth boxes (fixed seed). For each model it reports the training step
(forward, sum of losses, backward, SGD step, zero_grad) in s/iter, inference in s/image,
the peak memory of each phase, the parameter count and the FLOPs of one inference
(fvcore's count: one multiply-add is one FLOP). For fcos_d2 it also times the pieces of a
training step and of an inference separately, and the target assignment alone for a
growing number of boxes. A table goes to stdout and every raw number to ``--output``.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each phase); on the
CPU the largest increase of the process's resident set size over the phase, sampled from
``/proc/self/statm`` by a background thread, so short peaks between samples can be missed.
"""

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

import torch

from fcos_d2.benchmark.contenders import MODELS
from fcos_d2.benchmark.report import format_report, write_json
from fcos_d2.benchmark.runner import run_benchmark

DEFAULT_CONFIG = "configs/FCOS_R_50_1x.yaml"


def argument_parser() -> argparse.ArgumentParser:
    """The command line; this file's docstring is its description."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="fcos_d2's config")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--train-batch", type=int, default=2, help="images per training step")
    parser.add_argument("--infer-batch", type=int, default=1, help="images per inference call")
    parser.add_argument("--num-boxes", type=int, default=10, help="ground-truth boxes per image")
    parser.add_argument(
        "--assign-boxes",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="boxes per image for the target-assignment scaling",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.0,
        help="every model's test score threshold (0: post-processing does its full work)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="train every model in mixed precision: float16 autocast and a GradScaler on "
        "CUDA, as SOLVER.AMP.ENABLED; bfloat16 autocast on the CPU. Inference stays float32.",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="output/benchmark/benchmark.json")
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help="config overrides for fcos_d2, e.g. --opts MODEL.FCOS.NORM none",
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The arguments, checked: exits with a message on a bad combination."""
    args = argument_parser().parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit("--reps must be at least 1 and --warmup at least 0")
    if len(args.opts) % 2:
        raise SystemExit(f"--opts takes KEY VALUE pairs, got {args.opts}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs the benchmark, writes the JSON to ``--output``, prints the tables; returns the
    results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    # The stage breakdown starts the profiler once per repetition, and Kineto logs two
    # lines each time unless told to keep quiet (a level set in the environment wins).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    results = run_benchmark(args, shlex.join(["python", "tools/benchmark.py", *argv]))
    write_json(results, args.output)
    print(format_report(results))
    print(f"\nRaw numbers: {args.output}")
    return results


if __name__ == "__main__":
    main()

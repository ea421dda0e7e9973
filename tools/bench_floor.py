#!/usr/bin/env python
"""fcos_d2 and Detectron2's FCOS against the time of fcos_d2's convolutions alone.

    python tools/bench_floor.py                        # 512x640 and 800x1333, CPU
    python tools/bench_floor.py --sizes 512x640 --reps 7 --record

The floor replays, as bare ``F.conv2d`` calls on the same shapes, in the same memory
format, every convolution one training step (forward and the backward it needs) or one
inference of fcos_d2 computes (``fcos_d2/benchmark/conv_floor.py``). The three are timed
in alternation, as ``make bench-check`` times the two models. Run it on an idle machine;
it prints, and with ``--record`` appends its figures to docs/benchmark/floor_cpu.json.
"""

import argparse
import sys
from pathlib import Path

from fcos_d2.benchmark.check import (
    add_check_arguments,
    add_size_and_record_arguments,
    run_at_sizes,
)
from fcos_d2.benchmark.conv_floor import floor_timings, format_floor

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "benchmark" / "floor_cpu.json"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_check_arguments(parser, str(REPO / "configs" / "FCOS_R_50_1x.yaml"))
    add_size_and_record_arguments(parser, RECORDS)
    parser.add_argument(
        "--profile-reps",
        type=int,
        default=1,
        help="profiled repetitions of each model's step, for the convolution seconds inside "
        "it (0: none; a profiled 512x640 training step takes about 20 s on 2 cores)",
    )
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    run_at_sizes(args, floor_timings, format_floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())

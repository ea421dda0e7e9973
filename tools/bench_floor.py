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
import datetime
import sys
from pathlib import Path

import torch

from fcos_d2.benchmark.check import add_check_arguments, append_record
from fcos_d2.benchmark.conv_floor import floor_timings, format_floor
from fcos_d2.benchmark.runner import environment

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "benchmark" / "floor_cpu.json"


def image_size(text: str) -> tuple:
    """``HxW`` -> (H, W)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected HEIGHTxWIDTH, e.g. 512x640")
    return height, width


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_check_arguments(parser, str(REPO / "configs" / "FCOS_R_50_1x.yaml"))
    parser.add_argument(
        "--sizes", type=image_size, nargs="+", default=[(512, 640), (800, 1333)], metavar="HxW"
    )
    parser.add_argument("--records", default=str(RECORDS), help="the JSON list of past runs")
    parser.add_argument("--record", action="store_true", help="append this run to --records")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    results = []
    for height, width in args.sizes:
        args.height, args.width = height, width
        timings = floor_timings(args)
        print(format_floor((height, width), timings), flush=True)
        results.append({"size": [height, width], **timings})
    if args.record:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

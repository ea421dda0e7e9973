#!/usr/bin/env python
"""Ways to run the same fcos_d2 faster, each timed against the default, with how far its
outputs move (``fcos_d2/benchmark/variants.py``).

    python tools/bench_speedups.py                                   # all, both sizes
    python tools/bench_speedups.py --sizes 512x640 --variants bf16 jit_frozen --record

Run it on an idle machine; with ``--record`` it appends its figures to
docs/benchmark/speedups_cpu.json. A variant worth keeping is one faster at both sizes
with outputs within 1e-5 (bf16 cannot be: it is reported for what it would give).
"""

import argparse
import datetime
import sys
from pathlib import Path

import torch
from bench_floor import image_size

from fcos_d2.benchmark.check import add_check_arguments, append_record
from fcos_d2.benchmark.runner import environment
from fcos_d2.benchmark.variants import VARIANTS, format_variants, variant_timings

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "benchmark" / "speedups_cpu.json"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_check_arguments(parser, str(REPO / "configs" / "FCOS_R_50_1x.yaml"))
    parser.add_argument(
        "--sizes", type=image_size, nargs="+", default=[(512, 640), (800, 1333)], metavar="HxW"
    )
    choices = [name for name in VARIANTS if name != "default"]
    parser.add_argument("--variants", nargs="+", choices=choices, default=choices)
    parser.add_argument("--records", default=str(RECORDS), help="the JSON list of past runs")
    parser.add_argument("--record", action="store_true", help="append this run to --records")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    results = []
    for height, width in args.sizes:
        args.height, args.width = height, width
        timings = variant_timings(args, args.variants)
        print(format_variants((height, width), timings), flush=True)
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

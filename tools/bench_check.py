#!/usr/bin/env python
"""fcos_d2 against Detectron2's FCOS, interleaved, beside the last recorded ratios.

    make bench-check                      # 512x640 on the CPU, 5 repetitions of each
    python tools/bench_check.py --record  # and append this run to docs/benchmark/cpu.json

Run it on an otherwise idle machine before stopping, after a change to the model: a
ratio that rose since the last record is a speed regression to find. It prints and
exits 0 whatever the figures; it is not a test (wall-clock times do not belong there).
"""

import argparse
import sys
from pathlib import Path

from fcos_d2.benchmark.check import (
    add_check_arguments,
    append_record,
    format_check,
    interleaved_timings,
    last_record,
    record,
)

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "benchmark" / "cpu.json"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_check_arguments(parser, str(REPO / "configs" / "FCOS_R_50_1x.yaml"))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--records", default=str(RECORDS), help="the JSON list of past checks")
    parser.add_argument("--record", action="store_true", help="append this check to --records")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    records = Path(args.records)
    previous = last_record(records)
    current = record(interleaved_timings(args), args)
    print(format_check(current, previous))
    if args.record:
        append_record(records, current)
        print(f"recorded in {records}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

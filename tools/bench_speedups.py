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
import sys
from pathlib import Path

from fcos_d2.benchmark.check import (
    add_check_arguments,
    add_size_and_record_arguments,
    run_at_sizes,
)
from fcos_d2.benchmark.variants import VARIANTS, format_variants, variant_timings

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "benchmark" / "speedups_cpu.json"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_check_arguments(parser, str(REPO / "configs" / "FCOS_R_50_1x.yaml"))
    add_size_and_record_arguments(parser, RECORDS)
    choices = [name for name in VARIANTS if name != "default"]
    parser.add_argument("--variants", nargs="+", choices=choices, default=choices)
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    run_at_sizes(args, lambda args: variant_timings(args, args.variants), format_variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())

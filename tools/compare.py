#!/usr/bin/env python
"""Train FCOS and R-CNN baselines alike, evaluate them along the way, judge the claims.

    python tools/compare.py --quick          # FCOS vs Mask R-CNN, short (meant for < 15 min)
    python tools/compare.py --full           # FCOS, Mask R-CNN, Faster R-CNN; 2 seeds; equal
                                             # iterations and equal time; hours on CPU
    python tools/compare.py --config-file A.yaml --config-file B.yaml --seeds 3 \
        --datasets shapes_val shapes_crowd_val --budget-minutes 30 --output output/compare
    python tools/compare.py --full --fcos-proposals   # + Mask R-CNN with FCOS proposals
    python tools/compare.py --report-only --output output/compare_full
    python tools/compare.py --report-only --archive results/compare_full \
        --output output/compare_full     # the committed report, rebuilt on a fresh clone

Each training run happens in its own process (its own peak memory) and leaves a run
directory with run.json and its COCO predictions at every evaluation; a run directory
that already holds run.json is kept, so an interrupted comparison resumes where it was.
The report (report.md, plots, report.json) is computed from those files alone. R-CNN
runs also record their proposals' recall (AR@100, AR@1000); a kept R-CNN run from before
that was recorded gets it evaluated from its model_final.pth.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from detectron2.data import DatasetCatalog

from fcos_d2.comparison import archive, runner
from fcos_d2.comparison.report import write_report
from fcos_d2.data.coco_dataset import add_register_coco_argument, register_coco_datasets

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FCOS_CONFIG = str(CONFIGS / "shapes" / "FCOS_R_18_shapes_cpu.yaml")
MASK_RCNN_CONFIG = str(CONFIGS / "baselines" / "mask_rcnn_R_18_shapes_cpu.yaml")
FASTER_RCNN_CONFIG = str(CONFIGS / "baselines" / "faster_rcnn_R_18_shapes_cpu.yaml")
FCOS_PROPOSALS_CONFIG = str(CONFIGS / "baselines" / "mask_rcnn_FCOS_RPN_R_18_shapes_cpu.yaml")
# Normal and crowded scenes mixed for training; both kinds evaluated apart.
TRAIN_DATASETS = '("shapes_train", "shapes_crowd_train")'
VAL_DATASETS = ["shapes_val", "shapes_crowd_val"]
# --quick: a fifth of the shapes schedule, one seed, no time-budget runs. The warm-up keeps
# its 150 iterations: Mask R-CNN from scratch diverged (NaN at iteration 40) after 30.
QUICK_OPTS = ["SOLVER.MAX_ITER", "300", "SOLVER.STEPS", "(225, 276)", "SOLVER.WARMUP_ITERS", "150"]


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="FCOS and Mask R-CNN on shapes, 300 iterations, one seed, two evaluations, "
        "200 resamples, no time-budget runs: the same code, in minutes",
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="FCOS, Mask R-CNN and Faster R-CNN on shapes, full schedule, and FCOS "
        "and Faster R-CNN again for as long as Mask R-CNN trained",
    )
    mode.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild the report from the run directories under --output",
    )
    parser.add_argument(
        "--fcos-proposals",
        action="store_true",
        help="also Mask R-CNN with FCOS as its proposal generator "
        f"(configs/{Path(FCOS_PROPOSALS_CONFIG).relative_to(CONFIGS)}), after the other models",
    )
    parser.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a model to compare (repeat). The claims are judged on the FCOS whose config "
        "name sorts first and on the R-CNN with masks and Detectron2's RPN (else the first "
        "R-CNN by name); the others are reported as variants against them",
    )
    parser.add_argument("--seeds", type=int, help="training runs per model (default 1; --full 2)")
    parser.add_argument("--datasets", nargs="+", help=f"validation sets (default {VAL_DATASETS})")
    parser.add_argument(
        "--train-datasets",
        default=TRAIN_DATASETS,
        help=f"DATASETS.TRAIN for every model (default {TRAIN_DATASETS})",
    )
    parser.add_argument(
        "--evaluations",
        type=int,
        default=6,
        help="points on each learning curve, the final one included",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        help="also train every model for this long (schedule stretched to fit)",
    )
    parser.add_argument(
        "--budget-from",
        metavar="CONFIG",
        help="the time budget is this model's measured training time "
        "(per seed); --full: the Mask R-CNN config",
    )
    parser.add_argument(
        "--resamples", type=int, help="bootstrap resamples (default 1000; --quick 200)"
    )
    parser.add_argument(
        "--hold-file",
        metavar="PATH",
        help="before each training run, wait while PATH exists (to run other work "
        "between timed runs without disturbing them)",
    )
    parser.add_argument(
        "--archive",
        metavar="DIR",
        help="keep a compact copy of every finished run in DIR (small enough to commit) and, "
        "first, restore the runs DIR holds that --output lacks: a fresh clone rebuilds the "
        "report or resumes the comparison from it",
    )
    add_register_coco_argument(parser)
    parser.add_argument("--output", help="default output/compare (--full: output/compare_full)")
    parser.add_argument(
        "--run-one",
        nargs=4,
        metavar=("CONFIG", "RUN_DIR", "SEED", "BUDGET_S"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--seconds-per-iter", type=float, help=argparse.SUPPRESS)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs for every model"
    )
    return parser


def run_directory(output: str, config: str, seed: int, budget: bool) -> str:
    schedule = "time_budget" if budget else "iterations"
    return os.path.join(output, "runs", f"{Path(config).stem}__{schedule}__seed{seed}")


def run_in_subprocess(
    args,
    config: str,
    run_dir: str,
    seed: int,
    budget_seconds: Optional[float],
    seconds_per_iter: Optional[float] = None,
) -> dict:
    """Train and evaluate one model in its own process, unless its run.json exists."""
    run_file = os.path.join(run_dir, runner.RUN_FILE)
    if os.path.isfile(run_file):
        with open(run_file) as f:
            kept_budget = json.load(f).get("budget_seconds")
        if budget_seconds and kept_budget and not math.isclose(kept_budget, budget_seconds):
            raise SystemExit(
                f"{run_file} was trained for a {kept_budget / 60:.1f}-min budget, this "
                f"comparison asks for {budget_seconds / 60:.1f} min: one budget per --output "
                "folder; give another --output"
            )
        print(f"Kept (already done): {run_dir}", flush=True)
        if runner.add_proposal_recall(run_dir):
            print(f"  its proposals' recall evaluated and added to {run_file}", flush=True)
    else:
        registrations = [arg for spec in args.register_coco for arg in ("--register-coco", *spec)]
        command = [
            sys.executable,
            os.path.abspath(__file__),
            *registrations,
            "--run-one",
            config,
            run_dir,
            str(seed),
            str(budget_seconds or 0),
            *(["--seconds-per-iter", str(seconds_per_iter)] if seconds_per_iter else []),
            "--datasets",
            *args.datasets,
            "--evaluations",
            str(args.evaluations),
            "--train-datasets",
            args.train_datasets,
            *args.opts,
        ]
        print("Running:", " ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            raise SystemExit(
                f"{config} (seed {seed}) failed: its error is above; the runs done so far are "
                f"kept under {os.path.dirname(run_dir)} and a rerun resumes after them"
            )
    with open(run_file) as f:
        return json.load(f)


def wait_while_held(hold_file: Optional[str]) -> None:
    """Before a timed run: wait while `hold_file` exists, so other work can run in between."""
    announced = False
    while hold_file and os.path.exists(hold_file):
        if not announced:
            print(f"Holding: {hold_file} exists; the next run waits for its removal", flush=True)
            announced = True
        time.sleep(5)


def plan_and_run(args, configs: List[str]) -> None:
    """Train every model at its schedule and, with a budget, the others for that long.

    The judged pair (the first two models) goes first, seed by seed, schedule and budget
    runs together, so that an interrupted comparison has the runs that matter most. The
    other models follow: their schedule runs for every seed, then their budget runs.
    """
    budget_from = args.budget_from
    judged, others = configs[:2], configs[2:]

    def run(config: str, seed: int, budget_seconds: Optional[float] = None) -> dict:
        run_dir = run_directory(args.output, config, seed, budget_seconds is not None)
        if not os.path.isfile(os.path.join(run_dir, runner.RUN_FILE)):
            wait_while_held(args.hold_file)
        measured = measured_seconds_per_iter(config, seed) if budget_seconds else None
        result = run_in_subprocess(args, config, run_dir, seed, budget_seconds, measured)
        archived = args.archive and os.path.join(args.archive, os.path.basename(run_dir))
        if archived and not os.path.isfile(os.path.join(archived, runner.RUN_FILE)):
            archive.pack_run(run_dir, archived)
            print(f"Archived: {run_dir} -> {archived}", flush=True)
        return result

    def measured_seconds_per_iter(config: str, seed: int) -> Optional[float]:
        """The model's time per iteration in its schedule run at this seed, if it has one."""
        run_file = os.path.join(run_directory(args.output, config, seed, False), runner.RUN_FILE)
        if not os.path.isfile(run_file):
            return None
        with open(run_file) as f:
            schedule_run = json.load(f)
        return schedule_run["train_seconds"] / schedule_run["max_iter"]

    def budget_for(seed: int) -> Optional[float]:
        if budget_from:  # its measured time at this seed (trained if not yet)
            return run(budget_from, seed)["train_seconds"]
        return 60 * args.budget_minutes if args.budget_minutes else None

    def budget_runs(group: List[str], seed: int) -> None:
        budget = budget_for(seed)
        for config in group:
            if budget is not None and config != budget_from:  # its own schedule is the budget
                run(config, seed, budget)

    for seed in range(args.seeds):
        budget_for(seed)
        for config in judged:
            run(config, seed)
        budget_runs(judged, seed)
    for seed in range(args.seeds):
        for config in others:
            run(config, seed)
    for seed in range(args.seeds):
        budget_runs(others, seed)


def main(argv: Optional[List[str]] = None) -> int:
    args = argument_parser().parse_args(argv)
    args.datasets = args.datasets or list(VAL_DATASETS)
    # Names registered by an earlier call in this process (the same command) stay as they are.
    register_coco_datasets([s for s in args.register_coco if s[0] not in DatasetCatalog.list()])
    if args.run_one:
        config, run_dir, seed, budget = args.run_one
        runner.train_and_evaluate(
            config,
            run_dir,
            args.datasets,
            ["DATASETS.TRAIN", args.train_datasets, *args.opts],
            seed=int(seed),
            num_evaluations=args.evaluations,
            budget_seconds=float(budget) or None,
            seconds_per_iteration=args.seconds_per_iter,
        )
        return 0

    configs = args.config_file
    if args.quick:
        configs = configs or [FCOS_CONFIG, MASK_RCNN_CONFIG]
        args.opts = QUICK_OPTS + args.opts
        args.evaluations = 2
    if args.full:
        configs = configs or [FCOS_CONFIG, MASK_RCNN_CONFIG, FASTER_RCNN_CONFIG]
        if not args.budget_minutes:  # the budget is Mask R-CNN's schedule time
            args.budget_from = args.budget_from or MASK_RCNN_CONFIG
    if args.fcos_proposals:
        configs = [*configs, FCOS_PROPOSALS_CONFIG]
    args.seeds = args.seeds or (2 if args.full else 1)
    args.resamples = args.resamples or (200 if args.quick else 1000)
    args.output = args.output or ("output/compare_full" if args.full else "output/compare")
    if args.budget_from and args.budget_minutes:
        raise SystemExit("give --budget-minutes or --budget-from, not both")
    if args.budget_from and args.budget_from not in configs:
        raise SystemExit(f"--budget-from {args.budget_from} is not one of the --config-file models")

    if args.archive and os.path.isdir(args.archive):
        restored = archive.unpack_runs(args.archive, os.path.join(args.output, "runs"))
        print(f"Restored from {args.archive}: {', '.join(restored) or 'nothing new'}", flush=True)
    if not args.report_only:
        if len(configs) < 2:
            raise SystemExit("compare.py needs two or more --config-file (or --quick / --full)")
        for config in configs:
            if not os.path.isfile(config):
                raise SystemExit(f"--config-file {config}: no such file")
        plan_and_run(args, configs)
    if args.archive:  # runs trained before --archive was given, too
        archive.pack_runs(os.path.join(args.output, "runs"), args.archive, only_new=True)

    summary = write_report(
        os.path.join(args.output, "runs"),
        args.output,
        num_resamples=args.resamples,
        command=" ".join(sys.argv),
    )
    for verdict in summary["verdicts"]:
        print(
            f"- [{verdict['dataset']}, {verdict['budget']}] {verdict['claim']}: "
            f"{verdict['verdict']} ({verdict['evidence']})"
        )
    print(f"Report: {os.path.join(args.output, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

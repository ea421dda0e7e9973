#!/usr/bin/env python
"""Train FCOS and R-CNN baselines alike, evaluate them along the way, judge the claims.

    python tools/compare.py --quick          # FCOS vs Mask R-CNN, short (meant for < 15 min)
    python tools/compare.py --full           # FCOS, Mask R-CNN, Faster R-CNN; 2 seeds; equal
                                             # iterations, equal time, and 2x and 4x the
                                             # schedule (at convergence); many hours on CPU
    python tools/compare.py --config-file A.yaml --config-file B.yaml --seeds 3 \
        --datasets shapes_val shapes_crowd_val --budget-minutes 30 --output output/compare
    python tools/compare.py --full --fcos-proposals   # + Mask R-CNN with FCOS proposals
    python tools/compare.py --full --schedules 1 2 4 8   # each model up to 8x its schedule
    python tools/compare.py --report-only --output output/compare_full
    python tools/compare.py --report-only --archive results/compare_full \
        --output output/compare_full     # the committed report, rebuilt on a fresh clone

Each training run happens in its own process (its own peak memory) and leaves a run
directory with run.json and its COCO predictions at every evaluation; a run directory
that already holds run.json is kept, and one that holds a resume checkpoint (written every
200 iterations and after each evaluation) goes on from it, so an interrupted comparison
resumes where it was, the interrupted run included.
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

from fcos_d2.comparison import archive, inference_timing, runner, timing
from fcos_d2.comparison.report import write_report
from fcos_d2.config import setup_cfg
from fcos_d2.data.coco_dataset import add_register_coco_argument, register_coco_datasets

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FCOS_CONFIG = str(CONFIGS / "shapes" / "FCOS_R_18_shapes_cpu.yaml")
MASK_RCNN_CONFIG = str(CONFIGS / "baselines" / "mask_rcnn_R_18_shapes_cpu.yaml")
FASTER_RCNN_CONFIG = str(CONFIGS / "baselines" / "faster_rcnn_R_18_shapes_cpu.yaml")
FCOS_PROPOSALS_CONFIG = str(CONFIGS / "baselines" / "mask_rcnn_FCOS_RPN_R_18_shapes_cpu.yaml")
# Normal and crowded scenes mixed for training; both kinds evaluated apart.
TRAIN_DATASETS = '("shapes_train", "shapes_crowd_train")'
VAL_DATASETS = ["shapes_val", "shapes_crowd_val"]
# --quick: 120 of the shapes schedule's 1500 iterations (LR steps at the same 75% / 92%), one
# seed, no time-budget runs, and FCOS again at twice that (the 'at convergence' path): 7.5 min
# on the 2-core EPYC at a fast speed probe (0.33 s). With 240 iterations of both models (no 2x)
# it took 13.7 min at a medium one, Mask R-CNN's training and evaluations most of it.
# Warm-up 100 iterations: Mask R-CNN from scratch diverged (NaN at iteration 40) after 30.
# The clock: two rounds of 30 timed iterations per model after 10 untimed; --quick: one of 15.
TIMING = {
    False: {"rounds": 2, "warmup": timing.WARMUP_ITERATIONS, "timed": timing.TIMED_ITERATIONS},
    True: {"rounds": 1, "warmup": 5, "timed": 15},
}
QUICK_OPTS = ["SOLVER.MAX_ITER", "120", "SOLVER.STEPS", "(90, 110)", "SOLVER.WARMUP_ITERS", "100"]


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
        help="FCOS and Mask R-CNN on shapes, 120 iterations (FCOS also 240), one seed, two "
        "evaluations, 200 resamples, no time-budget runs: the same code, in minutes",
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="FCOS, Mask R-CNN and Faster R-CNN on shapes, full schedule, and FCOS "
        "and Faster R-CNN again for as long as Mask R-CNN's schedule takes on the clock",
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
    parser.add_argument(
        "--schedules",
        type=float,
        nargs="+",
        metavar="K",
        help="also train every model at K times its schedule (LR steps at the same fractions), "
        "to find where each stops improving: the report's 'at convergence' budget (default "
        "1; --full 1 2 4; --quick 1 2, FCOS alone)",
    )
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
        help="also train every model for this long on the clock (schedule stretched to fit)",
    )
    parser.add_argument(
        "--budget-from",
        metavar="CONFIG",
        help="the time budget is this model's schedule on the clock (its iterations times "
        "its timed s/iter); --full: the Mask R-CNN config",
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
        "--time-inference",
        nargs="+",
        metavar="RUN",
        help="time these runs' final models (run directory names under --output/runs, with "
        "their model_final.pth) back-to-back on the same images of the first --datasets "
        f"set, writing {inference_timing.TIMING_FILE} to --output and --archive; the report "
        "shows it",
    )
    parser.add_argument(
        "--time-images", type=int, default=100, help="images --time-inference times (100)"
    )
    parser.add_argument(
        "--run-one",
        nargs=4,
        metavar=("CONFIG", "RUN_DIR", "SEED", "BUDGET_S"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--seconds-per-iter", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--budget-model", help=argparse.SUPPRESS)
    parser.add_argument("--schedule-multiple", type=float, help=argparse.SUPPRESS)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs for every model"
    )
    return parser


def run_directory(output: str, config: str, seed: int, budget: bool, multiple: float = 1) -> str:
    """output/runs/{config stem}__{iterations | iterations_x{multiple} | time_budget}__seed{N}."""
    schedule = "time_budget" if budget else "iterations"
    if not budget and multiple != 1:
        schedule += f"_x{multiple:g}"
    return os.path.join(output, "runs", f"{Path(config).stem}__{schedule}__seed{seed}")


def run_in_subprocess(
    args,
    config: str,
    run_dir: str,
    seed: int,
    budget_seconds: Optional[float],
    seconds_per_iter: Optional[float] = None,
    budget_model: Optional[str] = None,
    multiple: float = 1,
) -> dict:
    """Train and evaluate one model in its own process, unless its run.json exists; a run
    directory with a resume checkpoint of the same run goes on from it.

    ``budget_model``: the model whose schedule set ``budget_seconds`` (recorded); without
    it the budget is a fixed one (--budget-minutes), which a kept run must share.
    ``multiple``: the schedule's length as a multiple of the comparison's (LR steps at
    the same fractions; see ``runner.scaled_schedule_opts``)."""
    run_file = os.path.join(run_dir, runner.RUN_FILE)
    if os.path.isfile(run_file):
        with open(run_file) as f:
            kept_budget = json.load(f).get("budget_seconds")
        fixed_budget = budget_seconds and not budget_model
        if fixed_budget and kept_budget and not math.isclose(kept_budget, budget_seconds):
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
            *(["--budget-model", budget_model] if budget_model else []),
            *(["--schedule-multiple", f"{multiple:g}"] if multiple != 1 else []),
            "--datasets",
            *args.datasets,
            "--evaluations",
            str(args.evaluations),
            "--train-datasets",
            args.train_datasets,
            *args.opts,
            *(stretched_schedule_opts(args, config, multiple) if multiple != 1 else []),
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


def training_opts(args) -> List[str]:
    """KEY VALUE pairs every model trains with."""
    return ["DATASETS.TRAIN", args.train_datasets, *args.opts]


def timing_file(args) -> str:
    return os.path.join(args.output, timing.TIMING_FILE)


def read_clock(path: str) -> Optional[dict]:
    """The timing at ``path`` (None if absent); a broken file stops with its name."""
    try:
        return timing.read_timing(path)
    except ValueError as error:
        raise SystemExit(f"{error}; delete it to time the models again") from None


def read_inference_timing(args) -> Optional[dict]:
    """The back-to-back inference timing in --output, else in --archive (None if neither)."""
    for folder in filter(None, (args.output, args.archive)):
        path = os.path.join(folder, inference_timing.TIMING_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return None


def ensure_timing(args, configs: List[str]) -> dict:
    """The comparison's clock (see ``fcos_d2.comparison.timing``): kept if it times every
    model, otherwise every model is timed again, back-to-back, and it is written to
    --output and --archive."""
    path = timing_file(args)
    clock = read_clock(path)
    names = [timing.model_name(c) for c in configs]
    missing = [n for n in names if timing.seconds_per_iteration(clock, n) is None]
    if not missing:
        return clock
    if clock is not None:
        print(f"{path} does not time {', '.join(missing)}: timing every model again", flush=True)
    wait_while_held(args.hold_file)
    print(f"Timing training iterations of {', '.join(names)} back-to-back", flush=True)
    clock = timing.measure_training_speed(
        configs, training_opts(args), os.path.join(args.output, "timing"), **TIMING[args.quick]
    )
    timing.write_timing(clock, path)
    if args.archive:
        timing.write_timing(clock, os.path.join(args.archive, timing.TIMING_FILE))
    return clock


def schedule_iterations(args, config: str) -> int:
    """SOLVER.MAX_ITER of ``config`` with the comparison's KEY VALUE pairs."""
    return setup_cfg(config, training_opts(args)).SOLVER.MAX_ITER


def stretched_schedule_opts(args, config: str, multiple: float) -> List[str]:
    """KEY VALUE pairs for ``multiple`` times ``config``'s schedule (with the comparison's
    KEY VALUE pairs): the LR steps at the same fractions, the warm-up as long."""
    cfg = setup_cfg(config, training_opts(args))
    return runner.scaled_schedule_opts(cfg, round(cfg.SOLVER.MAX_ITER * multiple))


def longer_schedules(args, config: str) -> List[float]:
    """The multiples of the schedule, beyond 1×, that ``config`` trains (--schedules; with
    --quick, the judged FCOS alone)."""
    only = getattr(args, "longer_schedules_for", None)
    if only is not None and config not in only:
        return []
    return sorted(m for m in set(args.schedules or [1]) if m != 1)


def plan_and_run(args, configs: List[str]) -> None:
    """Time every model, train each at its schedule and, with a budget, the others for that
    long on the comparison's clock; then the longer schedules (--schedules).

    The judged pair (the first two models) goes first, seed by seed, schedule and budget
    runs together, so that an interrupted comparison has the runs that matter most. The
    other models follow: their schedule runs for every seed, then their budget runs.
    A budget from a model (--budget-from) is its schedule's iterations at its timed speed;
    the models trained for it get the iterations that fit at their own timed speeds.
    The longer schedules come last, shortest first, seed by seed, every model in turn: a
    plateau is decided between a schedule and its double, so each doubling completes the
    question for one more schedule.
    """
    clock = ensure_timing(args, configs)
    budget_from = args.budget_from
    judged, others = configs[:2], configs[2:]
    budget_model = timing.model_name(budget_from) if budget_from else None
    if budget_from:
        budget = (
            schedule_iterations(args, budget_from) * clock["seconds_per_iteration"][budget_model]
        )
    else:
        budget = 60 * args.budget_minutes if args.budget_minutes else None

    def run(
        config: str, seed: int, budget_seconds: Optional[float] = None, multiple: float = 1
    ) -> dict:
        run_dir = run_directory(args.output, config, seed, budget_seconds is not None, multiple)
        if not os.path.isfile(os.path.join(run_dir, runner.RUN_FILE)):
            wait_while_held(args.hold_file)
        pace = timing.seconds_per_iteration(clock, timing.model_name(config))
        result = run_in_subprocess(
            args,
            config,
            run_dir,
            seed,
            budget_seconds,
            pace if budget_seconds else None,
            budget_model if budget_seconds else None,
            multiple=multiple,
        )
        archived = args.archive and os.path.join(args.archive, os.path.basename(run_dir))
        if archived and not os.path.isfile(os.path.join(archived, runner.RUN_FILE)):
            archive.pack_run(run_dir, archived)
            print(f"Archived: {run_dir} -> {archived}", flush=True)
        return result

    def budget_runs(group: List[str], seed: int) -> None:
        for config in group:
            if budget is not None and config != budget_from:  # its own schedule is the budget
                run(config, seed, budget)

    for seed in range(args.seeds):
        for config in judged:
            run(config, seed)
        budget_runs(judged, seed)
    for seed in range(args.seeds):
        for config in others:
            run(config, seed)
    for seed in range(args.seeds):
        budget_runs(others, seed)
    for multiple in sorted({m for c in configs for m in longer_schedules(args, c)}):
        for seed in range(args.seeds):
            for config in configs:
                if multiple in longer_schedules(args, config):
                    run(config, seed, multiple=multiple)


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
            training_opts(args),
            seed=int(seed),
            num_evaluations=args.evaluations,
            budget_seconds=float(budget) or None,
            seconds_per_iteration=args.seconds_per_iter,
            budget_from=args.budget_model,
            schedule_multiple=args.schedule_multiple,
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
    args.schedules = args.schedules or ([1, 2, 4] if args.full else [1, 2] if args.quick else [1])
    args.longer_schedules_for = configs[:1] if args.quick else None
    bad_multiples = [k for k in args.schedules if not (k >= 1 and k * 4 == int(k * 4))]
    if bad_multiples:
        raise SystemExit(f"--schedules {bad_multiples[0]:g}: a multiple is 1 or more, in quarters")
    args.resamples = args.resamples or (200 if args.quick else 1000)
    args.output = args.output or ("output/compare_full" if args.full else "output/compare")
    if args.budget_from and args.budget_minutes:
        raise SystemExit("give --budget-minutes or --budget-from, not both")
    if args.budget_from and args.budget_from not in configs:
        raise SystemExit(f"--budget-from {args.budget_from} is not one of the --config-file models")

    if args.archive and os.path.isdir(args.archive):
        restored = archive.unpack_runs(args.archive, os.path.join(args.output, "runs"))
        print(f"Restored from {args.archive}: {', '.join(restored) or 'nothing new'}", flush=True)
        archived_timing = os.path.join(args.archive, timing.TIMING_FILE)
        if os.path.isfile(archived_timing) and not os.path.isfile(timing_file(args)):
            timing.write_timing(read_clock(archived_timing), timing_file(args))
    if not args.report_only:
        if len(configs) < 2:
            raise SystemExit("compare.py needs two or more --config-file (or --quick / --full)")
        for config in configs:
            if not os.path.isfile(config):
                raise SystemExit(f"--config-file {config}: no such file")
        plan_and_run(args, configs)
    if args.archive:  # runs trained before --archive was given, too
        archive.pack_runs(os.path.join(args.output, "runs"), args.archive, only_new=True)
    if args.time_inference:
        run_dirs = [os.path.join(args.output, "runs", name) for name in args.time_inference]
        timed = inference_timing.time_inference(run_dirs, args.datasets[0], args.time_images)
        for folder in filter(None, (args.output, args.archive)):
            with open(os.path.join(folder, inference_timing.TIMING_FILE), "w") as f:
                json.dump(timed, f, indent=1)
        for name, model in timed["models"].items():
            print(f"Inference {name}: {model['median_s']:.4f} s/image (median)", flush=True)

    summary = write_report(
        os.path.join(args.output, "runs"),
        args.output,
        num_resamples=args.resamples,
        command=" ".join(sys.argv),
        clock=read_clock(timing_file(args)),
        inference=read_inference_timing(args),
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

#!/usr/bin/env python
"""Train (or load) several detectors, evaluate them alike, and report side by side.

    python tools/compare.py --quick                       # FCOS vs Mask R-CNN on shapes, < 20 min on CPU
    python tools/compare.py --config-file configs/shapes/FCOS_R_18_shapes_cpu.yaml \
        --config-file configs/baselines/mask_rcnn_R_18_shapes_cpu.yaml --train \
        --dataset shapes_val --output output/compare
    python tools/compare.py --config-file A.yaml --config-file B.yaml --weights a.pth b.pth ...
    python tools/compare.py --report-only --output output/compare RUN_DIR [RUN_DIR ...]

Each model runs in its own process (so its peak memory is its own) and leaves a run
directory with run.json and its COCO predictions; the report (report.md, plots,
report.json with the claim verdicts) is computed from those files alone.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOEvaluator, inference_on_dataset  # noqa: E402
from torch import nn  # noqa: E402

import train_net  # noqa: E402
from fcos_d2.comparison.report import RUN_FILE, write_report  # noqa: E402

# The claims are against Mask R-CNN; Faster R-CNN is left to full runs, since an R-CNN
# iteration costs ~5x FCOS's on a 2-core CPU and --quick must stay under 20 minutes.
QUICK_CONFIGS = [
    "configs/shapes/FCOS_R_18_shapes_cpu.yaml",
    "configs/baselines/mask_rcnn_R_18_shapes_cpu.yaml",
]
# A third of the shapes schedule, same shape: every model, same iterations.
QUICK_OPTS = ["SOLVER.MAX_ITER", "500", "SOLVER.STEPS", "(375, 460)",
              "SOLVER.WARMUP_ITERS", "50", "SOLVER.CHECKPOINT_PERIOD", "100000"]


class TimedModel(nn.Module):
    """Wraps a model and adds up the wall time of its forward calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.seconds = 0.0
        self.calls = 0

    def forward(self, inputs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = self.model(inputs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.calls += len(inputs)
        return outputs


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def _median_iteration_time(metrics_file: str):
    with open(metrics_file) as f:
        times = [json.loads(line).get("time") for line in f]
    times = [t for t in times if t is not None]
    return statistics.median(times) if times else None


def run_one(config: str, run_dir: str, dataset: str, train: bool, weights: str, opts) -> dict:
    """Train or load one model, evaluate it on ``dataset``, write ``run.json``."""
    common = [*opts, "OUTPUT_DIR", run_dir]
    cfg = train_net.build_config(config, [*common, "DATASETS.TEST", "()"])
    train_s_per_iter = None
    if train:
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        model = trainer.model
        train_s_per_iter = _median_iteration_time(os.path.join(run_dir, "metrics.json"))
    else:
        model = train_net.Trainer.build_model(cfg)
        DetectionCheckpointer(model).load(weights)
    eval_cfg = train_net.build_config(config, [*common, "DATASETS.TEST", f"('{dataset}',)"])
    timed = TimedModel(model)
    results = inference_on_dataset(
        timed,
        train_net.Trainer.build_test_loader(eval_cfg, dataset),
        COCOEvaluator(dataset, output_dir=run_dir),
    )
    run = {
        "name": Path(config).stem,
        "config": config,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_s_per_iter": train_s_per_iter,
        "infer_s_per_image": timed.seconds / max(timed.calls, 1),
        "peak_memory_mb": _peak_memory_mb(),
        "device": cfg.MODEL.DEVICE,
        "detectron2_results": results,
    }
    with open(os.path.join(run_dir, RUN_FILE), "w") as f:
        json.dump(run, f, indent=1)
    return run


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", action="append", default=[], metavar="FILE")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="train each model first")
    mode.add_argument("--weights", nargs="+", help="one checkpoint per --config-file")
    mode.add_argument("--report-only", action="store_true", help="report on existing run dirs")
    parser.add_argument("--dataset", default="shapes_val")
    parser.add_argument("--output", default="output/compare")
    parser.add_argument("--quick", action="store_true",
                        help="the shapes configs, trained for a third of their schedule")
    parser.add_argument("--run-one", metavar="RUN_DIR", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER,
                        help="config KEY VALUE pairs for every model (or RUN_DIRs with --report-only)")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    opts = (QUICK_OPTS if args.quick else []) + args.rest
    if args.run_one:
        weights = args.weights[0] if args.weights else None
        run_one(args.config_file[0], args.run_one, args.dataset, not weights, weights, opts)
        return 0

    if args.report_only:
        run_dirs = args.rest
    else:
        configs = args.config_file or (QUICK_CONFIGS if args.quick else [])
        if len(configs) < 2:
            raise SystemExit("compare.py needs two or more --config-file (or --quick)")
        if args.weights and len(args.weights) != len(configs):
            raise SystemExit(f"--weights needs one checkpoint per config: {len(configs)} configs, "
                             f"{len(args.weights)} weights")
        if not args.weights and not args.train and not args.quick:
            raise SystemExit("say --train or --weights")
        run_dirs = []
        for i, config in enumerate(configs):
            run_dir = os.path.join(args.output, Path(config).stem)
            os.makedirs(run_dir, exist_ok=True)
            command = [sys.executable, __file__, "--run-one", run_dir, "--config-file", config]
            if args.weights:
                command += ["--weights", args.weights[i]]
            command += ["--dataset", args.dataset, *opts]
            print("Running:", " ".join(command), flush=True)
            subprocess.run(command, check=True, cwd=REPO)
            run_dirs.append(run_dir)

    dataset_json = MetadataCatalog.get(args.dataset).json_file
    summary = write_report(run_dirs, dataset_json, args.output)
    print(open(os.path.join(args.output, "report.md")).read().split("## Curves")[0])
    for verdict in summary["verdicts"]:
        print(f"- {verdict['claim']}: {verdict['verdict']} ({verdict['evidence']})")
    print(f"Report: {os.path.join(args.output, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

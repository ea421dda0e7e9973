#!/usr/bin/env python
"""`make demo`: train FCOS from scratch on the built-in shapes dataset, evaluate, draw.

The two commands a user would type, run one after the other: ``train_net.py`` on
``configs/shapes/FCOS_R_18_shapes_cpu.yaml`` and ``demo.py`` on a few validation images.
Everything lands in the config's OUTPUT_DIR (output/demo): checkpoints, metrics,
TensorBoard events, the COCO evaluation, and predictions/ with those images and their
detections drawn. Extra arguments are config KEY VALUE pairs for both.

The terminal gets a progress line every PROGRESS_EVERY iterations (iteration, ETA, loss)
and the results; what the two commands print goes to OUTPUT_DIR/console.txt (Detectron2's
own log is OUTPUT_DIR/log.txt), and its end is shown if one of them fails.
"""

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

# isort: off
import fcos_d2  # noqa: F401  (first: registers the shapes datasets)

# isort: on
from detectron2.data import DatasetCatalog, MetadataCatalog
from tabulate import tabulate

from fcos_d2.config import setup_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "shapes" / "FCOS_R_18_shapes_cpu.yaml"
NUM_DRAWN = 8
PROGRESS_EVERY = 100  # iterations between progress lines
POLL_SECONDS = 2.0


def final_evaluation(metrics_file: str) -> Dict[str, float]:
    """The box AP figures of the last evaluation Detectron2 wrote to metrics.json."""
    bbox = {}
    with open(metrics_file) as f:
        for line in f:
            record = json.loads(line)
            if any(key.startswith("bbox/") for key in record):
                bbox = {k[len("bbox/") :]: v for k, v in record.items() if k.startswith("bbox/")}
    if not bbox:
        raise SystemExit(f"{metrics_file}: no bbox/* evaluation recorded")
    return bbox


def progress_line(record: dict, max_iter: int) -> str:
    """``iter 300/1500  eta 0:03:20  loss 0.734`` from a metrics.json record."""
    eta = record.get("eta_seconds")
    eta_text = str(datetime.timedelta(seconds=round(eta))) if eta is not None else "?"
    loss = record.get("total_loss")
    loss_text = f"{loss:.3f}" if loss is not None else "?"
    return f"iter {record['iteration'] + 1}/{max_iter}  eta {eta_text}  loss {loss_text}"


def new_records(metrics_file: str, offset: int):
    """The complete metrics.json lines written after byte ``offset``, and the new offset."""
    if not os.path.isfile(metrics_file):
        return [], offset
    with open(metrics_file) as f:
        f.seek(offset)
        text = f.read()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(
        complete.encode()
    )


def run_quietly(command: List[str], console: str, metrics_file: str = "", max_iter: int = 0):
    """Run ``command`` with its output appended to ``console``; while it runs, print a
    progress line from ``metrics_file`` every PROGRESS_EVERY iterations.

    Raises:
        SystemExit: when the command fails, after printing the end of its output.
    """
    offset = os.path.getsize(metrics_file) if os.path.isfile(metrics_file) else 0
    next_report = PROGRESS_EVERY
    with open(console, "a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while True:
            finished = process.poll() is not None
            records, offset = new_records(metrics_file, offset) if metrics_file else ([], 0)
            for record in records:
                if "total_loss" in record and record["iteration"] + 1 >= next_report:
                    print(progress_line(record, max_iter), flush=True)
                    next_report = (record["iteration"] + 1) // PROGRESS_EVERY * PROGRESS_EVERY
                    next_report += PROGRESS_EVERY
            if finished:
                break
            time.sleep(POLL_SECONDS)
    if process.returncode != 0:
        with open(console) as f:
            tail = f.readlines()[-30:]
        print("".join(tail), end="", file=sys.stderr)
        raise SystemExit(
            f"{Path(command[1]).name} failed (exit {process.returncode}); full output: {console}"
        )


def main(opts: List[str]) -> int:
    cfg = setup_cfg(str(CONFIG), opts)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    console = os.path.join(cfg.OUTPUT_DIR, "console.txt")
    metrics_file = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    print(
        f"Training FCOS (R-18) from scratch on {cfg.DATASETS.TRAIN[0]} for "
        f"{cfg.SOLVER.MAX_ITER} iterations; log: {cfg.OUTPUT_DIR}/log.txt",
        flush=True,
    )
    start = time.perf_counter()
    train = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(CONFIG), *opts]
    run_quietly(train, console, metrics_file, cfg.SOLVER.MAX_ITER)
    train_minutes = (time.perf_counter() - start) / 60

    val_name = cfg.DATASETS.TEST[0]
    val_images = [d["file_name"] for d in DatasetCatalog.get(val_name)[:NUM_DRAWN]]
    drawn_dir = os.path.join(cfg.OUTPUT_DIR, "predictions")
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    draw = [sys.executable, str(REPO / "demo.py"), "--config-file", str(CONFIG)]
    draw += ["--input", *val_images, "--output", drawn_dir, "--confidence-threshold", "0.3"]
    run_quietly([*draw, *opts, "MODEL.WEIGHTS", weights], console)

    bbox = final_evaluation(metrics_file)
    print()
    print(
        f"FCOS on {val_name} ({len(MetadataCatalog.get(val_name).thing_classes)} classes), "
        f"trained from scratch in {train_minutes:.1f} min"
    )
    print(
        tabulate(
            [[f"{bbox[k]:.1f}" for k in bbox]],
            headers=list(bbox),
            tablefmt="pipe",
            disable_numparse=True,
        )
    )
    print(f"Drawn predictions: {drawn_dir}/")
    with open(os.path.join(cfg.OUTPUT_DIR, "demo_summary.json"), "w") as f:
        json.dump({"train_and_eval_minutes": train_minutes, "bbox": bbox}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python
"""`make demo`: train FCOS from scratch on the built-in shapes dataset, evaluate, draw.

The two commands a user would type, run one after the other: ``train_net.py`` on
``configs/shapes/FCOS_R_18_shapes_cpu.yaml`` and ``demo.py`` on a few validation images.
Everything lands in the config's OUTPUT_DIR (output/demo): checkpoints, metrics,
TensorBoard events, the COCO evaluation, and predictions/ with those images and their
detections drawn. Extra arguments are config KEY VALUE pairs for both.
"""

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


def main(opts: List[str]) -> int:
    cfg = setup_cfg(str(CONFIG), opts)
    start = time.perf_counter()
    train = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(CONFIG), *opts]
    subprocess.run(train, check=True)
    train_minutes = (time.perf_counter() - start) / 60

    val_name = cfg.DATASETS.TEST[0]
    val_images = [d["file_name"] for d in DatasetCatalog.get(val_name)[:NUM_DRAWN]]
    drawn_dir = os.path.join(cfg.OUTPUT_DIR, "predictions")
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    draw = [sys.executable, str(REPO / "demo.py"), "--config-file", str(CONFIG)]
    draw += ["--input", *val_images, "--output", drawn_dir, "--confidence-threshold", "0.3"]
    subprocess.run([*draw, *opts, "MODEL.WEIGHTS", weights], check=True)

    bbox = final_evaluation(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))
    print()
    print(
        f"FCOS on {val_name} ({len(MetadataCatalog.get(val_name).thing_classes)} classes), "
        f"trained from scratch in {train_minutes:.1f} min"
    )
    print(tabulate([[f"{bbox[k]:.1f}" for k in bbox]], headers=list(bbox), tablefmt="pipe"))
    print(f"Drawn predictions: {drawn_dir}/")
    with open(os.path.join(cfg.OUTPUT_DIR, "demo_summary.json"), "w") as f:
        json.dump({"train_and_eval_minutes": train_minutes, "bbox": bbox}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

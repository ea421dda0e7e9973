#!/usr/bin/env python
"""`make demo`: train FCOS from scratch on the built-in shapes dataset, evaluate, draw.

Everything lands in the config's OUTPUT_DIR (output/demo): checkpoints, metrics,
TensorBoard events, the COCO evaluation, and predictions/ with a few validation
images with their detections drawn. Extra arguments are config KEY VALUE pairs.
"""

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from tabulate import tabulate  # noqa: E402

import demo  # noqa: E402
import train_net  # noqa: E402

CONFIG = REPO / "configs" / "shapes" / "FCOS_R_18_shapes_cpu.yaml"
NUM_DRAWN = 8


def main(opts) -> int:
    start = time.perf_counter()
    args = train_net.argument_parser().parse_args(["--config-file", str(CONFIG), *opts])
    results = train_net.main(args)
    train_minutes = (time.perf_counter() - start) / 60

    cfg = train_net.build_config(args.config_file, args.opts)
    val_name = cfg.DATASETS.TEST[0]
    val_images = [Path(d["file_name"]) for d in DatasetCatalog.get(val_name)[:NUM_DRAWN]]
    drawn_dir = os.path.join(cfg.OUTPUT_DIR, "predictions")
    demo.predict_images(
        train_net.build_config(
            args.config_file,
            [*args.opts, "MODEL.WEIGHTS", os.path.join(cfg.OUTPUT_DIR, "model_final.pth")],
        ),
        val_images,
        drawn_dir,
        confidence_threshold=0.3,
    )

    bbox = results["bbox"]
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

#!/usr/bin/env python
"""Run a trained model on images: annotated images and a JSON of detections.

    python demo.py --config-file configs/shapes/FCOS_R_18_shapes_cpu.yaml \
        --input a.png b.jpg some_dir/ --output out/ [--confidence-threshold 0.3] \
        MODEL.WEIGHTS output/demo/model_final.pth

Unreadable images are reported by name and skipped; the others still run.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

import fcos_d2  # noqa: F401  (registers FCOS and the built-in datasets)
from train_net import build_config

DRAWN_SIZE = 512  # pixels on the longer side of a drawn image, at least
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
logger = logging.getLogger("fcos_d2.demo")


def expand_inputs(inputs: List[str]) -> List[Path]:
    """Files as given, and the images inside any directory given, in sorted order."""
    paths: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(item)
    return paths


def detections_to_json(instances, class_names: List[str]) -> List[Dict]:
    """Plain-Python detections: box (x0, y0, x1, y1), score, class id and name."""
    instances = instances.to("cpu")
    return [
        {
            "bbox": [round(v, 2) for v in box.tolist()],
            "score": round(float(score), 4),
            "class_id": int(cls),
            "class_name": class_names[int(cls)] if int(cls) < len(class_names) else str(int(cls)),
        }
        for box, score, cls in zip(
            instances.pred_boxes.tensor, instances.scores, instances.pred_classes
        )
    ]


def predict_images(cfg, paths: List[Path], output_dir: str, confidence_threshold: float):
    """Detect on each image and write ``<stem>.png`` (boxes drawn) and ``detections.json``.

    Returns:
        (detections by image path, the paths that could not be read).
    """
    os.makedirs(output_dir, exist_ok=True)
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    class_names = metadata.get("thing_classes", [])
    results, skipped = {}, []
    for path in paths:
        try:
            image = read_image(str(path), format="BGR")
        except Exception as e:  # PIL raises several types for unreadable files
            logger.error("Skipping %s: cannot read it as an image (%s)", path, e)
            skipped.append(str(path))
            continue
        with torch.no_grad():
            instances = predictor(image)["instances"]
        instances = instances[instances.scores >= confidence_threshold]
        # Small images are drawn enlarged so the labels stay readable.
        scale = max(1.0, DRAWN_SIZE / max(image.shape[:2]))
        visualizer = Visualizer(image[:, :, ::-1], metadata=metadata, scale=scale)
        drawn = visualizer.draw_instance_predictions(instances.to("cpu"))
        drawn.save(os.path.join(output_dir, path.stem + ".png"))
        results[str(path)] = detections_to_json(instances, class_names)
    with open(os.path.join(output_dir, "detections.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results, skipped


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images and/or directories")
    parser.add_argument("--output", required=True, help="directory for the results")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    setup_logger(name="fcos_d2")
    cfg = build_config(args.config_file, args.opts)
    paths = expand_inputs(args.input)
    results, skipped = predict_images(cfg, paths, args.output, args.confidence_threshold)
    print(f"{len(results)} images written to {args.output}; {len(skipped)} skipped")
    for path in skipped:
        print(f"  skipped (unreadable): {path}")
    return 0 if results or not paths else 1


if __name__ == "__main__":
    sys.exit(main())

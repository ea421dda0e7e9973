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
from typing import Dict, List, Optional, Tuple

# isort: off
import fcos_d2  # noqa: F401  (first: registers FCOS, silences third-party warnings)
# isort: on

import torch
from detectron2.data import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from torchvision.ops import nms

from fcos_d2.checkpoint import check_num_classes
from fcos_d2.classes import ModelClasses, classes_for_weights
from fcos_d2.config import setup_cfg
from fcos_d2.data.coco_dataset import add_register_coco_argument, register_coco_datasets
from fcos_d2.data.image_io import read_image
from fcos_d2.data.voc_dataset import add_register_voc_argument, register_voc_datasets

DRAWN_SIZE = 512  # pixels on the longer side of a drawn image, at least
# Drawing only: of detections overlapping more than this (any classes), only the best-scored
# is drawn, so the label a person reads on an object is the model's best guess for it.
# detections.json keeps every detection.
DRAWING_OVERLAP = 0.7
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
logger = logging.getLogger("fcos_d2.demo")


def expand_inputs(inputs: List[str], recursive: bool = False) -> List[Tuple[Path, str]]:
    """(image path, name of its drawn output) for the files given and the images inside
    the directories given, in sorted order.

    An output is named after its image with the extension kept (``a.jpg`` ->
    ``a.jpg.png``), with its path below the directory it was found in; names that would
    collide get a suffix. Subdirectories are walked with ``recursive``, else reported.
    """
    found: List[Tuple[Path, str]] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            found.append((item, item.name))
            continue
        children = sorted(item.rglob("*") if recursive else item.iterdir())
        found += [
            (p, str(p.relative_to(item)))
            for p in children
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        subdirectories = [p.name for p in children if p.is_dir()]
        if subdirectories and not recursive:
            logger.warning(
                "%s: %d subdirectories not read (%s); --recursive reads them",
                item,
                len(subdirectories),
                ", ".join(subdirectories[:5]),
            )
    used: Dict[str, int] = {}
    result = []
    for path, name in found:
        output = name + ".png"
        if output in used:
            used[output] += 1
            output = f"{name}-{used[output]}.png"
        used.setdefault(output, 0)
        result.append((path, output))
    return result


def detections_to_json(instances, classes: Optional[ModelClasses]) -> List[Dict]:
    """Plain-Python detections: box (x0, y0, x1, y1), score, the model's class index,
    the training set's category id and the class name."""
    instances = instances.to("cpu")
    return [
        {
            "bbox": [round(v, 2) for v in box.tolist()],
            "score": round(float(score), 4),
            "class_id": int(cls),
            "category_id": classes.category_id(int(cls)) if classes else int(cls),
            "class_name": classes.name(int(cls)) if classes else str(int(cls)),
        }
        for box, score, cls in zip(
            instances.pred_boxes.tensor, instances.scores, instances.pred_classes
        )
    ]


def best_per_object(instances):
    """The detections to draw: a class-agnostic NMS at ``DRAWING_OVERLAP``, best first.

    Class-aware NMS lets a low-scored detection of another class sit on the same object;
    drawn, its label can cover the right one.
    """
    keep = nms(instances.pred_boxes.tensor, instances.scores, DRAWING_OVERLAP)
    return instances[keep]


def predict_images(cfg, paths: List, output_dir: str, confidence_threshold: float):
    """Detect on each image and write it drawn, and ``detections.json``.

    Args:
        paths: image paths (drawn as ``<name>.png``) or (path, output name) pairs, as
            :func:`expand_inputs` gives them.

    Returns:
        (detections by image path, the paths that could not be read).
    """
    os.makedirs(output_dir, exist_ok=True)
    predictor = DefaultPredictor(cfg)
    check_num_classes(predictor.model, cfg.MODEL.WEIGHTS, fine_tuning=False)
    classes = classes_for_weights(
        cfg.MODEL.WEIGHTS, cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    )
    metadata = Metadata(name="fcos_d2_demo", thing_classes=classes.names if classes else [])
    results, skipped = {}, []
    for entry in paths:
        path, output_name = (
            entry if isinstance(entry, tuple) else (Path(entry), Path(entry).name + ".png")
        )
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
        drawn = visualizer.draw_instance_predictions(best_per_object(instances.to("cpu")))
        output_path = os.path.join(output_dir, output_name)
        os.makedirs(os.path.dirname(output_path), exist_ok=True)
        drawn.save(output_path)
        results[str(path)] = detections_to_json(instances, classes)
    with open(os.path.join(output_dir, "detections.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results, skipped


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images and/or directories")
    parser.add_argument("--output", required=True, help="directory for the results")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument("--recursive", action="store_true", help="read subdirectories too")
    add_register_coco_argument(parser)
    add_register_voc_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    setup_logger(name="fcos_d2")
    register_coco_datasets(args.register_coco)
    register_voc_datasets(args.register_voc)
    cfg = setup_cfg(args.config_file, args.opts)
    paths = expand_inputs(args.input, args.recursive)
    results, skipped = predict_images(cfg, paths, args.output, args.confidence_threshold)
    print(f"{len(results)} images written to {args.output}; {len(skipped)} skipped")
    for path in skipped:
        print(f"  skipped (unreadable): {path}")
    return 0 if results or not paths else 1


if __name__ == "__main__":
    sys.exit(main())

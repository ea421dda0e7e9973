#!/usr/bin/env python
"""See how FCOS sees one image: per-level score and centerness maps, and for the top
detections the location that produced each box with its (l, t, r, b) distances.

    python tools/visualize_fcos.py --input IMAGE \
        --config-file configs/shapes/FCOS_R_18_shapes_cpu.yaml --output fcos_view.png \
        [--top 5] MODEL.WEIGHTS output/demo/model_final.pth

Top row: the image with the top detections; a dot marks the location whose prediction
became the box, arrows its distances to the four sides. Then one column per pyramid level
(stride s): the best class probability at each location, the predicted centerness, and
their product's square root (the detection score), each over the image. Boxes are labelled
with the names in the classes.json beside the weights, else those of DATASETS.TEST[0]
(``--register-coco`` / ``--register-voc`` register it, as in train_net.py).
"""

import argparse
import sys
from typing import List, Optional

# isort: off
import fcos_d2  # noqa: F401  (first: registers FCOS, silences third-party warnings)
# isort: on

import matplotlib
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from fcos_d2.checkpoint import check_num_classes
from fcos_d2.classes import classes_for_weights
from fcos_d2.config import setup_cfg
from fcos_d2.data.coco_dataset import add_register_coco_argument, register_coco_datasets
from fcos_d2.data.image_io import read_image
from fcos_d2.data.voc_dataset import add_register_voc_argument, register_voc_datasets
from fcos_d2.modeling.postprocess import decode_boxes, detect_single_image, select_level_candidates

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def level_maps(model, image_chw: torch.Tensor):
    """Head outputs of one image, per level: (logits (R_l, K), distances (R_l, 4), centerness
    logits (R_l,), locations (R_l, 2), stride, (H_l, W_l))."""
    images = model.preprocess_image([{"image": image_chw}])
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, box_dists, centerness = model.flatten_predictions(model.head(features))
    grid = model.location_grid(features)
    points = grid.points.split(grid.num_per_level)
    per_level = [
        (x[0], d[0], c[0, :, 0], p, s, tuple(f.shape[-2:]))
        for x, d, c, p, s, f in zip(logits, box_dists, centerness, points, model.strides, features)
    ]
    return per_level


def locate_detections(model, per_level, boxes, scores, classes, image_size):
    """For each detection, (level, point (x, y), pixel distances l, t, r, b) of the location
    whose candidate it is: the same class and score among the per-level candidates."""
    found = []
    for box, score, cls in zip(boxes, scores, classes):
        best = None
        for level, (logits, dists, ctr, points, stride, _) in enumerate(per_level):
            cand_scores, locations, cand_classes = select_level_candidates(
                logits, ctr, model.score_thresh, model.thresh_with_centerness, model.topk_candidates
            )
            same = (cand_classes == cls) & ((cand_scores - score).abs() < 1e-6)
            for location in locations[same]:
                pixel = dists[location] * stride if model.norm_reg_targets else dists[location]
                decoded = decode_boxes(points[location][None], pixel[None])[0]
                decoded[0::2] = decoded[0::2].clamp(0, image_size[1])
                decoded[1::2] = decoded[1::2].clamp(0, image_size[0])
                error = float((decoded - box).abs().max())
                if best is None or error < best[0]:
                    best = (error, level, points[location].tolist(), pixel.tolist())
        found.append(None if best is None else best[1:])
    return found


def draw(image_rgb: np.ndarray, model, per_level, detections, names: List[str], path: str) -> None:
    boxes, scores, classes, origins = detections
    num_levels = len(per_level)
    columns = max(num_levels, 3)
    # The detections large on top (3 rows' height), the per-level maps below.
    fig = plt.figure(figsize=(3.4 * columns, 3.4 * (3 + 3)))
    grid = fig.add_gridspec(6, columns)
    ax = fig.add_subplot(grid[0:3, :])
    ax.imshow(image_rgb, interpolation="nearest")
    ax.set_title("top detections: the location (dot) that produced each box, and its l, t, r, b")
    colors = plt.cm.tab10(np.arange(10))
    for i, (box, score, cls, origin) in enumerate(zip(boxes, scores, classes, origins)):
        color = colors[i % 10]
        x0, y0, x1, y1 = box.tolist()
        ax.add_patch(
            plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, linewidth=2)
        )
        name = names[int(cls)] if int(cls) < len(names) else str(int(cls))
        ax.text(
            x0 + 1,
            y0 + 1,
            f"{name} {float(score):.2f}",
            color="white",
            fontsize=10,
            va="top",
            bbox={"facecolor": color, "alpha": 0.85, "pad": 1.5, "edgecolor": "none"},
            clip_on=True,
        )
        if origin is None:
            continue
        level, (px, py), (left, top, right, bottom) = origin
        ax.plot(px, py, "o", color=color, markersize=6, markeredgecolor="white")
        for dx, dy in ((-left, 0), (0, -top), (right, 0), (0, bottom)):
            ax.annotate(
                "",
                xy=(px + dx, py + dy),
                xytext=(px, py),
                arrowprops={"arrowstyle": "->", "color": color, "linewidth": 1.5},
            )
        ax.text(
            px + 1.5,
            py + 1.5,
            f"{model.head_in_features[level]}: "
            f"l {left:.0f}, t {top:.0f}, r {right:.0f}, b {bottom:.0f}",
            color=color,
            fontsize=8,
            va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "edgecolor": "none"},
            clip_on=True,
        )
    ax.set_axis_off()
    height, width = image_rgb.shape[:2]
    for level, (logits, _, ctr, _, stride, (h, w)) in enumerate(per_level):
        class_prob = logits.sigmoid().max(dim=1).values.reshape(h, w).numpy()
        centerness = ctr.sigmoid().reshape(h, w).numpy()
        rows = (
            ("best class probability", class_prob),
            ("centerness", centerness),
            ("score sqrt(class x centerness)", np.sqrt(class_prob * centerness)),
        )
        for row, (title, values) in enumerate(rows, start=3):
            axis = fig.add_subplot(grid[row, level])
            axis.imshow(image_rgb, alpha=0.45)
            axis.imshow(
                values,
                cmap="magma",
                vmin=0,
                vmax=1,
                alpha=0.65,
                interpolation="nearest",
                extent=(0, w * stride, h * stride, 0),
            )
            axis.set_xlim(0, width)
            axis.set_ylim(height, 0)
            axis.set_title(
                f"{model.head_in_features[level]} (stride {stride}): {title}", fontsize=9
            )
            axis.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, metavar="IMAGE")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", default="fcos_view.png")
    parser.add_argument("--top", type=int, default=5, help="detections to explain")
    add_register_coco_argument(parser)
    add_register_voc_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args(argv)

    # Class names: OUTPUT_DIR/classes.json beside the weights, else DATASETS.TEST[0]'s.
    register_coco_datasets(args.register_coco)
    register_voc_datasets(args.register_voc)
    cfg = setup_cfg(args.config_file, args.opts)
    if cfg.MODEL.META_ARCHITECTURE != "FCOS":
        raise SystemExit(
            f"{args.config_file}: MODEL.META_ARCHITECTURE is "
            f"{cfg.MODEL.META_ARCHITECTURE}, not FCOS"
        )
    model = build_model(cfg).eval()
    check_num_classes(model, cfg.MODEL.WEIGHTS, fine_tuning=False)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    classes = classes_for_weights(
        cfg.MODEL.WEIGHTS, cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    )
    try:
        original = read_image(args.input, format=cfg.INPUT.FORMAT)
    except Exception as e:  # PIL raises several types for unreadable files
        raise SystemExit(f"{args.input}: cannot be read as an image ({e})") from e
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(original).apply_image(original)  # (H, W, C), as the model sees it
    image_chw = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    with torch.no_grad():
        per_level = level_maps(model, image_chw)
        size = image.shape[:2]
        boxes, scores, classes_ = detect_single_image(
            [level[0] for level in per_level],  # (R_l, K) logits
            [level[1] for level in per_level],  # (R_l, 4) distances
            [level[2] for level in per_level],  # (R_l,) centerness logits
            [level[3] for level in per_level],  # (R_l, 2) locations
            model.strides,
            size,
            **model.postprocess_arguments(),
        )
        boxes, scores, classes_ = boxes[: args.top], scores[: args.top], classes_[: args.top]
        origins = locate_detections(model, per_level, boxes, scores, classes_, size)
    image_rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
    draw(
        np.ascontiguousarray(image_rgb),
        model,
        per_level,
        (boxes, scores, classes_, origins),
        classes.names if classes else [],
        args.output,
    )
    print(f"{args.output}: {len(boxes)} detections explained, {len(per_level)} levels")
    return 0


if __name__ == "__main__":
    sys.exit(main())

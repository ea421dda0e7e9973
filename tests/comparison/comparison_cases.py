"""Hand-made datasets and detections with known answers for the comparison's tests."""

import json

import numpy as np

from fcos_d2.comparison import analysis, bootstrap
from fcos_d2.comparison.statistics import Series, evaluate_series, group_datasets

HEAVY, LIGHT, CLEAR = "IoU > 0.3", "IoU (0, 0.3]", "no overlap"


def hand_built_dataset():
    """Image 1: A, B with IoU 1/3. Image 2: C, D with IoU 1/9. Image 3: E alone."""
    boxes = {
        1: (1, [0, 0, 10, 10]),
        2: (1, [5, 0, 10, 10]),
        3: (2, [0, 0, 10, 10]),
        4: (2, [8, 0, 10, 10]),
        5: (3, [20, 20, 10, 10]),
    }
    return {
        "images": [
            {"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in (1, 2, 3)
        ],
        "annotations": [
            {
                "id": a,
                "image_id": img,
                "category_id": 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            for a, (img, box) in boxes.items()
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }


def detection(image_id, box, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


# A, C, D and E found exactly; B missed; one false positive that outranks everything.
PREDICTIONS = [
    detection(1, [0, 0, 10, 10], 0.9),
    detection(2, [0, 0, 10, 10], 0.85),
    detection(2, [8, 0, 10, 10], 0.84),
    detection(3, [20, 20, 10, 10], 0.8),
    detection(3, [40, 40, 10, 10], 0.95),
]


def random_case(num_images=30, seed=0):
    """A dataset of 3 classes with jittered, missed, misclassified and spurious detections."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 100, "width": 100})
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(8, 40, 2)
            category = int(rng.integers(1, 4))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.uniform() < 0.05),
                }
            )
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(0, 3, 4)
                predicted = category if rng.uniform() < 0.8 else int(rng.integers(1, 4))
                predictions.append(
                    detection(
                        image_id,
                        [
                            x + jitter[0],
                            y + jitter[1],
                            max(w + jitter[2], 1),
                            max(h + jitter[3], 1),
                        ],
                        float(rng.uniform()),
                        predicted,
                    )
                )
        for _ in range(rng.integers(0, 4)):
            predictions.append(
                detection(
                    image_id,
                    [*rng.uniform(0, 80, 2), *rng.uniform(5, 20, 2)],
                    float(rng.uniform(0, 0.6)),
                    int(rng.integers(1, 4)),
                )
            )
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}, predictions


def make_series(name, meta_architecture, predictions_per_seed, dataset, weights, curves=None):
    series = Series(
        name,
        meta_architecture,
        "iterations",
        [
            {"seed": s, "train_s_per_iter": 0.1, "train_seconds": 60.0}
            for s in range(len(predictions_per_seed))
        ],
    )
    ground_truth = {g: analysis.coco_from_dict(d) for g, d in group_datasets(dataset).items()}
    curves = curves or [[(60.0, p)] for p in predictions_per_seed]
    draws = bootstrap.seed_draws(len(predictions_per_seed), len(weights), seed=len(name))
    evaluate_series(series, predictions_per_seed, curves, ground_truth, weights, draws)
    return series


def crowded_case(isolated=20):
    """``isolated`` images with one isolated box, 20 with two boxes overlapping at IoU 0.6."""
    images, annotations = [], []

    def add(image_id, box):
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )

    for image_id in range(1, isolated + 21):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 100, "width": 100})
        add(image_id, [10, 10, 40, 40])
        if image_id > isolated:
            add(image_id, [20, 10, 40, 40])  # IoU with the first: 1200 / 2000 = 0.6
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }


def write_run(
    root,
    name,
    meta_architecture,
    schedule,
    seed,
    curve,
    budget_seconds=None,
    with_masks=False,
    **extra,
):
    """A run directory as runner.train_and_evaluate leaves it (``extra``: more run.json keys;
    ``schedule_multiple`` also names the directory, as compare.py does)."""
    multiple = extra.get("schedule_multiple", 1)
    suffix = f"_x{multiple:g}" if multiple != 1 else ""
    run_dir = root / f"{name}__{schedule}{suffix}__seed{seed}"
    points = []
    for iteration, seconds, predictions in curve:
        path = run_dir / "evals" / f"iter_{iteration:06d}" / "hand" / "coco_instances_results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(predictions))
        points.append(
            {
                "iteration": iteration,
                "train_seconds": seconds,
                "datasets": {
                    "hand": {
                        "predictions": str(path.relative_to(run_dir)),
                        "bbox": {},
                        **({"segm": {}} if with_masks else {}),
                        "infer_s_per_image": 0.01,
                    }
                },
            }
        )
    run = {
        "name": name,
        "meta_architecture": meta_architecture,
        "schedule": schedule,
        "seed": seed,
        "budget_seconds": budget_seconds,
        "max_iter": curve[-1][0],
        "train_seconds": curve[-1][1],
        "train_s_per_iter": 0.1,
        "infer_s_per_image": {"hand": 0.01},
        "peak_memory_mb": 100.0,
        "ground_truth": {"hand": str(root.parent / "gt.json")},
        "curve": points,
        **extra,
    }
    (run_dir / "run.json").write_text(json.dumps(run))


def box_polygon(box):
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def with_box_masks(dataset):
    """``dataset`` with each box's rectangle as its mask (for mask AP)."""
    annotations = [{**a, "segmentation": box_polygon(a["bbox"])} for a in dataset["annotations"]]
    return {**dataset, "annotations": annotations}


def mask_detection(image_id, box, score, size=(100, 100)):
    """A detection with its box's rectangle as an RLE mask, as Detectron2 writes it."""
    from pycocotools import mask as mask_util

    rle = mask_util.merge(mask_util.frPyObjects(box_polygon(box), *size))
    segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return {**detection(image_id, box, score), "segmentation": segmentation}

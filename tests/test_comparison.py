"""The comparison's statistics on hand-made cases with known answers: COCO metrics under
image weights against pycocotools itself, bootstrap intervals of differences, the verdict
rules at the interval edges, the four verdicts on a constructed case, and the report
end to end from saved runs."""

import copy
import json
import math

import numpy as np
import pytest

from fcos_d2.comparison import analysis, bootstrap, statistics
from fcos_d2.comparison.statistics import ALL, Series, evaluate_series, group_datasets
from fcos_d2.comparison.verdicts import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    judge_claims,
    verdict_from_interval,
)

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


def test_match_table_reproduces_cocoeval():
    dataset, predictions = random_case()
    gt = analysis.coco_from_dict(dataset)
    reference = analysis.summary_metrics(gt, predictions)
    metrics = bootstrap.MatchTable(gt, predictions).metrics()
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-9), key
    thresholds, recall = analysis.recall_vs_iou(gt, predictions)
    assert metrics["R50"] == pytest.approx(100 * recall[list(thresholds).index(0.5)])
    assert metrics["R75"] == pytest.approx(100 * recall[list(thresholds).index(0.75)])


def test_image_weights_equal_duplicated_images():
    """Counting an image twice is the same as COCOeval on a dataset holding it twice."""
    dataset, predictions = random_case(num_images=12, seed=3)
    weights = np.array([0, 2, 1, 3, 0, 1, 1, 0, 2, 1, 1, 0])
    duplicated = {"images": [], "annotations": [], "categories": dataset["categories"]}
    duplicated_predictions = []
    for image, count in zip(dataset["images"], weights):
        for copy_index in range(count):
            new_id = 1000 * (copy_index + 1) + image["id"]
            duplicated["images"].append({**image, "id": new_id})
            for a in dataset["annotations"]:
                if a["image_id"] == image["id"]:
                    duplicated["annotations"].append(
                        {**a, "id": len(duplicated["annotations"]) + 1, "image_id": new_id}
                    )
            duplicated_predictions += [
                {**p, "image_id": new_id} for p in predictions if p["image_id"] == image["id"]
            ]
    reference = analysis.summary_metrics(
        analysis.coco_from_dict(duplicated), duplicated_predictions
    )
    weighted = bootstrap.MatchTable(analysis.coco_from_dict(dataset), predictions).metrics(weights)
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        # Score ties between copies of an image are ordered differently: AP may move a hair.
        assert weighted[key] == pytest.approx(reference[key], abs=1e-6), key


def test_no_predictions_give_zero_metrics():
    gt = analysis.coco_from_dict(hand_built_dataset())
    assert set(bootstrap.MatchTable(gt, []).metrics().values()) == {0.0}


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


def test_identical_detections_give_an_exact_zero_interval():
    dataset, predictions = random_case()
    weights = bootstrap.image_weights(len(dataset["images"]), 200, seed=0)
    a = make_series("a", "FCOS", [predictions, predictions], dataset, weights)
    b = make_series("bb", "GeneralizedRCNN", [predictions], dataset, weights)
    for metric in bootstrap.METRICS:
        difference = statistics.difference_estimate(a, b, ALL, metric)
        assert (difference.value, difference.low, difference.high) == (0.0, 0.0, 0.0), metric


def test_finding_every_box_beats_finding_half_with_an_interval_away_from_zero():
    dataset, _ = random_case(num_images=40, seed=1)
    perfect = [
        detection(a["image_id"], a["bbox"], 0.9, a["category_id"])
        for a in dataset["annotations"]
        if not a["iscrowd"]
    ]
    half = perfect[::2]
    weights = bootstrap.image_weights(len(dataset["images"]), 500, seed=0)
    every = make_series("every", "FCOS", [perfect], dataset, weights)
    some = make_series("half", "GeneralizedRCNN", [half], dataset, weights)
    difference = statistics.difference_estimate(every, some, ALL, "R50")
    assert difference.value == pytest.approx(100 - some.point[ALL]["R50"])
    assert 30 < difference.low <= difference.value <= difference.high < 70
    assert every.point[ALL]["R50"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (1.01, 5.0, SUPPORTED),
        (1.0, 5.0, INCONCLUSIVE),
        (-0.5, 0.5, INCONCLUSIVE),
        (-5.0, -1.01, NOT_SUPPORTED),
        (-5.0, -1.0, INCONCLUSIVE),
        (-5.0, 5.0, INCONCLUSIVE),
        (math.nan, 3.0, INCONCLUSIVE),
        (2.0, math.inf, SUPPORTED),
        (-math.inf, -2.0, NOT_SUPPORTED),
    ],
)
def test_verdict_rules_at_the_interval_edges(low, high, expected):
    assert verdict_from_interval(low, high, margin=1.0) == expected


def test_time_to_reach_interpolates_from_zero():
    assert statistics.time_to_reach([(10.0, 20.0), (20.0, 40.0)], 10.0) == pytest.approx(5.0)
    assert statistics.time_to_reach([(10.0, 20.0), (20.0, 40.0)], 30.0) == pytest.approx(15.0)
    assert statistics.time_to_reach([(10.0, math.nan), (20.0, 40.0)], 20.0) == pytest.approx(15.0)
    assert statistics.time_to_reach([(10.0, 20.0), (20.0, 40.0)], 41.0) == math.inf


def test_pool_seeds_averages_the_drawn_seeds():
    values = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])  # (S=2, B=3)
    draws = np.array([[0, 0], [0, 1], [1, 1]])
    assert statistics.pool_seeds(values, draws).tolist() == [1.0, 11.0, 30.0]


def crowded_case():
    """20 images with one isolated box, 20 with two boxes overlapping at IoU 0.6."""
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

    for image_id in range(1, 41):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 100, "width": 100})
        add(image_id, [10, 10, 40, 40])
        if image_id > 20:
            add(image_id, [20, 10, 40, 40])  # IoU with the first: 1200 / 2000 = 0.6
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }


def test_the_four_verdicts_on_a_constructed_case():
    """FCOS: misses the second box of every crowded pair and adds a false positive ranked
    first in every image; it reaches the common AP in a quarter of the baseline's time.
    The baseline finds every box, with nothing else."""
    dataset = crowded_case()
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    first_of_each_image = [
        d for i, d in enumerate(truth) if i == 0 or d["image_id"] != truth[i - 1]["image_id"]
    ]
    spurious = [detection(i, [70, 70, 20, 20], 0.95) for i in range(1, 41)]
    fcos_predictions = first_of_each_image + spurious
    weights = bootstrap.image_weights(40, 300, seed=0)
    fcos = make_series(
        "fcos",
        "FCOS",
        [fcos_predictions],
        dataset,
        weights,
        curves=[[(30.0, fcos_predictions), (60.0, fcos_predictions)]],
    )
    baseline = make_series(
        "baseline",
        "GeneralizedRCNN",
        [truth],
        dataset,
        weights,
        curves=[[(120.0, []), (240.0, truth)]],
    )
    groups = {
        g: sum(not a["iscrowd"] for a in d["annotations"])
        for g, d in group_datasets(dataset).items()
    }
    assert groups[HEAVY] == 40 and groups[CLEAR] == 20

    time, recall, precision, overlap = judge_claims(fcos, baseline, groups[HEAVY], groups[CLEAR])
    # Common AP: 90% of FCOS's. FCOS gets there within its first 30 s (before 60 s);
    # the baseline needs 120 + 120 * target / 100 s: FCOS saves over 80% of the time.
    assert time.verdict == SUPPORTED and time.difference.low > 0.8
    # Recall at IoU 0.5: FCOS finds 40 of 60 boxes, the baseline all of them.
    assert recall.verdict == NOT_SUPPORTED
    assert recall.difference.value == pytest.approx(100 * 40 / 60 - 100)
    assert precision.verdict == SUPPORTED and baseline.point[ALL]["AP"] == pytest.approx(100.0)
    # Crowded boxes: FCOS finds half (recall drops 50 points), the baseline all.
    assert overlap.verdict == SUPPORTED and overlap.difference.value == pytest.approx(50.0)


def test_overlap_verdict_needs_enough_boxes():
    dataset = crowded_case()
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    weights = bootstrap.image_weights(40, 50, seed=0)
    a = make_series("a", "FCOS", [truth], dataset, weights)
    b = make_series("b", "GeneralizedRCNN", [truth], dataset, weights)
    assert judge_claims(a, b, num_crowded=19, num_clear=20)[3].verdict == INCONCLUSIVE


def test_overlap_groups_mark_the_other_boxes_crowd():
    groups = group_datasets(hand_built_dataset())
    members = {
        g: sorted(a["id"] for a in d["annotations"] if not a["iscrowd"]) for g, d in groups.items()
    }
    assert members == {
        ALL: [1, 2, 3, 4, 5],
        CLEAR: [5],
        LIGHT: [3, 4],
        HEAVY: [1, 2],
        "IoU > 0.5": [],
    }
    split = analysis.overlap_split_metrics(hand_built_dataset(), PREDICTIONS)
    table = bootstrap.MatchTable(analysis.coco_from_dict(groups[HEAVY]), PREDICTIONS)
    # Heavy group: ranked FP (0.95), A (0.9); B never found: AP = 0.5 * 51 / 101.
    assert (
        table.metrics()["AP"]
        == pytest.approx(100 * 0.5 * 51 / 101)
        == pytest.approx(split[HEAVY]["AP"])
    )
    assert table.metrics()["R50"] == pytest.approx(50.0)


def write_run(root, name, meta_architecture, schedule, seed, curve):
    """A run directory as runner.train_and_evaluate leaves it."""
    run_dir = root / f"{name}__{schedule}__seed{seed}"
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
        "max_iter": curve[-1][0],
        "train_seconds": curve[-1][1],
        "train_s_per_iter": 0.1,
        "infer_s_per_image": {"hand": 0.01},
        "peak_memory_mb": 100.0,
        "ground_truth": {"hand": str(root.parent / "gt.json")},
        "curve": points,
    }
    (run_dir / "run.json").write_text(json.dumps(run))


def test_report_end_to_end_from_saved_runs(tmp_path):
    from fcos_d2.comparison.report import write_report

    dataset = crowded_case()
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    truth = [detection(a["image_id"], a["bbox"], 0.9) for a in dataset["annotations"]]
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(
            runs, "fcos", "FCOS", "iterations", seed, [(10, 20.0, truth[::2]), (20, 40.0, truth)]
        )
        write_run(runs, "fcos", "FCOS", "time budget", seed, [(40, 80.0, truth)])
        write_run(
            runs, "mask", "GeneralizedRCNN", "iterations", seed, [(10, 60.0, []), (20, 90.0, truth)]
        )
    summary = write_report(str(runs), str(tmp_path / "report"), num_resamples=50)

    verdicts = {(v["budget"], v["claim"]): v["verdict"] for v in summary["verdicts"]}
    assert len(verdicts) == 8
    assert verdicts[("equal iterations", "Training is simpler and takes less time")] == SUPPORTED
    assert verdicts[("equal iterations", "Higher recall")] == INCONCLUSIVE  # identical detections
    fcos = summary["datasets"]["hand"]["fcos (iterations)"]
    assert fcos["metrics"][ALL]["R50"]["value"] == pytest.approx(100.0)
    assert fcos["train_seconds"] == [40.0, 40.0]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## hand (40 images, 60 boxes)" in text and "**supported**" in text
    for plot in ("ap_vs_time.png", "recall_by_overlap.png", "recall_vs_iou.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000


def test_crowded_validation_set_overlaps_as_promised(tmp_path):
    from fcos_d2.data.datasets import shapes

    builtin = shapes.BUILTIN_SPLITS["shapes_crowd_val"]
    json_path = shapes.generate_shapes_split(
        str(tmp_path),
        builtin.split,
        builtin.num_images,
        seed=builtin.seed,
        progress=False,
        style=shapes.CROWDED,
    )
    overlaps = np.array(
        list(analysis.max_overlap_per_annotation(json.load(open(json_path))).values())
    )
    assert (overlaps > 0.3).sum() >= 600
    assert (overlaps > 0.5).sum() >= 150


def test_copy_of_dataset_is_untouched_by_grouping():
    dataset = hand_built_dataset()
    before = copy.deepcopy(dataset)
    group_datasets(dataset)
    assert dataset == before


def test_compare_cli_end_to_end_with_a_time_budget(tmp_path):
    """tools/compare.py trains FCOS and Mask R-CNN (a few iterations, tiny data), FCOS again
    for a time budget, and writes the report; a second call keeps the runs."""
    import compare
    from conftest import CONFIGS

    from fcos_d2.data.datasets import generate_shapes_split

    registrations = []
    for split, count in (("cmp_train", 6), ("cmp_val", 4)):
        json_path = generate_shapes_split(
            str(tmp_path / "data"), split, count, 64, seed=9, progress=False
        )
        registrations += [
            "--register-coco",
            f"compare_{split}",
            json_path,
            str(tmp_path / "data" / split),
        ]
    tiny = [
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "64",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "64",
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "0.01",
    ]
    fcos = str(CONFIGS / "quick_schedules" / "FCOS_R_18_quick.yaml")
    mask = str(CONFIGS / "baselines" / "mask_rcnn_R_18_shapes_cpu.yaml")
    argv = [
        *registrations,
        "--config-file",
        fcos,
        "--config-file",
        mask,
        "--budget-minutes",
        "0.02",
        "--datasets",
        "compare_cmp_val",
        "--train-datasets",
        "('compare_cmp_train',)",
        "--evaluations",
        "2",
        "--resamples",
        "20",
        "--output",
        str(tmp_path / "out"),
        *tiny,
    ]
    assert compare.main(argv) == 0
    runs_dir = tmp_path / "out" / "runs"
    runs = sorted(p.name for p in runs_dir.iterdir())
    assert runs == [
        "FCOS_R_18_quick__iterations__seed0",
        "FCOS_R_18_quick__time_budget__seed0",
        "mask_rcnn_R_18_shapes_cpu__iterations__seed0",
        "mask_rcnn_R_18_shapes_cpu__time_budget__seed0",
    ]
    budget_run = json.loads((runs_dir / runs[1] / "run.json").read_text())
    mask_run = json.loads((runs_dir / runs[2] / "run.json").read_text())
    assert budget_run["budget_seconds"] == pytest.approx(1.2) and budget_run["max_iter"] >= 30
    assert [p["iteration"] for p in mask_run["curve"]] == [2, 4]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {v["budget"] for v in report["verdicts"]} == {"equal iterations", "equal time"}
    modified = (runs_dir / runs[2] / "run.json").stat().st_mtime
    assert compare.main(argv) == 0  # resumes: every run.json already there
    assert (runs_dir / runs[2] / "run.json").stat().st_mtime == modified


def test_time_budget_is_the_named_models_measured_time_per_seed(monkeypatch, tmp_path):
    """--budget-from: every other model trains, seed by seed, for as long as that model did."""
    import compare

    calls = []

    def fake_run(args, config, run_dir, seed, budget_seconds):
        calls.append((config, seed, budget_seconds))
        return {"train_seconds": 100.0 + seed}

    monkeypatch.setattr(compare, "run_in_subprocess", fake_run)
    args = compare.argument_parser().parse_args(["--seeds", "2", "--output", str(tmp_path)])
    args.budget_from = "mask.yaml"
    compare.plan_and_run(args, ["fcos.yaml", "mask.yaml", "faster.yaml"])
    assert ("fcos.yaml", 0, 100.0) in calls and ("fcos.yaml", 1, 101.0) in calls
    assert ("faster.yaml", 1, 101.0) in calls
    assert not [c for c in calls if c[0] == "mask.yaml" and c[2] is not None]
    # The judged pair first, seed by seed; the other models after.
    assert [c[0] for c in calls].index("faster.yaml") > max(
        i for i, c in enumerate(calls) if c[0] == "fcos.yaml"
    )

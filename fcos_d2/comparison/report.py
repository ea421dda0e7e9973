"""report.md and plots from the saved runs of several models on one dataset.

A run directory holds ``run.json`` (name, meta-architecture, parameters, timings,
memory) and ``coco_instances_results.json`` (the predictions Detectron2's
COCOEvaluator saved). Everything here is computed from those files.
"""

import json
import os
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tabulate import tabulate  # noqa: E402

from . import analysis  # noqa: E402
from .verdicts import judge_claims  # noqa: E402

RUN_FILE = "run.json"
PREDICTIONS_FILE = "coco_instances_results.json"


def load_run(run_dir: str) -> dict:
    """A run's ``run.json`` with its predictions attached."""
    with open(os.path.join(run_dir, RUN_FILE)) as f:
        run = json.load(f)
    with open(os.path.join(run_dir, PREDICTIONS_FILE)) as f:
        run["predictions"] = json.load(f)
    return run


def analyse_run(run: dict, dataset: dict) -> dict:
    """All metrics of one run against the ground truth ``dataset`` (a COCO dict)."""
    gt = analysis.coco_from_dict(dataset)
    predictions = run["predictions"]
    boxes_only = [{k: v for k, v in p.items() if k != "segmentation"} for p in predictions]
    result = {key: run.get(key) for key in ("name", "meta_architecture", "parameters",
                                            "train_s_per_iter", "infer_s_per_image", "peak_memory_mb")}
    result["bbox"] = analysis.summary_metrics(gt, boxes_only)
    if any("segmentation" in p for p in predictions):
        result["segm"] = analysis.summary_metrics(gt, predictions, iou_type="segm")
    result["pr"] = analysis.precision_recall_curves(gt, boxes_only)
    result["recall_vs_iou"] = analysis.recall_vs_iou(gt, boxes_only)
    result["recall_vs_dets"] = analysis.recall_vs_detections(gt, boxes_only)
    result["overlap"] = analysis.overlap_split_metrics(dataset, boxes_only)
    return result


def _pick(results: List[dict], meta_architecture: str, prefer_masks: bool = False) -> Optional[dict]:
    candidates = [r for r in results if r["meta_architecture"] == meta_architecture]
    if prefer_masks:
        candidates.sort(key=lambda r: "segm" not in r)
    return candidates[0] if candidates else None


def _plot_curves(results, key_fn, title, xlabel, ylabel, path, log_x=False):
    fig, axes = plt.subplots(1, len(key_fn), figsize=(5.5 * len(key_fn), 4.2), squeeze=False)
    for ax, (subtitle, getter) in zip(axes[0], key_fn.items()):
        for result in results:
            x, y = getter(result)
            ax.plot(x, 100 * y, marker="" if len(x) > 30 else "o", label=result["name"])
        ax.set_title(subtitle)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_overlap(results, path):
    bins = [name for name, _, _ in analysis.OVERLAP_BINS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(results), 1)
    for i, result in enumerate(results):
        for ax, metric in zip(axes, ("AP", "recall50")):
            values = [result["overlap"][b][metric] for b in bins]
            ax.bar([j + i * width for j in range(len(bins))], values, width, label=result["name"])
    counts = [results[0]["overlap"][b]["num_gt"] for b in bins] if results else [0] * len(bins)
    for ax, metric in zip(axes, ("box AP", "recall at IoU 0.5")):
        ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(bins))])
        ax.set_xticklabels([f"{b}\n({n} boxes)" for b, n in zip(bins, counts)])
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("By a box's largest IoU with another box of its image")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def _summary_table(results: List[dict]) -> str:
    headers = ["model", "box AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100",
               "mask AP", "train s/iter", "infer s/img", "peak mem (MB)", "params (M)"]
    rows = []
    for r in results:
        b = r["bbox"]
        rows.append([r["name"], *(f"{b[k]:.1f}" for k in analysis.SUMMARY_KEYS),
                     f"{r['segm']['AP']:.1f}" if "segm" in r else "–",
                     _fmt(r["train_s_per_iter"]), _fmt(r["infer_s_per_image"], 4),
                     _fmt(r["peak_memory_mb"], 0),
                     _fmt(r["parameters"] / 1e6 if r["parameters"] else None, 2)])
    return tabulate(rows, headers=headers, tablefmt="pipe")


def _overlap_table(results: List[dict]) -> str:
    bins = [name for name, _, _ in analysis.OVERLAP_BINS]
    headers = ["model", *(f"AP / recall@0.5, {b}" for b in bins)]
    rows = [[r["name"], *(f"{r['overlap'][b]['AP']:.1f} / {r['overlap'][b]['recall50']:.1f}" for b in bins)]
            for r in results]
    counts = ", ".join(f"{b}: {results[0]['overlap'][b]['num_gt']}" for b in bins) if results else ""
    return tabulate(rows, headers=headers, tablefmt="pipe") + f"\n\nGround-truth boxes per bin: {counts}."


def write_report(run_dirs: List[str], dataset_json: str, output_dir: str, title: str = "") -> Dict:
    """Analyse the runs, write ``report.md``, the plots and ``report.json``; return the results."""
    os.makedirs(output_dir, exist_ok=True)
    with open(dataset_json) as f:
        dataset = json.load(f)
    results = [analyse_run(load_run(d), dataset) for d in run_dirs]

    _plot_curves(results, {f"IoU {iou}": (lambda r, iou=iou: r["pr"][iou]) for iou in (0.5, 0.75)},
                 "Precision-recall (class-averaged)", "recall", "precision (%)",
                 os.path.join(output_dir, "pr_curves.png"))
    _plot_curves(results, {"100 detections per image": lambda r: r["recall_vs_iou"]},
                 "Recall against IoU threshold", "IoU threshold", "recall (%)",
                 os.path.join(output_dir, "recall_vs_iou.png"))
    _plot_curves(results, {"IoU 0.5": lambda r: r["recall_vs_dets"]},
                 "Recall against detections per image", "detections per image", "recall (%)",
                 os.path.join(output_dir, "recall_vs_detections.png"), log_x=True)
    _plot_overlap(results, os.path.join(output_dir, "overlap.png"))

    fcos = _pick(results, "FCOS")
    baseline = _pick(results, "GeneralizedRCNN", prefer_masks=True)
    verdicts = judge_claims(fcos, baseline) if fcos and baseline else []

    lines = [f"# {title or 'FCOS against R-CNN baselines'}", "",
             f"Ground truth: `{dataset_json}` ({len(dataset['images'])} images, "
             f"{len(dataset['annotations'])} boxes). All metrics from pycocotools' COCOeval.", "",
             "## Metrics", "", _summary_table(results), "",
             "## Overlapping objects", "",
             "A box's overlap is its largest IoU with another ground-truth box of its image. "
             "In each bin the other boxes count as crowd (detections of them are ignored).", "",
             _overlap_table(results), "",
             "![overlap](overlap.png)", "", "## Curves", "",
             "![pr](pr_curves.png)", "", "![recall vs IoU](recall_vs_iou.png)", "",
             "![recall vs detections](recall_vs_detections.png)", "", "## The claims", ""]
    if verdicts:
        lines += [f"FCOS (`{fcos['name']}`) against `{baseline['name']}`; verdicts follow from the "
                  "numbers by the rules in `fcos_d2/comparison/verdicts.py`.", "",
                  tabulate([[v.claim, v.verdict, v.evidence] for v in verdicts],
                           headers=["claim", "verdict", "evidence"], tablefmt="pipe")]
    else:
        lines.append("No verdicts: the comparison needs one FCOS model and one R-CNN model.")
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    summary = {
        "models": [{k: v for k, v in r.items() if k in ("name", "meta_architecture", "parameters",
                    "train_s_per_iter", "infer_s_per_image", "peak_memory_mb", "bbox", "segm", "overlap")}
                   for r in results],
        "verdicts": [v.__dict__ for v in verdicts],
    }
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary

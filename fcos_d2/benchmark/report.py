"""The benchmark's results (see :func:`~.runner.run_benchmark`) as tables and as JSON."""

import json
from pathlib import Path
from typing import Optional

from tabulate import tabulate

from .phases import amp_description


def spread(summary: dict, digits: int = 3) -> str:
    """'median [min, max]' of a Measurement's JSON."""
    median, low, high = summary["median_s"], summary["min_s"], summary["max_s"]
    return f"{median:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def ratio(models: dict, name: str, reference: str, key: str) -> str:
    """Median of ``name`` over median of ``reference`` for one measurement, or '-'."""
    if reference not in models:
        return "-"
    return f"{models[name][key]['median_s'] / models[reference][key]['median_s']:.2f}"


def megabytes(value: Optional[float]) -> str:
    """Memory in whole MB, or '-' where it was not measured."""
    return "-" if value is None else f"{value:.0f}"


def models_table(results: dict) -> str:
    """Size, FLOPs, training and inference of every model, with their ratios."""
    models = results["models"]
    rows = []
    for name, model in models.items():
        rows.append(
            [
                name,
                "{total:.1f} ({trainable:.1f})".format(
                    **{k: v / 1e6 for k, v in model["parameters"].items()}
                ),
                "-" if model["flops"] is None else f"{model['flops'] / 1e9:.1f}",
                spread(model["train"]),
                ratio(models, name, "d2_fcos", "train"),
                ratio(models, name, "d2_mask_rcnn", "train"),
                "yes" if model["train_losses_finite"] else "NO",
                megabytes(model["train"]["peak_mb"]),
                spread(model["infer_per_image"]),
                ratio(models, name, "d2_fcos", "infer_per_image"),
                ratio(models, name, "tv_fcos", "infer_per_image"),
                megabytes(model["infer"]["peak_mb"]),
            ]
        )
    headers = [
        "model",
        "params M (trainable)",
        "GFLOPs",
        "train s/iter [min, max]",
        "train vs d2_fcos",
        "train vs d2_mask_rcnn",
        "losses finite",
        "train peak MB",
        "infer s/img [min, max]",
        "infer vs d2_fcos",
        "infer vs tv_fcos",
        "infer peak MB",
    ]
    return tabulate(rows, headers=headers, tablefmt="github")


def breakdown_table(fcos: dict) -> str:
    """fcos_d2's stages, each in seconds and as a % of the full training step / inference."""
    breakdown = fcos["breakdown"]
    full = {"training": fcos["train"]["median_s"], "inference": fcos["infer"]["median_s"]}
    stages = list(dict.fromkeys([*breakdown["training"], *breakdown["inference"]]))
    rows = []
    for stage in stages + ["sum of stages"]:
        row = [stage]
        for phase in ("training", "inference"):
            if stage == "sum of stages":
                seconds = sum(m["median_s"] for m in breakdown[phase].values())
            elif stage in breakdown[phase]:
                seconds = breakdown[phase][stage]["median_s"]
            else:
                row += ["-", "-"]
                continue
            row += [f"{seconds:.4f}", f"{100 * seconds / full[phase]:.1f}"]
        rows.append(row)
    rows.append(
        [
            "full (measured alone)",
            f"{full['training']:.4f}",
            "100.0",
            f"{full['inference']:.4f}",
            "100.0",
        ]
    )
    headers = ["fcos_d2 stage", "train s", "% of step", "infer s", "% of inference"]
    return tabulate(rows, headers=headers, tablefmt="github")


def scaling_table(fcos: dict) -> str:
    """assign_targets time and extra memory against the number of boxes, by FCOS's
    assignment and (results that have it) by ATSS's."""
    scaling = fcos["assignment_scaling"]
    atss = fcos.get("atss_assignment_scaling", {})
    first = next(iter(scaling.values()))["median_s"]
    rows = []
    for count, m in scaling.items():
        row = [count, spread(m, 4), f"{m['median_s'] / first:.1f}", megabytes(m["extra_mb"])]
        if atss:
            row += [spread(atss[count], 4), megabytes(atss[count]["extra_mb"])]
        rows.append(row)
    headers = ["boxes / image", "assign_targets s [min, max]", "x time of first", "extra MB"]
    if atss:
        headers += ["ATSS s [min, max]", "ATSS extra MB"]
    return tabulate(rows, headers=headers, tablefmt="github")


def format_report(results: dict) -> str:
    """The settings, the models table, fcos_d2's tables if it ran, and the notes."""
    env = results["environment"]
    settings = results["settings"]
    lines = [
        f"{env['device_name']} ({env['device']}, {env['torch_threads']} threads, load average "
        f"at start {env['load_average_at_start']}), torch {env['torch']}, "
        f"detectron2 {env['detectron2']}",
        f"images {settings['height']}x{settings['width']}, train batch {settings['train_batch']}, "
        f"infer batch {settings['infer_batch']}, {settings['num_boxes']} boxes/image, "
        f"score thresh {settings['score_thresh']}, warmup {settings['warmup']}, "
        f"reps {settings['reps']} (times: median [min, max])",
        "--amp: " + amp_description(env["device"]) if settings["amp"] else "float32 throughout",
        "",
        models_table(results),
    ]
    fcos = results["models"].get("fcos_d2")
    if fcos is not None:
        lines += ["", breakdown_table(fcos), "", scaling_table(fcos)]
    lines += ["", "Notes:"] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
    """``results`` to ``path`` (its folder made if needed), indented."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)

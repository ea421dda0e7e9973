"""The report's tables (Markdown, via tabulate) and the notes that go with them."""

import math
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
from tabulate import tabulate

from . import analysis
from .results import (
    TIME_BUDGET,
    VARIANT_METRICS,
    DatasetResults,
    budget_reference,
)
from .statistics import ALL, Series, drop_estimate, metric_estimate
from .verdicts import CLEAR, INCONCLUSIVE, MIN_GROUP_BOXES

if TYPE_CHECKING:
    from .convergence import Plateau

METRIC_COLUMNS = (
    ("AP", "box AP"),
    ("AP50", "AP50"),
    ("AP75", "AP75"),
    ("AR1", "AR@1"),
    ("AR10", "AR@10"),
    ("AR100", "AR@100"),
    ("R50", "recall@0.5"),
    ("R75", "recall@0.75"),
)
GROUP_METRICS = (
    ("AP", "AP"),
    ("R50", "recall@0.5"),
    ("R75", "recall@0.75"),
    ("AR100", "AR@100"),
)
FALL_METRICS = (("R50", "recall@0.5"), ("AP", "AP"))


def _run_column(series: Series, key: str, digits: int, scale: float = 1.0) -> str:
    values = [r[key] * scale for r in series.runs if r.get(key) is not None]
    if not values:
        return "–"
    text = f"{np.mean(values):.{digits}f}"
    return text + (f" ±{np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else "")


def metrics_table(results: DatasetResults) -> str:
    headers = [
        "model (schedule)",
        "seeds",
        "iterations",
        "train min",
        "wall min",
        "s/iter timed",
        "s/iter in run",
        *(title for _, title in METRIC_COLUMNS),
        "mask AP",
        "infer s/img",
        "peak MB",
        "speed probe s",
    ]
    rows = []
    for s in results.series:
        infer = [r["infer_s_per_image"].get(results.dataset) for r in s.runs]
        rows.append(
            [
                s.label,
                len(s.runs),
                _run_column(s, "max_iter", 0),
                _mean_and_spread([seconds / 60 for seconds in s.clock_train_seconds()]),
                _run_column(s, "train_seconds", 1, 1 / 60),
                "–" if s.clock_s_per_iter is None else f"{s.clock_s_per_iter:.3f}",
                _run_column(s, "train_s_per_iter", 3),
                *(metric_estimate(s, ALL, m).text() for m, _ in METRIC_COLUMNS),
                results.mask_ap[s.label].text() if s.label in results.mask_ap else "–",
                f"{np.mean(infer):.4f}",
                _run_column(s, "peak_memory_mb", 0),
                _probe_column(s),
            ]
        )
    return tabulate(rows, headers=headers, tablefmt="pipe")


PROPOSAL_COLUMNS = ("AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000")


def proposals_table(results: DatasetResults) -> str:
    """The R-CNNs' proposal recall (COCO's AR, IoU 0.5:0.95), mean ± sd over seeds.

    pycocotools-style proposal AR is computed over the whole set, not per image, so it
    has no bootstrap interval here; the spread is across seeds."""
    rows = []
    for s in results.series:
        per_run = [r.get("proposals", {}).get(results.dataset) for r in s.runs]
        per_run = [p for p in per_run if p]
        if not per_run:
            continue
        cells = [_mean_and_spread([p[key] for p in per_run]) for key in PROPOSAL_COLUMNS]
        generator = next(
            (r["proposal_generator"] for r in s.runs if r.get("proposal_generator")), "–"
        )
        rows.append([s.label, generator, len(per_run), *cells])
    if not rows:
        return "No R-CNN run recorded its proposals."
    headers = ["model (schedule)", "proposals", "seeds", *PROPOSAL_COLUMNS]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def _mean_and_spread(values: List[float]) -> str:
    """ "mean ±sd" over seeds, one decimal; "–" where COCO has no box of that size (NaN)."""
    if not all(map(math.isfinite, values)):
        return "–"
    spread = f" ±{np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
    return f"{np.mean(values):.1f}{spread}"


def variants_table(records: List[dict]) -> str:
    headers = ["model − reference", *(title for _, _, title in VARIANT_METRICS)]
    rows = [
        [
            f"{r['variant'].label} − {r['reference'].label}",
            *(r["differences"][title].text() for _, _, title in VARIANT_METRICS),
        ]
        for r in records
    ]
    return tabulate(rows, headers=headers, tablefmt="pipe")


BUDGET_TOLERANCE = 0.05


def overrun_notes(results: DatasetResults) -> List[str]:
    """A line for each time-budget run whose training time misses its budget by more than
    ``BUDGET_TOLERANCE``: on the comparison's clock, against the clock time of the schedule
    runs that set the budget; without a clock, its own wall clock against its budget."""
    notes = []
    for series in results.series:
        if series.schedule != TIME_BUDGET:
            continue
        if series.clock_s_per_iter is None:
            notes += _wall_clock_overruns(series)
        else:
            notes += _clock_overruns(series, budget_reference(results, series))
    if not notes:
        return []
    if any(s.clock_s_per_iter is not None for s in results.series):
        title = (
            "Off budget on the clock (a budget sized before the clock existed, on another "
            "machine's wall clock, or a timing redone since): the equal-time comparison is "
            "not at equal time for these runs; rerunning them (their run directories "
            "deleted) trains them for the clock's budget:"
        )
    else:
        title = "Over budget (the machine ran slower than the pace the schedule was sized on):"
    return [title, "", *notes, ""]


def _clock_overruns(series: Series, reference: Optional[Series]) -> List[str]:
    if reference is None or reference.clock_s_per_iter is None:
        return []
    budgets = {r["seed"]: t for r, t in zip(reference.runs, reference.clock_train_seconds())}
    notes = []
    for run, seconds in zip(series.runs, series.clock_train_seconds()):
        budget = budgets.get(run["seed"], float(np.mean(list(budgets.values()))))
        if abs(seconds / budget - 1) > BUDGET_TOLERANCE:
            notes.append(
                f"- {series.label}, seed {run['seed']}: {seconds / 60:.1f} min on the clock "
                f"({run['max_iter']} iterations at {series.clock_s_per_iter:.3f} s) against "
                f"{reference.name}'s {budget / 60:.1f} min "
                f"({100 * (seconds / budget - 1):+.0f}%)."
            )
    return notes


def _wall_clock_overruns(series: Series) -> List[str]:
    notes = []
    for run in series.runs:
        budget = run.get("budget_seconds")
        if run.get("budget_from"):  # sized on a clock this report was not given
            continue
        if budget and run["train_seconds"] > (1 + BUDGET_TOLERANCE) * budget:
            notes.append(
                f"- {series.label}, seed {run['seed']}: trained "
                f"{run['train_seconds'] / 60:.1f} min for a {budget / 60:.1f}-min budget "
                f"({100 * (run['train_seconds'] / budget - 1):+.0f}%; "
                f"{run['max_iter']} iterations at {run['train_s_per_iter']:.3f} s/iter "
                f"against the {run.get('calibrated_s_per_iter') or 0:.3f} s/iter planned)."
            )
    return notes


def _probe_column(series: Series) -> str:
    """The machine speed probe before / after training (runs that recorded it)."""
    probes = [r["speed_probe_seconds"] for r in series.runs if r.get("speed_probe_seconds")]
    if not probes:
        return "–"
    return ", ".join(f"{p['before']:.2f} / {p['after']:.2f}" for p in probes)


def too_few_boxes_text(results: DatasetResults, group: str) -> str:
    """ "too few boxes (n)" for an overlap group under ``MIN_GROUP_BOXES`` boxes, else ""."""
    count = results.group_sizes[group]
    return f"too few boxes ({count})" if count < MIN_GROUP_BOXES else ""


def overlap_tables(results: DatasetResults) -> str:
    """One table per metric: a row per series, a column per overlap group; a group of
    fewer than ``MIN_GROUP_BOXES`` boxes gets no interval: "too few boxes (n)"."""
    groups = [name for name, _, _ in analysis.OVERLAP_GROUPS]
    headers = ["model (schedule)", *(f"{g} ({results.group_sizes[g]} boxes)" for g in groups)]
    tables = []

    def cell(group: str, estimate) -> str:
        return too_few_boxes_text(results, group) or estimate().text()

    for metric, title in GROUP_METRICS:
        rows = [
            [s.label, *(cell(g, lambda: metric_estimate(s, g, metric)) for g in groups)]
            for s in results.series
        ]
        tables += [f"**{title}**", "", tabulate(rows, headers=headers, tablefmt="pipe"), ""]
    crowded_groups = [g for g in groups if g != CLEAR]
    fall_headers = ["model (schedule)", *(f"{CLEAR} → {g}" for g in crowded_groups)]
    for metric, title in FALL_METRICS:
        rows = [
            [
                s.label,
                *(
                    too_few_boxes_text(results, CLEAR)
                    or cell(g, lambda: drop_estimate(s, metric, CLEAR, g))
                    for g in crowded_groups
                ),
            ]
            for s in results.series
        ]
        tables += [
            f"**How far {title} falls from boxes that overlap nothing** (> 0: lower on the "
            "overlapping ones)",
            "",
            tabulate(rows, headers=fall_headers, tablefmt="pipe"),
            "",
        ]
    return "\n".join(tables)


def settle_text(record: dict) -> str:
    """For an inconclusive verdict: about how much more data would settle it."""
    if record["verdict"] != INCONCLUSIVE:
        return ""
    factor = record["data_to_settle"]
    if factor is not None:
        return f"≈ {factor:.1f}× the images and seeds"
    if record["difference"] is None:
        return "no estimate"
    value, low, high = record["difference"]
    if not all(map(math.isfinite, (value, low, high))):
        return (
            "unbounded interval: in some resamples a model never reaches the common AP; "
            "more seeds, or a lower common AP, bound it"
        )
    return "estimate within the margin: no amount of data settles it"


def _difference_text(record: dict) -> str:
    if record["difference"] is None:
        return "–"
    value, low, high = record["difference"]
    if record["claim"].startswith("Training"):
        margin = 100 * record["margin"]
        return f"{100 * value:+.0f}% [{100 * low:+.0f}%, {100 * high:+.0f}%] (margin {margin:.0f}%)"
    return f"{value:+.1f} [{low:+.1f}, {high:+.1f}] (margin {record['margin']:.0f})"


def verdict_table(records: List[dict]) -> str:
    if not records:
        return "No FCOS / R-CNN pair to judge."
    rows = [
        [
            r["budget"],
            r["claim"],
            f"**{r['verdict']}**",
            _difference_text(r),
            settle_text(r),
            r["evidence"],
        ]
        for r in records
    ]
    return tabulate(
        rows,
        headers=[
            "budget",
            "claim",
            "verdict",
            "difference (favouring the claim) [95%]",
            "to settle",
            "evidence",
        ],
        tablefmt="pipe",
    )


def doublings_table(plateaus: Dict[str, "Plateau"], datasets: List[str]) -> str:
    """Each model's schedule doublings: the box AP gained on every set, and the plateau."""
    rows = []
    for plateau in plateaus.values():
        if not plateau.doublings:
            rows.append([plateau.name, "–", *("–" for _ in datasets), "–", plateau.status()])
        for doubling in plateau.doublings:
            rows.append(
                [
                    plateau.name,
                    f"{doubling.shorter:g}× → {doubling.longer:g}×",
                    *(doubling.gains[d].text() for d in datasets),
                    ", ".join(map(str, doubling.seeds)),
                    "flat: plateau" if doubling.flat else "rising",
                ]
            )
    headers = [
        "model",
        "schedule doubled",
        *(f"box AP gained on {d} [95%]" for d in datasets),
        "seeds paired",
        "",
    ]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def convergence_table(plateaus: Dict[str, "Plateau"], all_results: List[DatasetResults]) -> str:
    """Each model at its plateau schedule: how long it trained, what it reached, what it
    costs at test time and in memory."""
    rows = []
    for plateau in plateaus.values():
        per_set = [r.schedules_of(plateau.name)[plateau.multiple] for r in all_results]
        series = per_set[0]
        minutes = [seconds / 60 for seconds in series.clock_train_seconds()]
        rows.append(
            [
                plateau.name,
                plateau.status(),
                _run_column(series, "max_iter", 0),
                _mean_and_spread(minutes),
                *(metric_estimate(s, ALL, "AP").text() for s in per_set),
                *(metric_estimate(s, ALL, "R50").text() for s in per_set),
                *(
                    f"{np.mean([r['infer_s_per_image'][results.dataset] for r in s.runs]):.4f}"
                    for results, s in zip(all_results, per_set)
                ),
                _run_column(series, "peak_memory_mb", 0),
            ]
        )
    names = [r.dataset for r in all_results]
    headers = [
        "model",
        "schedule at convergence",
        "iterations",
        "train min",
        *(f"box AP {d}" for d in names),
        *(f"recall@0.5 {d}" for d in names),
        *(f"infer s/img {d}" for d in names),
        "peak train MB",
    ]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)

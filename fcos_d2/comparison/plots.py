"""The report's plots (PNG, matplotlib's Agg backend).

Every plot takes the series to draw (``shown``: a function from a validation set's results
to its series), one panel per validation set; a model keeps its colour across plots.
"""

from typing import Callable, Dict, List

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import analysis  # noqa: E402
from .results import ITERATIONS, DatasetResults, predictions_of  # noqa: E402
from .statistics import ALL, Series, mean_curve, metric_estimate  # noqa: E402
from .verdicts import MIN_GROUP_BOXES  # noqa: E402

Shown = Callable[[DatasetResults], List[Series]]


def model_colours(all_results: List[DatasetResults]) -> Dict[str, str]:
    """A colour per model name, in the order the series come."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = dict.fromkeys(s.name for r in all_results for s in r.series)
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _panels(count: int, height: float, rows: int = 1):
    return plt.subplots(rows, count, figsize=(6.2 * count, height * rows), squeeze=False)


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _line_style(series: Series) -> str:
    if series.schedule != ITERATIONS:
        return "--"
    return "-" if series.multiple == 1 else ":"


def plot_learning_curves(
    all_results: List[DatasetResults], path: str, clocked: bool, shown: Shown
) -> None:
    """Box AP against training time: one line per series (the mean over its seeds) with its
    95% band; solid: the schedule, dashed: a time budget, dotted: a longer schedule."""
    colours = model_colours(all_results)
    fig, axes = _panels(len(all_results), 4.4)
    for ax, results in zip(axes[0], all_results):
        for series in shown(results):
            seconds, mean, low, high = mean_curve(series)
            minutes = np.r_[0, seconds] / 60
            colour = colours[series.name]
            ax.plot(
                minutes,
                np.r_[0, mean],
                _line_style(series),
                marker="o",
                markersize=3,
                color=colour,
                label=f"{series.label}, {len(series.runs)} seed(s)",
            )
            ax.fill_between(minutes, np.r_[0, low], np.r_[0, high], color=colour, alpha=0.15)
        ax.set_title(f"{results.dataset}: box AP against training time (95% band)")
        ax.set_xlabel(
            "training time (min) at each model's timed s/iter (timing.json)"
            if clocked
            else "training time (min, evaluations excluded)"
        )
        ax.set_ylabel("box AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_schedules(all_results: List[DatasetResults], path: str) -> None:
    """Box AP and recall@0.5 against the schedule's length, one line per model with its
    95% band (images and seeds resampled); a model trained at one schedule is a point."""
    colours = model_colours(all_results)
    fig, axes = _panels(len(all_results), 4.0, rows=2)
    for column, results in enumerate(all_results):
        for row, (metric, title) in enumerate((("AP", "box AP"), ("R50", "recall@0.5"))):
            ax = axes[row][column]
            names = dict.fromkeys(s.name for s in results.series)
            for name in names:
                schedules = results.schedules_of(name)
                multiples = sorted(schedules)
                estimates = [metric_estimate(schedules[m], ALL, metric) for m in multiples]
                colour = colours[name]
                ax.plot(
                    multiples,
                    [e.value for e in estimates],
                    "-",
                    marker="o",
                    markersize=4,
                    color=colour,
                    label=name,
                )
                ax.fill_between(
                    multiples,
                    [e.low for e in estimates],
                    [e.high for e in estimates],
                    color=colour,
                    alpha=0.15,
                )
            iterations = _base_iterations(results)
            ax.set_xscale("log", base=2)
            ticks = sorted({m for s in results.series for m in results.schedules_of(s.name)})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{m:g}×\n({m * iterations:.0f} it)" for m in ticks], fontsize=8)
            ax.set_title(f"{results.dataset}: {title} against schedule (95% band)")
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _base_iterations(results: DatasetResults) -> float:
    """The 1× schedule's iterations (from any schedule series)."""
    for series in results.series:
        if series.schedule == ITERATIONS:
            return series.runs[0]["max_iter"] / series.multiple
    return float("nan")


def plot_overlap(all_results: List[DatasetResults], path: str, shown: Shown) -> None:
    """Recall@0.5 by overlap group, a bar per series with its interval; a group with fewer
    than ``MIN_GROUP_BOXES`` boxes has no bars ("too few boxes")."""
    groups = [name for name, _, _ in analysis.OVERLAP_GROUPS]
    fig, axes = _panels(len(all_results), 4.4)
    for ax, results in zip(axes[0], all_results):
        series_shown = shown(results)
        width = 0.8 / max(len(series_shown), 1)
        judged = [g for g in groups if results.group_sizes[g] >= MIN_GROUP_BOXES]
        for i, series in enumerate(series_shown):
            estimates = [metric_estimate(series, g, "R50") for g in judged]
            values = np.array([e.value for e in estimates])
            errors = np.array(
                [[e.value - e.low for e in estimates], [e.high - e.value for e in estimates]]
            )
            ax.bar(
                np.array([groups.index(g) for g in judged]) + i * width,
                values,
                width,
                yerr=errors,
                capsize=2,
                label=series.label,
            )
        ax.set_xticks(np.arange(len(groups)) + width * (len(series_shown) - 1) / 2)
        ax.set_xticklabels(
            [
                f"{g}\n({results.group_sizes[g]} boxes)"
                if g in judged
                else f"{g}\ntoo few boxes ({results.group_sizes[g]})"
                for g in groups
            ],
            fontsize=8,
        )
        ax.set_ylabel("recall at IoU 0.5 (95% interval)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{results.dataset}: recall by overlap")
        ax.grid(axis="y", alpha=0.3)
    # One legend below both panels: inside a panel it covers the bars and runs off its edge.
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows = -(-len(labels) // 2)  # two columns
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * (rows + 1), 1, 1))
    _save(fig, path)


def plot_recall_vs_iou(all_results: List[DatasetResults], path: str, shown: Shown) -> None:
    """Recall against the IoU threshold, from each series' first seed."""
    fig, axes = _panels(len(all_results), 4.0)
    for ax, results in zip(axes[0], all_results):
        gt = analysis.coco_from_dict(results.ground_truth)
        for series in shown(results):
            run = series.runs[0]
            x, y = analysis.recall_vs_iou(
                gt, predictions_of(run, run["curve"][-1], results.dataset)
            )
            ax.plot(
                x, 100 * y, marker="o", markersize=3, label=f"{series.label}, seed {run['seed']}"
            )
        ax.set_title(f"{results.dataset}: recall against IoU threshold (first seed)")
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel("recall, 100 detections per image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)

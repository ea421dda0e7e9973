"""report.md, plots and report.json from the run directories of a comparison.

Every run directory holds ``run.json`` (see ``runner.train_and_evaluate``) and the COCO
predictions of each evaluation. Runs of the same model and schedule are the seeds of
one series; every number is computed from those files, with intervals as described in
``statistics``.
"""

import glob
import json
import math
import os
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from tabulate import tabulate  # noqa: E402

from . import analysis, bootstrap, timing  # noqa: E402
from .runner import RUN_FILE  # noqa: E402
from .statistics import (  # noqa: E402
    ALL,
    Estimate,
    Series,
    difference_estimate,
    drop_estimate,
    evaluate_series,
    group_datasets,
    metric_estimate,
    pool_seeds,
)
from .verdicts import (  # noqa: E402
    CLAIMS,
    CLEAR,
    CROWDED,
    INCONCLUSIVE,
    JUDGED_ON,
    data_to_settle,
    judge_claims,
)

ITERATIONS, TIME_BUDGET = "iterations", "time budget"
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


def load_runs(runs_root: str) -> List[dict]:
    """Every ``run.json`` under ``runs_root`` (one level down), with its directory."""
    runs = []
    for path in sorted(glob.glob(os.path.join(runs_root, "*", RUN_FILE))):
        with open(path) as f:
            run = json.load(f)
        run["run_dir"] = os.path.dirname(path)
        runs.append(run)
    return runs


def group_series(runs: List[dict]) -> List[Series]:
    """Runs of one model and schedule, seeds in order, as one Series each."""
    grouped = defaultdict(list)
    for run in runs:
        grouped[(run["name"], run["schedule"])].append(run)
    return [
        Series(name, runs[0]["meta_architecture"], schedule, sorted(runs, key=lambda r: r["seed"]))
        for (name, schedule), runs in sorted(
            grouped.items(), key=lambda kv: (kv[0][1] != ITERATIONS, kv[0][0])
        )
    ]


def _predictions(run: dict, point: dict, dataset: str, boxes_only: bool = True) -> List[dict]:
    with open(os.path.join(run["run_dir"], point["datasets"][dataset]["predictions"])) as f:
        predictions = json.load(f)
    if boxes_only:
        return [{k: v for k, v in p.items() if k != "segmentation"} for p in predictions]
    return predictions


def _ground_truth_file(runs: List[dict], dataset: str) -> str:
    """The annotation file the runs were evaluated against; a registered dataset whose file
    is not there yet (runs restored on a fresh clone) is loaded once, which generates the
    built-in ones."""
    path = None
    for run in runs:
        path = run.get("ground_truth", {}).get(dataset)
        if path and os.path.isfile(path):
            return path
    if dataset in DatasetCatalog.list():
        registered = MetadataCatalog.get(dataset).json_file
        if not os.path.isfile(registered):
            DatasetCatalog.get(dataset)
        return registered
    raise FileNotFoundError(
        f"{dataset}: the runs' annotation file {path!r} is missing and no dataset of that name "
        "is registered (give --register-coco NAME JSON IMAGES)"
    )


class DatasetResults:
    """All series evaluated on one validation set."""

    def __init__(
        self,
        dataset: str,
        series_runs: List[Series],
        num_resamples: int,
        seed: int,
        clock: Optional[dict] = None,
    ):
        """``clock``: the comparison's timing (``timing.read_timing``); without one, or for a
        model it does not time, learning curves use each run's own wall clock."""
        self.dataset = dataset
        with open(_ground_truth_file([r for s in series_runs for r in s.runs], dataset)) as f:
            self.ground_truth = json.load(f)
        groups = group_datasets(self.ground_truth)
        coco = {name: analysis.coco_from_dict(d) for name, d in groups.items()}
        self.group_sizes = {
            name: sum(not a.get("iscrowd", 0) for a in d["annotations"])
            for name, d in groups.items()
        }
        self.num_images = len(self.ground_truth["images"])
        self.image_weights = bootstrap.image_weights(self.num_images, num_resamples, seed)
        self.series: List[Series] = []
        self.mask_ap: Dict[str, Estimate] = {}
        for index, template in enumerate(series_runs):
            series = Series(
                template.name,
                template.meta_architecture,
                template.schedule,
                template.runs,
                clock_s_per_iter=timing.seconds_per_iteration(clock, template.name),
            )
            draws = bootstrap.seed_draws(len(series.runs), num_resamples, seed + 1 + index)
            evaluate_series(
                series,
                [_predictions(r, r["curve"][-1], dataset) for r in series.runs],
                [
                    [
                        (timing.clock_seconds(r, p, clock), _predictions(r, p, dataset))
                        for p in r["curve"]
                    ]
                    for r in series.runs
                ],
                coco,
                self.image_weights,
                draws,
            )
            self.series.append(series)
            if all("segm" in r["curve"][-1]["datasets"][dataset] for r in series.runs):
                self.mask_ap[series.label] = self._mask_ap(series, coco[ALL], draws)

    def _mask_ap(self, series: Series, gt, draws: np.ndarray) -> Estimate:
        tables = [
            bootstrap.MatchTable(gt, _predictions(r, r["curve"][-1], self.dataset, False), "segm")
            for r in series.runs
        ]
        per_seed = [t.metrics()["AP"] for t in tables]
        values = np.array([t.replicate_metrics(self.image_weights)["AP"] for t in tables])
        return Estimate.of(float(np.mean(per_seed)), pool_seeds(values, draws), per_seed)

    def find(
        self, meta_architecture: str, schedule: str, with_masks: Optional[bool] = None
    ) -> Optional[Series]:
        """The first series of this meta-architecture and schedule (R-CNNs: with Detectron2's
        anchor RPN, not FCOS proposals; with or without masks as asked)."""
        for series in self.series:
            if series.meta_architecture != meta_architecture or series.schedule != schedule:
                continue
            if series.runs[0].get("proposal_generator") == "FCOS":
                continue
            if with_masks is not None and (series.label in self.mask_ap) != with_masks:
                continue
            return series
        return None


def pairings(results: DatasetResults) -> List[Tuple[str, Series, Series]]:
    """(budget, FCOS, baseline): at equal iterations, and at equal training time.

    The baseline is Mask R-CNN (the R-CNN with masks) when there is one; Faster R-CNN
    pairs follow. At equal time FCOS's time-budget runs meet the baseline's own time-budget
    runs, or, where the budget was the baseline's measured schedule time (``--budget-from``,
    so it has no budget run), the baseline's schedule runs.
    """
    pairs = []
    fcos_at_budget = results.find("FCOS", TIME_BUDGET)
    for with_masks in (True, False):
        baseline = results.find("GeneralizedRCNN", ITERATIONS, with_masks)
        if baseline is None:
            continue
        fcos = results.find("FCOS", ITERATIONS)
        if fcos is not None:
            pairs.append(("equal iterations", fcos, baseline))
        if fcos_at_budget is None:
            continue
        baseline_at_budget = results.find("GeneralizedRCNN", TIME_BUDGET, with_masks)
        if baseline_at_budget is None and _budget_came_from(fcos_at_budget, baseline):
            baseline_at_budget = baseline
        if baseline_at_budget is not None:
            pairs.append(("equal time", fcos_at_budget, baseline_at_budget))
    return pairs


def _budget_came_from(budget_runs: Series, schedule_runs: Series) -> bool:
    """Whether every budget run's budget is the training time of ``schedule_runs``' model:
    recorded (``budget_from``) or, for runs from before it was, equal to the wall-clock
    training time of the schedule run of its seed."""
    trained = {r["seed"]: r["train_seconds"] for r in schedule_runs.runs}

    def came_from(run: dict) -> bool:
        if run.get("budget_from"):
            return run["budget_from"] == schedule_runs.name
        return (
            run["seed"] in trained
            and run.get("budget_seconds") is not None
            and math.isclose(run["budget_seconds"], trained[run["seed"]])
        )

    return all(came_from(r) for r in budget_runs.runs)


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


VARIANT_METRICS = (
    (ALL, "AP", "box AP"),
    (ALL, "AP50", "AP50"),
    (ALL, "AP75", "AP75"),
    (ALL, "AR100", "AR@100"),
    (ALL, "R50", "recall@0.5"),
    (CROWDED, "AP", "AP, overlap > 0.3"),
)


def variant_reference(results: DatasetResults, series: Series) -> Optional[Series]:
    """The judged model of ``series``' kind (Mask R-CNN with its anchor RPN among the
    R-CNNs, else the first R-CNN; the first FCOS) on ``series``' schedule.

    A time-budget series whose budget was the judged model's own schedule time
    (``--budget-from``) meets that model's schedule runs: they trained for that time, and
    the judged model has no budget runs of its own."""

    def judged(schedule: str) -> Optional[Series]:
        kind = series.meta_architecture
        return results.find(kind, schedule, with_masks=True) or results.find(kind, schedule)

    if series.schedule == TIME_BUDGET:
        schedule_runs = judged(ITERATIONS)
        if schedule_runs is not None and _budget_came_from(series, schedule_runs):
            return schedule_runs
    return judged(series.schedule)


def variant_differences(results: DatasetResults) -> List[dict]:
    """Each model against its reference (``variant_reference``), paired over images.

    A variant is any other model of the same meta-architecture trained on the same schedule
    or for the same time (a config with one key changed, FCOS proposals in Mask R-CNN,
    Faster R-CNN)."""
    records = []
    for series in results.series:
        reference = variant_reference(results, series)
        if reference is None or reference is series:
            continue
        differences = {
            title: difference_estimate(series, reference, group, metric)
            for group, metric, title in VARIANT_METRICS
        }
        records.append({"variant": series, "reference": reference, "differences": differences})
    return records


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


def _overrun_notes(results: DatasetResults) -> List[str]:
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
            notes += _clock_overruns(series, _budget_reference(results, series))
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


def _budget_reference(results: DatasetResults, budget_series: Series) -> Optional[Series]:
    """The schedule runs whose training time set ``budget_series``' budget, if among them."""
    for candidate in results.series:
        if candidate.schedule == ITERATIONS and _budget_came_from(budget_series, candidate):
            return candidate
    return None


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


def overlap_tables(results: DatasetResults) -> str:
    """One table per metric: a row per series, a column per overlap group."""
    groups = [name for name, _, _ in analysis.OVERLAP_GROUPS]
    headers = ["model (schedule)", *(f"{g} ({results.group_sizes[g]} boxes)" for g in groups)]
    tables = []
    for metric, title in GROUP_METRICS:
        rows = [
            [s.label, *(metric_estimate(s, g, metric).text() for g in groups)]
            for s in results.series
        ]
        tables += [f"**{title}**", "", tabulate(rows, headers=headers, tablefmt="pipe"), ""]
    crowded_groups = [g for g in groups if g != CLEAR]
    fall_headers = ["model (schedule)", *(f"{CLEAR} → {g}" for g in crowded_groups)]
    for metric, title in FALL_METRICS:
        rows = [
            [s.label, *(drop_estimate(s, metric, CLEAR, g).text() for g in crowded_groups)]
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


def plot_learning_curves(all_results: List[DatasetResults], path: str, clocked: bool) -> None:
    fig, axes = plt.subplots(
        1, len(all_results), figsize=(6.2 * len(all_results), 4.4), squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, results in zip(axes[0], all_results):
        for i, series in enumerate(results.series):
            style = "-" if series.schedule == ITERATIONS else "--"
            for j, (seconds, ap) in enumerate(series.curve_ap):
                ax.plot(
                    np.r_[0, seconds] / 60,
                    np.r_[0, ap[:, 0]],
                    style,
                    marker="o",
                    markersize=3,
                    color=colors[i % len(colors)],
                    label=series.label if j == 0 else None,
                )
        ax.set_title(f"{results.dataset}: box AP against training time")
        ax.set_xlabel(
            "training time (min) at each model's timed s/iter (timing.json)"
            if clocked
            else "training time (min, evaluations excluded)"
        )
        ax.set_ylabel("box AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_overlap(all_results: List[DatasetResults], path: str) -> None:
    groups = [name for name, _, _ in analysis.OVERLAP_GROUPS]
    fig, axes = plt.subplots(
        1, len(all_results), figsize=(6.2 * len(all_results), 4.4), squeeze=False
    )
    for ax, results in zip(axes[0], all_results):
        width = 0.8 / max(len(results.series), 1)
        for i, series in enumerate(results.series):
            estimates = [metric_estimate(series, g, "R50") for g in groups]
            values = np.array([e.value for e in estimates])
            errors = np.array(
                [[e.value - e.low for e in estimates], [e.high - e.value for e in estimates]]
            )
            ax.bar(
                np.arange(len(groups)) + i * width,
                values,
                width,
                yerr=errors,
                capsize=2,
                label=series.label,
            )
        ax.set_xticks(np.arange(len(groups)) + width * (len(results.series) - 1) / 2)
        ax.set_xticklabels([f"{g}\n({results.group_sizes[g]} boxes)" for g in groups], fontsize=8)
        ax.set_ylabel("recall at IoU 0.5 (95% interval)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{results.dataset}: recall by overlap")
        ax.grid(axis="y", alpha=0.3)
    # One legend below both panels: inside a panel it covers the bars and runs off its edge.
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows = -(-len(labels) // 2)  # two columns
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * (rows + 1), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_recall_vs_iou(all_results: List[DatasetResults], path: str) -> None:
    """Recall against the IoU threshold, from each series' first seed."""
    fig, axes = plt.subplots(
        1, len(all_results), figsize=(6.2 * len(all_results), 4.0), squeeze=False
    )
    for ax, results in zip(axes[0], all_results):
        gt = analysis.coco_from_dict(results.ground_truth)
        for series in results.series:
            run = series.runs[0]
            x, y = analysis.recall_vs_iou(gt, _predictions(run, run["curve"][-1], results.dataset))
            ax.plot(x, 100 * y, marker="o", markersize=3, label=series.label)
        ax.set_title(
            f"{results.dataset}: recall against IoU threshold (seed {series.runs[0]['seed']})"
        )
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel("recall, 100 detections per image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _verdict_record(dataset: str, budget: str, fcos: Series, baseline: Series, verdict) -> dict:
    d = verdict.difference
    return {
        "dataset": dataset,
        "budget": budget,
        "fcos": fcos.label,
        "baseline": baseline.label,
        "claim": verdict.claim,
        "verdict": verdict.verdict,
        "margin": verdict.margin,
        "difference": None if d is None else [d.value, d.low, d.high],
        "data_to_settle": None
        if d is None
        else data_to_settle(d.value, d.low, d.high, verdict.margin),
        "evidence": verdict.evidence,
    }


def _settle_text(record: dict) -> str:
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
            _settle_text(r),
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


def _clock_paragraph(clock: Optional[dict]) -> List[str]:
    """How training time is counted, and the timing it is counted on."""
    if clock is None:
        return [
            "Training time is each run's own wall clock, evaluations along the way excluded "
            "(runs timed on different machines do not compare)."
        ]
    speeds = ", ".join(
        f"{name} {seconds:.3f}" for name, seconds in clock["seconds_per_iteration"].items()
    )
    rounds = len(next(iter(clock["rounds"].values()), []))
    return [
        "Training time is on one clock: each model's seconds per training iteration, timed "
        f"back-to-back on one machine ({clock['machine']['processor']}, "
        f"{clock['machine']['cpus']} CPUs, {clock['measured']}; {rounds} round(s) of "
        f"{clock['iterations_timed']} iterations after {clock['warmup_iterations']} untimed, "
        "the order reversed each round), times the iterations a run trained; it is what "
        f"the learning curves, the time to a common AP and the time budgets use. Seconds per "
        f"iteration: {speeds} (timing.json). A run's own wall clock (*wall min*) is shown "
        "beside it: the runs were trained over several sessions, on machines whose speed "
        "differed by up to three times, so wall clocks compare only within a session.",
    ]


def _variants_section(results: DatasetResults) -> List[str]:
    records = variant_differences(results)
    if not records:
        return []
    return [
        "### Variants against their reference",
        "",
        "Differences (model − reference) paired over validation images, with 95% intervals; "
        "the reference is the model of the same kind and schedule that the verdicts judge; "
        "for a run trained for that model's own schedule time, its schedule runs.",
        "",
        variants_table(records),
        "",
    ]


def write_report(
    runs_root: str,
    output_dir: str,
    num_resamples: int = 1000,
    seed: int = 0,
    command: str = "",
    clock: Optional[dict] = None,
) -> Dict:
    """Analyse every run under ``runs_root``; write report.md, plots and report.json there.

    ``clock``: the comparison's timing (``fcos_d2.comparison.timing``); training times are
    taken on it, for the models it times."""
    os.makedirs(output_dir, exist_ok=True)
    runs = load_runs(runs_root)
    if not runs:
        raise FileNotFoundError(f"no {RUN_FILE} under {runs_root}/*/: nothing to report")
    series = group_series(runs)
    datasets = list(runs[0]["curve"][-1]["datasets"])
    all_results = [DatasetResults(d, series, num_resamples, seed, clock) for d in datasets]

    plot_learning_curves(
        all_results, os.path.join(output_dir, "ap_vs_time.png"), clocked=clock is not None
    )
    plot_overlap(all_results, os.path.join(output_dir, "recall_by_overlap.png"))
    plot_recall_vs_iou(all_results, os.path.join(output_dir, "recall_vs_iou.png"))

    records = []
    for results in all_results:
        for budget, fcos, baseline in pairings(results):
            verdicts = judge_claims(
                fcos, baseline, results.group_sizes[CROWDED], results.group_sizes[CLEAR]
            )
            records += [
                _verdict_record(results.dataset, budget, fcos, baseline, v) for v in verdicts
            ]

    lines = [
        "# FCOS against R-CNN baselines: do the claims hold?",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Runs: {len(runs)} ({', '.join(f'{s.label}: {len(s.runs)} seed(s)' for s in series)}). "
        f"Every number is computed with pycocotools' matching from the saved predictions. "
        "Intervals are 95% bootstrap percentile intervals "
        f"({num_resamples} resamples, seed {seed}) "
        "over validation images and, where a model has several seeds, over its seeds "
        "(`fcos_d2/comparison/statistics.py` says how the two are pooled); `±` is the standard "
        "deviation across seeds.",
        "",
        *_clock_paragraph(clock),
        "",
        "![AP against training time](ap_vs_time.png)",
        "",
    ]
    for results in all_results:
        lines += [
            f"## {results.dataset} ({results.num_images} images, {results.group_sizes[ALL]} boxes)",
            "",
            "### Verdicts",
            "",
            verdict_table([r for r in records if r["dataset"] == results.dataset]),
            "",
            "### Metrics",
            "",
            metrics_table(results),
            "",
            *_overrun_notes(results),
            *_variants_section(results),
            "### Proposals of the R-CNNs",
            "",
            proposals_table(results),
            "",
            "### By overlap",
            "",
            "A box's overlap is its largest IoU with another box of its image; in each group the "
            "other boxes count as crowd (detections of them are ignored). Boxes per group in "
            "parentheses.",
            "",
            overlap_tables(results),
        ]
    lines += [
        "## Plots",
        "",
        "![recall by overlap](recall_by_overlap.png)",
        "",
        "![recall against IoU](recall_vs_iou.png)",
        "",
        "## How the verdicts are reached",
        "",
        "See `fcos_d2/comparison/verdicts.py`: a claim is *supported* only when the whole "
        "interval of its difference lies beyond the margin in its favour, *not supported* "
        "only when it lies wholly beyond the margin against it, and *inconclusive* otherwise. "
        "*To settle*: for an inconclusive verdict, about how many times the data (validation "
        "images and seeds) would narrow its interval (as 1/√n) past the margin if the estimate "
        "stayed put; an estimate inside the margin is a difference too small to matter, which "
        "more data only confirms.",
        "",
        "Each claim's difference (positive favours the claim):",
        "",
        *(f"- *{claim}*: {judged_on}." for claim, judged_on in zip(CLAIMS, JUDGED_ON)),
    ]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    summary = {
        "num_resamples": num_resamples,
        "datasets": {
            r.dataset: {
                s.label: {
                    "runs": [os.path.basename(run["run_dir"]) for run in s.runs],
                    "train_seconds": [run["train_seconds"] for run in s.runs],
                    "clock_train_seconds": s.clock_train_seconds(),
                    "metrics": {
                        g: {m: metric_estimate(s, g, m).__dict__ for m in bootstrap.METRICS}
                        for g in s.point
                    },
                }
                for s in r.series
            }
            for r in all_results
        },
        "variants": {
            r.dataset: [
                {
                    "variant": v["variant"].label,
                    "reference": v["reference"].label,
                    "differences": {k: e.__dict__ for k, e in v["differences"].items()},
                }
                for v in variant_differences(r)
            ]
            for r in all_results
        },
        "verdicts": records,
    }
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary

"""The runs of a comparison, grouped into series and evaluated on each validation set.

Every run directory holds ``run.json`` (see ``runner.train_and_evaluate``) and the COCO
predictions of each evaluation. Runs of the same model and schedule are the seeds of
one series; every number is computed from those files, with intervals as described in
``statistics``. Which series meet which (the pairs the claims are judged on, the variants
and their references) is decided here too.
"""

import glob
import json
import math
import os
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from . import analysis, bootstrap, timing
from .runner import RUN_FILE
from .statistics import (
    ALL,
    Estimate,
    Series,
    difference_estimate,
    evaluate_series,
    group_datasets,
    pool_seeds,
)
from .verdicts import CROWDED

ITERATIONS, TIME_BUDGET = "iterations", "time budget"
AT_CONVERGENCE = "at convergence"


def load_runs(runs_root: str) -> List[dict]:
    """Every ``run.json`` under ``runs_root`` (one level down), with its directory."""
    runs = []
    for path in sorted(glob.glob(os.path.join(runs_root, "*", RUN_FILE))):
        with open(path) as f:
            run = json.load(f)
        run["run_dir"] = os.path.dirname(path)
        runs.append(run)
    return runs


def schedule_multiple(run: dict) -> float:
    """A schedule run's length as a multiple of the comparison's schedule (1 for runs from
    before it was recorded, and for time-budget runs)."""
    if run["schedule"] != ITERATIONS:
        return 1.0
    return float(run.get("schedule_multiple") or 1)


def group_series(runs: List[dict]) -> List[Series]:
    """Runs of one model and schedule, seeds in order, as one Series each: the 1× schedule
    by name, then the time budgets, then the longer schedules, shortest first."""
    grouped = defaultdict(list)
    for run in runs:
        grouped[(run["name"], run["schedule"], schedule_multiple(run))].append(run)

    def order(key):
        name, schedule, multiple = key
        return (multiple != 1, schedule != ITERATIONS, multiple, name)

    return [
        Series(
            name,
            runs[0]["meta_architecture"],
            schedule,
            sorted(runs, key=lambda r: r["seed"]),
            multiple=multiple,
        )
        for (name, schedule, multiple), runs in sorted(grouped.items(), key=lambda kv: order(kv[0]))
    ]


def predictions_of(run: dict, point: dict, dataset: str, boxes_only: bool = True) -> List[dict]:
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
                multiple=template.multiple,
                clock_s_per_iter=timing.seconds_per_iteration(clock, template.name),
            )
            draws = bootstrap.seed_draws(len(series.runs), num_resamples, seed + 1 + index)
            evaluate_series(
                series,
                [predictions_of(r, r["curve"][-1], dataset) for r in series.runs],
                [
                    [
                        (timing.clock_seconds(r, p, clock), predictions_of(r, p, dataset))
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
            bootstrap.MatchTable(gt, predictions_of(r, r["curve"][-1], self.dataset, False), "segm")
            for r in series.runs
        ]
        per_seed = [t.metrics()["AP"] for t in tables]
        values = np.array([t.replicate_metrics(self.image_weights)["AP"] for t in tables])
        return Estimate.of(float(np.mean(per_seed)), pool_seeds(values, draws), per_seed)

    def find(
        self,
        meta_architecture: str,
        schedule: str,
        with_masks: Optional[bool] = None,
        multiple: float = 1,
    ) -> Optional[Series]:
        """The first series of this meta-architecture and schedule (R-CNNs: with Detectron2's
        anchor RPN, not FCOS proposals; with or without masks as asked)."""
        for series in self.series:
            if series.meta_architecture != meta_architecture or series.schedule != schedule:
                continue
            if series.multiple != multiple:
                continue
            if series.runs[0].get("proposal_generator") == "FCOS":
                continue
            if with_masks is not None and (series.label in self.mask_ap) != with_masks:
                continue
            return series
        return None

    def schedules_of(self, name: str) -> Dict[float, Series]:
        """The schedule series of model ``name``, by multiple."""
        return {s.multiple: s for s in self.series if s.name == name and s.schedule == ITERATIONS}


def pairings(
    results: DatasetResults, plateaus: Optional[Dict[str, float]] = None
) -> List[Tuple[str, Series, Series]]:
    """(budget, FCOS, baseline): at equal iterations, at equal training time and, given
    each model's plateau schedule (``plateaus``: name -> multiple, see ``convergence``),
    at convergence: each at its plateau.

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
        if baseline_at_budget is None and budget_came_from(fcos_at_budget, baseline):
            baseline_at_budget = baseline
        if baseline_at_budget is not None:
            pairs.append(("equal time", fcos_at_budget, baseline_at_budget))
    for with_masks in (True, False):
        baseline = results.find("GeneralizedRCNN", ITERATIONS, with_masks)
        fcos = results.find("FCOS", ITERATIONS)
        if plateaus is None or fcos is None or baseline is None:
            continue
        if fcos.name in plateaus and baseline.name in plateaus:
            pairs.append(
                (
                    AT_CONVERGENCE,
                    results.schedules_of(fcos.name)[plateaus[fcos.name]],
                    results.schedules_of(baseline.name)[plateaus[baseline.name]],
                )
            )
    return pairs


def budget_came_from(budget_runs: Series, schedule_runs: Series) -> bool:
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

    def judged(schedule: str, multiple: float = 1) -> Optional[Series]:
        kind = series.meta_architecture
        return results.find(kind, schedule, True, multiple) or results.find(
            kind, schedule, multiple=multiple
        )

    if series.schedule == TIME_BUDGET:
        schedule_runs = judged(ITERATIONS)
        if schedule_runs is not None and budget_came_from(series, schedule_runs):
            return schedule_runs
    return judged(series.schedule, series.multiple)


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


def budget_reference(results: DatasetResults, budget_series: Series) -> Optional[Series]:
    """The schedule runs whose training time set ``budget_series``' budget, if among them."""
    for candidate in results.series:
        if candidate.schedule == ITERATIONS and budget_came_from(budget_series, candidate):
            return candidate
    return None

"""Point estimates and bootstrap replicates of every metric the comparison reports.

A *series* is one model trained on one schedule, with its seeds. For each validation
set, every series gets, per ground-truth group (all boxes, or one overlap group), the
``bootstrap.METRICS`` as

- ``point``: the mean over seeds of the metric on the whole validation set,
- ``per_seed``: the metric of each seed,
- ``replicates``: B bootstrap replicates.

How the two kinds of spread are pooled: each replicate draws the validation images with
replacement (one draw per replicate, the same for every series, so differences between
models are paired) and, for each series independently, draws its seeds with replacement;
the replicate's value is the mean over the drawn seeds of the metric on the drawn
images. Percentile intervals of the replicates therefore hold both the sampling of
validation images and the spread between training runs. With S seeds, resampling them
gives the seed mean a variance of s²(S − 1)/S² rather than s²/S: half the between-run
variance with 2 seeds, so intervals from 2 seeds are somewhat too narrow on that part; the
``±`` (sample standard deviation across seeds) is printed beside them so a reader can see
how large that part is.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import analysis
from .bootstrap import METRICS, MatchTable, percentile_interval

ALL = "all boxes"


@dataclass
class Series:
    """One model on one schedule, on one validation set: its seeds' evaluations."""

    name: str  # run name (the config's stem)
    meta_architecture: str
    schedule: str  # "iterations" or "time budget"
    runs: List[dict]  # run.json of each seed
    # "iterations": the schedule's length as a multiple of the comparison's (1, 2, 4 ...).
    multiple: float = 1.0
    groups: Dict[str, List[MatchTable]] = field(default_factory=dict)  # final, per seed
    curves: List[List[Tuple[float, MatchTable]]] = field(default_factory=list)  # per seed
    point: Dict[str, Dict[str, float]] = field(default_factory=dict)
    per_seed: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    replicates: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    seed_replicates: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)  # (S, B)
    seed_draws: Optional[np.ndarray] = None  # (B, S)
    curve_ap: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per seed
    # The comparison's clock (``timing``): seconds per training iteration, None without one.
    clock_s_per_iter: Optional[float] = None

    @property
    def label(self) -> str:
        if self.multiple != 1:
            return f"{self.name} ({self.schedule} ×{self.multiple:g})"
        return f"{self.name} ({self.schedule})"

    @property
    def seeds(self) -> List[int]:
        return [r["seed"] for r in self.runs]

    def run_mean(self, key: str) -> Optional[float]:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    def clock_train_seconds(self) -> List[float]:
        """Each seed's training time on the comparison's clock (its wall clock without one)."""
        if self.clock_s_per_iter is None:
            return [r["train_seconds"] for r in self.runs]
        return [r["max_iter"] * self.clock_s_per_iter for r in self.runs]


def group_datasets(dataset: dict) -> Dict[str, dict]:
    """The ground truth of every group: all boxes, and each overlap group alone."""
    return {ALL: dataset, **analysis.overlap_group_datasets(dataset)}


def evaluate_series(
    series: Series,
    predictions_per_seed: Sequence[List[dict]],
    curve_predictions_per_seed: Sequence[List[Tuple[float, List[dict]]]],
    ground_truth: Dict[str, "analysis.COCO"],
    image_weights: np.ndarray,
    seed_draws: np.ndarray,
) -> None:
    """Fill ``series``' match tables, point estimates and replicates.

    Args:
        predictions_per_seed: final COCO predictions of each seed.
        curve_predictions_per_seed: per seed, (training seconds on the comparison's clock,
            predictions) of each evaluation along the way (the final one included).
        ground_truth: COCO index of each group (see ``group_datasets``).
        image_weights: (B, I) image draws, shared by all series on this dataset.
        seed_draws: (B, S) seed draws of this series.
    """
    series.seed_draws = seed_draws
    for group, gt in ground_truth.items():
        tables = [MatchTable(gt, predictions) for predictions in predictions_per_seed]
        series.groups[group] = tables
        per_seed = [t.metrics() for t in tables]
        series.per_seed[group] = {m: [s[m] for s in per_seed] for m in METRICS}
        series.point[group] = {m: float(np.mean(series.per_seed[group][m])) for m in METRICS}
        replicates = [t.replicate_metrics(image_weights) for t in tables]  # per seed: (B,) each
        series.seed_replicates[group] = {m: np.array([r[m] for r in replicates]) for m in METRICS}
        series.replicates[group] = {
            m: pool_seeds(series.seed_replicates[group][m], seed_draws) for m in METRICS
        }
    gt_all = ground_truth[ALL]
    series.curves = [
        [(seconds, MatchTable(gt_all, predictions)) for seconds, predictions in curve]
        for curve in curve_predictions_per_seed
    ]
    # Per seed: (C,) seconds and (C, 1 + B) AP of each evaluation, whole set first.
    series.curve_ap = [
        (
            np.array([s for s, _ in curve]),
            np.array(
                [
                    np.concatenate([[t.metrics()["AP"]], t.replicate_metrics(image_weights)["AP"]])
                    for _, t in curve
                ]
            ),
        )
        for curve in series.curves
    ]


def pool_seeds(values: np.ndarray, seed_draws: np.ndarray) -> np.ndarray:
    """(S, B) per-seed replicates -> (B,) mean over each replicate's drawn seeds."""
    replicate = np.arange(values.shape[1])[:, None]  # (B, 1)
    return values[seed_draws, replicate].mean(axis=1)


def time_to_reach(points: Sequence[Tuple[float, float]], target: float) -> float:
    """Training seconds at which AP first reaches ``target`` on a learning curve.

    The curve starts at (0 s, 0 AP) and is linear between evaluations; ``inf`` when the
    target is never reached.
    """
    previous_seconds, previous_ap = 0.0, 0.0
    for seconds, ap in points:
        ap = 0.0 if ap is None or math.isnan(ap) else ap
        if ap >= target:
            if ap == previous_ap:
                return seconds
            fraction = (target - previous_ap) / (ap - previous_ap)
            return previous_seconds + max(fraction, 0.0) * (seconds - previous_seconds)
        previous_seconds, previous_ap = seconds, ap
    return math.inf


def common_target(series: Sequence[Series], fraction: float) -> np.ndarray:
    """(1 + B,) the common AP every run must reach: ``fraction`` of the lowest final AP of
    any run of ``series``, on the whole set first, then on each bootstrap replicate.

    The target is recomputed on every replicate, as the bootstrap asks of any statistic
    that depends on the data: a run's final AP on a replicate is then never below that
    replicate's target, so every run reaches it and no replicate's time is infinite.
    """
    finals = np.stack([ap[-1] for s in series for _, ap in s.curve_ap])  # (runs, 1 + B)
    return fraction * finals.min(axis=0)


def time_to_reach_replicates(series: Series, targets: np.ndarray) -> np.ndarray:
    """(B,) bootstrap replicates of the mean (over drawn seeds) time to reach each
    replicate's target; ``targets`` is (B,)."""
    per_seed = np.array(
        [
            [time_to_reach(zip(seconds, ap[:, b + 1]), t) for b, t in enumerate(targets)]
            for seconds, ap in series.curve_ap
        ]
    )  # (S, B)
    return pool_seeds(per_seed, series.seed_draws)


def point_time_to_reach(series: Series, target: float) -> float:
    """Mean over seeds of the time to reach ``target`` AP on the whole validation set."""
    return float(
        np.mean([time_to_reach(zip(seconds, ap[:, 0]), target) for seconds, ap in series.curve_ap])
    )


@dataclass
class Estimate:
    """A number with its bootstrap interval (and, for a series, its seeds)."""

    value: float
    low: float
    high: float
    seeds: Tuple[float, ...] = ()

    @classmethod
    def of(cls, value: float, replicates: np.ndarray, seeds: Sequence[float] = ()) -> "Estimate":
        low, high = percentile_interval(replicates)
        return cls(float(value), low, high, tuple(float(s) for s in seeds))

    def text(self, digits: int = 1) -> str:
        body = f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        if len(self.seeds) > 1:
            body += f" ±{np.std(self.seeds, ddof=1):.{digits}f}"
        return body


def metric_estimate(series: Series, group: str, metric: str) -> Estimate:
    return Estimate.of(
        series.point[group][metric],
        series.replicates[group][metric],
        series.per_seed[group][metric],
    )


def difference_estimate(a: Series, b: Series, group: str, metric: str) -> Estimate:
    """a − b, paired over images."""
    return Estimate.of(
        a.point[group][metric] - b.point[group][metric],
        a.replicates[group][metric] - b.replicates[group][metric],
    )


def paired_seed_difference(
    a: Series, b: Series, group: str, metric: str, seed_draws: np.ndarray
) -> Estimate:
    """a − b over the seeds both have, paired over images and over seeds: each replicate
    draws the common seeds (``seed_draws``, (B, S) indices into them) and averages a's
    minus b's metric of each drawn seed on the drawn images. For two schedules of one model,
    where seed s of both starts from the same weights and data order."""
    common = [s for s in a.seeds if s in b.seeds]
    if not common:
        raise ValueError(f"{a.label} and {b.label} have no seed in common")
    rows_a = [a.seeds.index(s) for s in common]
    rows_b = [b.seeds.index(s) for s in common]
    per_seed = [
        a.per_seed[group][metric][i] - b.per_seed[group][metric][j] for i, j in zip(rows_a, rows_b)
    ]
    values = (
        a.seed_replicates[group][metric][rows_a] - b.seed_replicates[group][metric][rows_b]
    )  # (S, B)
    return Estimate.of(float(np.mean(per_seed)), pool_seeds(values, seed_draws), per_seed)


def drop_estimate(series: Series, metric: str, clear: str, crowded: str) -> Estimate:
    """How much ``metric`` falls from the ``clear`` group to the ``crowded`` group."""
    return Estimate.of(
        series.point[clear][metric] - series.point[crowded][metric],
        series.replicates[clear][metric] - series.replicates[crowded][metric],
    )


def drop_difference_estimate(
    a: Series, b: Series, metric: str, clear: str, crowded: str
) -> Estimate:
    """a's drop minus b's drop (> 0: a loses more on crowded boxes)."""
    drop_a, drop_b = (drop_estimate(s, metric, clear, crowded) for s in (a, b))
    replicates = (a.replicates[clear][metric] - a.replicates[crowded][metric]) - (
        b.replicates[clear][metric] - b.replicates[crowded][metric]
    )
    return Estimate.of(drop_a.value - drop_b.value, replicates)


def mean_curve(series: Series) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The series' learning curve over its seeds: (C,) training seconds, mean box AP, and
    the 95% interval's low and high ends at each evaluation (images and seeds resampled,
    as every interval here). Seeds with more evaluations than the others are cut to the
    fewest."""
    points = min(len(seconds) for seconds, _ in series.curve_ap)
    seconds = np.mean([s[:points] for s, _ in series.curve_ap], axis=0)
    ap = np.stack([a[:points] for _, a in series.curve_ap])  # (S, C, 1 + B)
    mean = ap[:, :, 0].mean(axis=0)
    bands = [
        percentile_interval(pool_seeds(ap[:, c, 1:], series.seed_draws)) for c in range(points)
    ]
    low, high = (np.array(side) for side in zip(*bands))
    return seconds, mean, low, high

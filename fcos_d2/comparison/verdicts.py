"""The four claims made about FCOS against Mask R-CNN, judged on intervals.

Every claim is a difference between FCOS and the baseline, oriented so that a positive
difference favours the claim, with a margin below which a difference does not matter.
The verdict follows from the 95% bootstrap interval of that difference alone:

- "supported" when the whole interval lies above +margin,
- "not supported" when the whole interval lies below −margin,
- "inconclusive" otherwise (the interval is printed; it reaches into the margin or
  straddles it).

The claims and what each is judged on:

1. Training takes less time: the time each model needs to reach a common box AP, on
   the comparison's clock (``timing``: iterations times the model's timed pace)
   (``TIME_TARGET_FRACTION`` of the lowest final AP of any run, seed by seed, of the two
   models: one weak seed must still reach it, or its time is infinite and so is every
   mean it enters; recomputed on each bootstrap replicate, so no replicate's time is
   infinite), as the fraction of the baseline's time FCOS saves; margin 5%.
   Seconds per iteration are shown as evidence.
2. Higher recall: recall at IoU 0.5 with 100 detections per image, FCOS minus baseline;
   margin 1 point. IoU 0.5 is what "finds the object" means (the question the claim
   asks); AR (IoU 0.5:0.95) mixes in how tightly boxes fit, which claim 3 covers, so
   AR@100 and recall at IoU 0.75 are shown as evidence.
3. Lower precision (lower accuracy): box AP, baseline minus FCOS; margin 1 point.
4. Worse on overlapping objects: how much recall at IoU 0.5 falls from boxes that
   overlap nothing to boxes that overlap another at IoU > 0.3, FCOS's fall minus the
   baseline's; margin 1 point. Recall, not AP, because a group's AP is charged with
   false positives of the whole image set; the AP falls are shown as evidence.
"""

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .statistics import (
    ALL,
    Estimate,
    Series,
    common_target,
    difference_estimate,
    drop_difference_estimate,
    drop_estimate,
    point_time_to_reach,
    time_to_reach_replicates,
)

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

TIME_MARGIN = 0.05  # fraction of the baseline's time to the target AP
METRIC_MARGIN = 1.0  # AP / recall points
TIME_TARGET_FRACTION = 0.9
MIN_GROUP_BOXES = 30  # ground-truth boxes a group needs to be judged or given an interval
CLEAR, CROWDED = "no overlap", "IoU > 0.3"

CLAIMS = (
    "Training is simpler and takes less time",
    "Higher recall",
    "Lower precision (lower accuracy)",
    "Detection quality suffers on overlapping objects",
)
# What each claim's difference is, in the words the report prints (see the module docstring).
JUDGED_ON = (
    f"the share of the baseline's training time FCOS saves reaching a common box AP "
    f"({100 * TIME_TARGET_FRACTION:.0f}% of the lowest final AP of any run of the two); "
    f"margin {100 * TIME_MARGIN:.0f}%",
    "recall at IoU 0.5 (100 detections per image), FCOS − baseline; margin 1 point. IoU 0.5 "
    "asks whether an object is found at all, which is what the claim is about; AR@100 "
    "(IoU 0.5:0.95) and recall at IoU 0.75 also weigh how tightly boxes fit, which the "
    "precision claim covers, so they are shown as evidence",
    "box AP, baseline − FCOS; margin 1 point",
    "how much recall at IoU 0.5 falls from boxes that overlap nothing to boxes that overlap "
    "another at IoU > 0.3, FCOS's fall − the baseline's; margin 1 point. Recall, not AP: a "
    "group's AP is charged with the false positives of every image; the AP falls are shown "
    "as evidence",
)


@dataclass
class Verdict:
    claim: str
    verdict: str
    difference: Optional[Estimate]  # oriented: > 0 favours the claim
    margin: float
    evidence: str


def verdict_from_interval(low: float, high: float, margin: float) -> str:
    """SUPPORTED if the interval lies wholly above +margin, NOT_SUPPORTED if wholly
    below −margin, else INCONCLUSIVE (also when the interval is not finite)."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if low > margin:
        return SUPPORTED
    if high < -margin:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def data_to_settle(value: float, low: float, high: float, margin: float) -> Optional[float]:
    """How many times the data (validation images and seeds together) would make an
    inconclusive interval conclusive, if the estimate stayed where it is.

    A 95% interval narrows as 1/sqrt(n); it clears the margin on the estimate's side once
    its half-width on that side is below |value| - margin, so n must grow by
    (half-width / (|value| - margin))². None when the estimate itself lies within the
    margin (no amount of data settles it: the difference is too small to matter) or the
    interval is not finite; 1.0 when the interval is already conclusive.
    """
    if not all(map(math.isfinite, (value, low, high))):
        return None
    if verdict_from_interval(low, high, margin) != INCONCLUSIVE:
        return 1.0
    if abs(value) <= margin:
        return None
    half_width = value - low if value > 0 else high - value
    return (half_width / (abs(value) - margin)) ** 2


def _judge(claim: str, difference: Estimate, margin: float, evidence: str) -> Verdict:
    return Verdict(
        claim,
        verdict_from_interval(difference.low, difference.high, margin),
        difference,
        margin,
        evidence,
    )


def judge_training_time(fcos: Series, baseline: Series) -> Verdict:
    targets = common_target((fcos, baseline), TIME_TARGET_FRACTION)  # (1 + B,)
    target = float(targets[0])
    if target <= 0:
        return Verdict(
            CLAIMS[0],
            INCONCLUSIVE,
            None,
            TIME_MARGIN,
            "no common AP to reach: a model ended at 0 AP",
        )
    fcos_seconds = point_time_to_reach(fcos, target)
    baseline_seconds = point_time_to_reach(baseline, target)
    fcos_replicates = time_to_reach_replicates(fcos, targets[1:])
    baseline_replicates = time_to_reach_replicates(baseline, targets[1:])
    with np.errstate(divide="ignore", invalid="ignore"):  # inf / inf: neither reached it
        saving = 1.0 - fcos_replicates / baseline_replicates
        point = float(1.0 - np.float64(fcos_seconds) / baseline_seconds)
    difference = Estimate.of(point, saving)
    timed = fcos.clock_s_per_iter is not None and baseline.clock_s_per_iter is not None
    if timed:
        pace = f"train s/iter timed back-to-back {fcos.clock_s_per_iter:.3f} vs "
        pace += f"{baseline.clock_s_per_iter:.3f}"
    else:
        pace = f"train s/iter {_fmt(fcos.run_mean('train_s_per_iter'), 3)} vs "
        pace += _fmt(baseline.run_mean("train_s_per_iter"), 3)
    totals = [np.mean(s.clock_train_seconds()) / 60 for s in (fcos, baseline)]
    evidence = (
        f"time to {target:.1f} AP ({100 * TIME_TARGET_FRACTION:.0f}% of the lowest final AP "
        "of a run): "
        f"FCOS {fcos_seconds / 60:.1f} min vs {baseline_seconds / 60:.1f} min, "
        f"{100 * difference.value:+.0f}% saved [{100 * difference.low:+.0f}%, "
        f"{100 * difference.high:+.0f}%]; {pace}; total training {totals[0]:.1f} vs "
        f"{totals[1]:.1f} min"
    )
    return _judge(CLAIMS[0], difference, TIME_MARGIN, evidence)


def judge_recall(fcos: Series, baseline: Series) -> Verdict:
    difference = difference_estimate(fcos, baseline, ALL, "R50")
    ar = difference_estimate(fcos, baseline, ALL, "AR100")
    r75 = difference_estimate(fcos, baseline, ALL, "R75")
    evidence = (
        f"recall@0.5 {fcos.point[ALL]['R50']:.1f} vs {baseline.point[ALL]['R50']:.1f} "
        f"({difference.text()}); recall@0.75 {r75.text()}; AR@100 {ar.text()} (FCOS − baseline)"
    )
    return _judge(CLAIMS[1], difference, METRIC_MARGIN, evidence)


def judge_precision(fcos: Series, baseline: Series) -> Verdict:
    fcos_minus = difference_estimate(fcos, baseline, ALL, "AP")
    difference = Estimate(-fcos_minus.value, -fcos_minus.high, -fcos_minus.low)
    ap50 = difference_estimate(fcos, baseline, ALL, "AP50")
    evidence = (
        f"box AP {fcos.point[ALL]['AP']:.1f} vs {baseline.point[ALL]['AP']:.1f} "
        f"(FCOS − baseline {fcos_minus.text()}); AP50 {ap50.text()}"
    )
    return _judge(CLAIMS[2], difference, METRIC_MARGIN, evidence)


def judge_overlap(fcos: Series, baseline: Series, num_crowded: int, num_clear: int) -> Verdict:
    if num_crowded < MIN_GROUP_BOXES or num_clear < MIN_GROUP_BOXES:
        return Verdict(
            CLAIMS[3],
            INCONCLUSIVE,
            None,
            METRIC_MARGIN,
            f"too few boxes to judge ({num_crowded} overlap > 0.3, {num_clear} none; "
            f"{MIN_GROUP_BOXES} needed in each)",
        )
    difference = drop_difference_estimate(fcos, baseline, "R50", CLEAR, CROWDED)
    drops = {
        name: (drop_estimate(s, "R50", CLEAR, CROWDED), drop_estimate(s, "AP", CLEAR, CROWDED))
        for name, s in (("FCOS", fcos), ("baseline", baseline))
    }
    evidence = (
        f"recall@0.5 fall from no overlap to IoU > 0.3: FCOS {drops['FCOS'][0].text()}, "
        f"baseline {drops['baseline'][0].text()}; AP fall {drops['FCOS'][1].text()} vs "
        f"{drops['baseline'][1].text()} ({num_crowded} boxes overlap > 0.3, {num_clear} none)"
    )
    return _judge(CLAIMS[3], difference, METRIC_MARGIN, evidence)


def judge_claims(fcos: Series, baseline: Series, num_crowded: int, num_clear: int) -> List[Verdict]:
    """The four verdicts for FCOS against a baseline on one validation set."""
    return [
        judge_training_time(fcos, baseline),
        judge_recall(fcos, baseline),
        judge_precision(fcos, baseline),
        judge_overlap(fcos, baseline, num_crowded, num_clear),
    ]


def _fmt(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"

"""The four claims made about FCOS against Mask R-CNN, judged from measured numbers.

Each verdict is derived from the numbers by a fixed rule with a margin: inside the
margin the numbers cannot tell, and the verdict is "inconclusive".
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

TIME_MARGIN = 0.05  # relative difference of training s/iter
METRIC_MARGIN = 1.0  # AP / AR points
MIN_OVERLAP_GT = 20  # ground-truth boxes needed in an overlap bin to judge it
OVERLAP_BIN_CLEAR, OVERLAP_BIN_HEAVY = "no overlap", "IoU > 0.3"


@dataclass
class Verdict:
    claim: str
    verdict: str
    evidence: str


def _by_margin(difference: float, margin: float) -> str:
    """SUPPORTED when difference > margin, NOT_SUPPORTED when < -margin."""
    if difference > margin:
        return SUPPORTED
    if difference < -margin:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def judge_training_time(fcos_s_per_iter: Optional[float], baseline_s_per_iter: Optional[float]) -> Verdict:
    claim = "Training is simpler and takes less time (no RPN)"
    if not fcos_s_per_iter or not baseline_s_per_iter:
        return Verdict(claim, INCONCLUSIVE, "training time not measured for both models")
    saving = 1.0 - fcos_s_per_iter / baseline_s_per_iter
    return Verdict(
        claim,
        _by_margin(saving, TIME_MARGIN),
        f"FCOS {fcos_s_per_iter:.3f} s/iter vs {baseline_s_per_iter:.3f} s/iter "
        f"({100 * saving:+.1f}% time saved; margin {100 * TIME_MARGIN:.0f}%)",
    )


def judge_recall(fcos: Dict[str, float], baseline: Dict[str, float]) -> Verdict:
    difference = fcos["AR100"] - baseline["AR100"]
    return Verdict(
        "Higher recall",
        _by_margin(difference, METRIC_MARGIN),
        f"AR@100 {fcos['AR100']:.1f} vs {baseline['AR100']:.1f} ({difference:+.1f} points)",
    )


def judge_precision(fcos: Dict[str, float], baseline: Dict[str, float]) -> Verdict:
    difference = baseline["AP"] - fcos["AP"]  # positive: FCOS is less precise
    return Verdict(
        "Lower precision (lower accuracy)",
        _by_margin(difference, METRIC_MARGIN),
        f"box AP {fcos['AP']:.1f} vs {baseline['AP']:.1f} ({-difference:+.1f} points for FCOS)",
    )


def judge_overlap(fcos: Dict[str, Dict[str, float]], baseline: Dict[str, Dict[str, float]]) -> Verdict:
    """Judged on recall at IoU 0.5 per overlap bin.

    Per-bin AP counts every unmatched detection of the whole set as a false positive of
    the bin, so a small bin's AP mostly measures false positives elsewhere; recall of the
    bin's own boxes does not have that dilution. The AP drop is shown as evidence.
    """
    claim = "Detection quality suffers on overlapping objects"
    heavy = fcos[OVERLAP_BIN_HEAVY]["num_gt"]
    if heavy < MIN_OVERLAP_GT or fcos[OVERLAP_BIN_CLEAR]["num_gt"] < MIN_OVERLAP_GT:
        return Verdict(claim, INCONCLUSIVE, f"too few boxes to judge ({heavy} overlap > 0.3)")

    def drop(split, metric):
        return split[OVERLAP_BIN_CLEAR][metric] - split[OVERLAP_BIN_HEAVY][metric]

    difference = drop(fcos, "recall50") - drop(baseline, "recall50")  # > 0: FCOS loses more
    return Verdict(
        claim,
        _by_margin(difference, METRIC_MARGIN),
        f"recall@0.5 drop from no overlap to IoU > 0.3: FCOS {drop(fcos, 'recall50'):.1f}, "
        f"baseline {drop(baseline, 'recall50'):.1f} points; AP drop {drop(fcos, 'AP'):.1f} vs "
        f"{drop(baseline, 'AP'):.1f} ({heavy} boxes overlap > 0.3)",
    )


def judge_claims(fcos: dict, baseline: dict) -> List[Verdict]:
    """The four verdicts from two models' results.

    Args:
        fcos, baseline: each with ``train_s_per_iter`` (or None), ``bbox`` (summary
            metrics) and ``overlap`` (see ``overlap_split_metrics``).
    """
    return [
        judge_training_time(fcos.get("train_s_per_iter"), baseline.get("train_s_per_iter")),
        judge_recall(fcos["bbox"], baseline["bbox"]),
        judge_precision(fcos["bbox"], baseline["bbox"]),
        judge_overlap(fcos["overlap"], baseline["overlap"]),
    ]

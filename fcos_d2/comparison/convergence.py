"""Where each model stops improving: its plateau schedule, decided from the runs.

A model trained at 1×, 2×, 4× ... its schedule (``tools/compare.py --schedules``) is at its
plateau at the shortest schedule whose doubling gains less than ``PLATEAU_GAIN`` box AP on
every validation set. A gain is the longer schedule's box AP minus the shorter's, paired
over validation images and over seeds (seed s of both schedules starts from the same
weights and the same data order), with its 95% bootstrap interval. The decision is taken on
the estimate, the interval printed beside it: with two seeds an interval narrower than a
point is out of reach, and a rule on the interval would never call a plateau.

A model still gaining at its longest schedule is judged there ("still rising at 4×"); a
model with a single schedule has no known plateau and is judged at it.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import bootstrap
from .results import DatasetResults
from .statistics import ALL, Estimate, paired_seed_difference

PLATEAU_GAIN = 1.0  # box AP points a doubling must gain for the model to count as rising
RULE = (
    f"A model's plateau is the shortest schedule whose doubling gains less than "
    f"{PLATEAU_GAIN:g} box AP on every validation set (the gain paired over images and over "
    "seeds, its 95% interval beside it; decided on the estimate). A model still gaining at "
    "its longest schedule is judged there; at convergence the four claims are judged with "
    "the same rules and margins as at the other budgets, each model at its own schedule."
)


@dataclass
class Doubling:
    """One schedule against its double, on every validation set."""

    shorter: float
    longer: float
    gains: Dict[str, Estimate]  # validation set -> box AP gain (longer − shorter)
    seeds: List[int]  # the seeds both schedules have

    @property
    def flat(self) -> bool:
        return all(gain.value < PLATEAU_GAIN for gain in self.gains.values())


@dataclass
class Plateau:
    """A model's schedule at convergence, and the doublings that decided it."""

    name: str
    multiple: float  # the schedule the model is judged at "at convergence"
    reached: bool  # False: still gaining there, or no longer schedule to tell
    trained: List[float]  # the schedule multiples trained (on every validation set)
    doublings: List[Doubling] = field(default_factory=list)

    def status(self) -> str:
        if self.reached:
            return (
                f"plateau at {self.multiple:g}× (doubling it gains < {PLATEAU_GAIN:g} box AP "
                "on every set)"
            )
        if self.doublings:
            return f"still rising at {self.multiple:g}× (judged there)"
        return f"only {self.multiple:g}× trained: plateau unknown (judged there)"


def find_plateau(
    name: str, all_results: List[DatasetResults], num_resamples: int, seed: int = 0
) -> Optional[Plateau]:
    """Model ``name``'s plateau (None if it has no schedule series on every set)."""
    per_set = [results.schedules_of(name) for results in all_results]
    trained = sorted(set.intersection(*(set(s) for s in per_set))) if per_set else []
    if not trained:
        return None
    multiple, doublings = trained[0], []
    while 2 * multiple in trained:
        longer, shorter = 2 * multiple, multiple
        common = [s for s in per_set[0][longer].seeds if s in per_set[0][shorter].seeds]
        if not common:  # no seed to pair: the doubling cannot be told yet
            break
        draws = bootstrap.seed_draws(len(common), num_resamples, seed + int(4 * shorter))
        gains = {
            results.dataset: paired_seed_difference(
                series[longer], series[shorter], ALL, "AP", draws
            )
            for results, series in zip(all_results, per_set)
        }
        doublings.append(Doubling(shorter, longer, gains, common))
        if doublings[-1].flat:
            return Plateau(name, shorter, True, trained, doublings)
        multiple = longer
    return Plateau(name, multiple, False, trained, doublings)


def find_plateaus(
    all_results: List[DatasetResults], num_resamples: int, seed: int = 0
) -> Dict[str, Plateau]:
    """Every model's plateau, by name, in the order the series come."""
    names = dict.fromkeys(s.name for s in all_results[0].series)
    plateaus = {name: find_plateau(name, all_results, num_resamples, seed) for name in names}
    return {name: plateau for name, plateau in plateaus.items() if plateau is not None}

"""The time a step spends inside its convolutions, measured where they run.

:mod:`.conv_floor` times a model's convolutions replayed on their own; this measures the
same convolutions inside the model's own step, with ``torch.profiler``: the CPU time of
every ``aten::convolution`` (forward) and ``aten::convolution_backward`` event. Whole
step minus that is what everything but the convolutions costs, and the model's
convolution time against the replay's says whether the replay is a fair floor (a replay
slower than the model's own convolutions is not one).

CPU only: on a GPU the profiler's CPU time of an op is its launch, not its kernel.
"""

import time
from typing import Callable, Dict

from torch.profiler import ProfilerActivity, profile

CONV_EVENTS = {"forward": "aten::convolution", "backward": "aten::convolution_backward"}


def convolution_seconds(step: Callable[[], object], reps: int = 2) -> Dict[str, float]:
    """Seconds ``step()`` spends in convolution forwards and backwards, and in all.

    Args:
        step: one training step or inference; run ``reps`` times under the profiler.
        reps: the figures are those of the repetition with the least total time.

    Returns:
        ``{"forward": s, "backward": s, "step": s, "forward_calls": n, "backward_calls": n}``;
        "step" is the profiled step's wall time (the profiler's own cost included).
    """
    best = None
    for _ in range(reps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            step()
            figures: Dict[str, float] = {"step": time.perf_counter() - start}
        events = prof.events()
        for direction, name in CONV_EVENTS.items():
            matching = [event for event in events if event.name == name]
            figures[direction] = sum(event.cpu_time_total for event in matching) / 1e6
            figures[f"{direction}_calls"] = len(matching)
        total = figures["forward"] + figures["backward"]
        if best is None or total < best["forward"] + best["backward"]:
            best = figures
    return best


def format_convolution_seconds(seconds: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """One line per phase: each step's convolution forward + backward seconds and their
    share of its profiled wall time (``seconds``: ``{name: {phase: figures}}``)."""
    lines = ["inside each step (torch.profiler, best of its repetitions): conv fwd + bwd s"]
    phases = next(iter(seconds.values())).keys()
    for phase in phases:
        cells = []
        for name, by_phase in seconds.items():
            f = by_phase[phase]
            share = (f["forward"] + f["backward"]) / f["step"] if f["step"] else 0.0
            cells.append(
                f"{name} {f['forward']:.3f} + {f['backward']:.3f} of {f['step']:.3f} "
                f"({100 * share:.0f}%)"
            )
        lines.append(f"{phase:<7}" + "; ".join(cells))
    return "\n".join(lines)

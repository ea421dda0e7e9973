"""Where a comparison run evaluates along the way, and how a budget stretches its schedule
(fcos_d2.comparison.runner), by hand."""

import pytest
from detectron2.config import get_cfg

from fcos_d2.comparison import runner


@pytest.mark.parametrize(
    "max_iter, num_evaluations, period",
    [(1500, 6, 250), (5635, 6, 940), (7298, 6, 1217), (3, 6, 1), (300, 2, 150)],
)
def test_evaluation_period_by_hand(max_iter, num_evaluations, period):
    assert runner.evaluation_period(max_iter, num_evaluations) == period


class _FakeTrainer:
    def __init__(self, max_iter):
        self.max_iter = max_iter
        self.iter = 0


@pytest.mark.parametrize("max_iter", [1500, 5635, 5641, 7298])
def test_the_learning_curve_has_the_asked_points_and_none_just_before_the_end(
    max_iter, monkeypatch
):
    """Six points asked: five along the way (the hook's) and the final one (the caller's);
    5635 iterations used to give a point at 5634 and another at 5635."""
    hook = runner.LearningCurveHook(
        cfg=None, datasets=[], period=runner.evaluation_period(max_iter, 6), run_dir=""
    )
    evaluated = []
    monkeypatch.setattr(
        hook, "evaluate_all", lambda iteration, seconds, with_masks: evaluated.append(iteration)
    )
    hook.trainer = _FakeTrainer(max_iter)
    hook.before_train()
    for hook.trainer.iter in range(max_iter):
        hook.after_step()
    assert len(evaluated) == 5
    assert evaluated == sorted(set(evaluated))
    assert max_iter - evaluated[-1] >= max_iter / 6 - 6


def test_a_stretched_schedule_keeps_its_steps_at_the_same_fractions():
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 1500, (1125, 1380), 150
    opts = runner.scaled_schedule_opts(cfg, 5635)
    values = dict(zip(opts[0::2], opts[1::2]))
    assert values == {
        "SOLVER.MAX_ITER": "5635",
        "SOLVER.STEPS": str((round(1125 * 5635 / 1500), round(1380 * 5635 / 1500))),
        "SOLVER.WARMUP_ITERS": "150",
    }
    assert runner.scaled_schedule_opts(cfg, 100)[-1] == "50"  # warm-up at most half

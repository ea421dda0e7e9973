"""Train one model with evaluations along the way, and write what the report reads.

A run directory holds ``run.json`` (timings, memory, the learning curve) and, for every
evaluation, Detectron2's ``coco_instances_results.json`` per validation set. The clock
that the learning curve uses counts training only: time spent evaluating is taken out.
"""

import json
import logging
import math
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import ProposalNetwork, build_model
from detectron2.utils.env import seed_all_rng
from torch import nn

from ..config import setup_cfg
from ..engine import Trainer
from . import resume, timing
from .resume import TrainingClock

RUN_FILE = "run.json"
PREDICTIONS_FILE = "coco_instances_results.json"
MIN_BUDGET_ITERS = 30  # the fewest iterations a time-budget run trains
# Iterations between resume checkpoints: at most about 10 min of Mask R-CNN lost to a stop on
# a slow 2-core machine (2.8 s/iter); a checkpoint takes well under a second.
CHECKPOINT_PERIOD = 200
logger = logging.getLogger(__name__)


class TimedModel(nn.Module):
    """Wraps a model and adds up the wall time of its forward calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.seconds = 0.0
        self.images = 0

    def forward(self, inputs):
        _synchronize()
        start = time.perf_counter()
        outputs = self.model(inputs)
        _synchronize()
        self.seconds += time.perf_counter() - start
        self.images += len(inputs)
        return outputs


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mb() -> float:
    """Peak GPU memory allocated, or the process's peak RSS on the CPU, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate(
    model: nn.Module, cfg: CfgNode, dataset: str, output_dir: str, with_masks: bool
) -> dict:
    """COCO evaluation of ``model`` on ``dataset``; predictions saved in ``output_dir``.

    Returns:
        {"bbox": {AP, ...}, ("segm": ...), "predictions": path, "infer_s_per_image": float}
    """
    timed = TimedModel(model)
    tasks = ("bbox", "segm") if with_masks else ("bbox",)
    results = inference_on_dataset(
        timed,
        Trainer.build_test_loader(cfg, dataset),
        COCOEvaluator(dataset, tasks=tasks, output_dir=output_dir),
    )
    return {
        **results,
        "predictions": os.path.join(output_dir, PREDICTIONS_FILE),
        "infer_s_per_image": timed.seconds / max(timed.images, 1),
    }


def evaluate_proposals(model: nn.Module, cfg: CfgNode, dataset: str) -> Dict[str, float]:
    """Recall of an R-CNN's proposals on ``dataset`` (COCO's AR@100, AR@1000, by size too).

    The R-CNN's own backbone and proposal generator (Detectron2's RPN or FCOS) run as
    Detectron2's ``ProposalNetwork``, so the proposals are those the R-CNN's box head
    sees at test time (``MODEL.RPN.POST_NMS_TOPK_TEST`` of them), in image coordinates.
    """
    proposals_only = ProposalNetwork(
        backbone=model.backbone,
        proposal_generator=model.proposal_generator,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
    ).eval()
    results = inference_on_dataset(
        proposals_only,
        Trainer.build_test_loader(cfg, dataset),
        COCOEvaluator(dataset, tasks=("bbox",), output_dir=None),
    )
    return dict(results["box_proposals"])


def add_proposal_recall(run_dir: str) -> bool:
    """Add the proposals' recall of a finished R-CNN run (its ``model_final.pth``) to its
    run.json, for runs trained before it was recorded. Returns whether it added it."""
    with open(os.path.join(run_dir, RUN_FILE)) as f:
        run = json.load(f)
    weights = os.path.join(run_dir, "model_final.pth")
    if "proposals" in run or run["meta_architecture"] == "FCOS" or not os.path.isfile(weights):
        return False
    cfg = setup_cfg(run["config"], [*run["opts"], "MODEL.WEIGHTS", weights])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    datasets = run["curve"][-1]["datasets"]  # those evaluated at the end
    run["proposals"] = {d: evaluate_proposals(model, cfg, d) for d in datasets}
    run["proposal_generator"] = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    with open(os.path.join(run_dir, RUN_FILE), "w") as f:
        json.dump(run, f, indent=1)
    return True


class LearningCurveHook(HookBase):
    """Evaluates every ``period`` iterations and records AP against training seconds.

    Training seconds: wall time since training began, less the time spent in these
    evaluations and in checkpoints (``clock``). The last iteration is left to the caller's
    final evaluation. The points and the clock are part of the trainer's checkpoints, so a
    resumed run (``resume``) goes on with its curve.
    """

    def __init__(
        self,
        cfg: CfgNode,
        datasets: Sequence[str],
        period: int,
        run_dir: str,
        clock: Optional[TrainingClock] = None,
    ):
        self.cfg = cfg
        self.datasets = list(datasets)
        self.period = period
        self.run_dir = run_dir
        self.points: List[dict] = []
        self.clock = clock or TrainingClock()
        self.peak_memory_before = 0.0  # MiB, of the processes before a resume

    def state_dict(self) -> dict:
        return {
            "points": json.dumps(self.points),
            "train_seconds": self.clock.seconds(),
            "peak_memory_mb": max(peak_memory_mb(), self.peak_memory_before),
        }

    def load_state_dict(self, state: dict) -> None:
        self.points = json.loads(state["points"])
        self.clock.seconds_before = state["train_seconds"]
        self.peak_memory_before = state["peak_memory_mb"]

    def before_train(self):
        self.clock.begin()

    def training_seconds(self) -> float:
        return self.clock.seconds()

    def after_step(self):
        iteration = self.trainer.iter + 1
        if self.period <= 0 or iteration % self.period or iteration >= self.trainer.max_iter:
            return
        seconds = self.training_seconds()
        with self.clock.paused():
            self.points.append(self.evaluate_all(iteration, seconds, with_masks=False))

    def evaluate_all(self, iteration: int, seconds: float, with_masks: bool) -> dict:
        point = {"iteration": iteration, "train_seconds": seconds, "datasets": {}}
        for dataset in self.datasets:
            output_dir = os.path.join(self.run_dir, "evals", f"iter_{iteration:06d}", dataset)
            result = evaluate(self.trainer.model, self.cfg, dataset, output_dir, with_masks)
            result["predictions"] = os.path.relpath(result["predictions"], self.run_dir)
            point["datasets"][dataset] = result
        return point


def machine_speed_probe(repeats: int = 10) -> float:
    """Seconds for a fixed convolution workload (forward and backward), about a second.

    Recorded before and after each training run: runs are timed one after another, and a
    shared machine's speed can drift between them; the probe shows by how much.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 64, 64, generator=generator, requires_grad=True)
    weight = torch.randn(64, 64, 3, 3, generator=generator, requires_grad=True)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.conv2d(x, weight, padding=1).square().mean().backward()
    return time.perf_counter() - start


def scaled_schedule_opts(cfg: CfgNode, max_iter: int) -> List[str]:
    """KEY VALUE pairs that stretch ``cfg``'s schedule to ``max_iter`` iterations.

    The LR steps stay at the same fractions of the schedule; the warm-up keeps its length
    in iterations (it is about the start, not the length).
    """
    fraction = max_iter / cfg.SOLVER.MAX_ITER
    steps = tuple(max(1, round(step * fraction)) for step in cfg.SOLVER.STEPS)
    return [
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.STEPS",
        str(steps),
        "SOLVER.WARMUP_ITERS",
        str(min(cfg.SOLVER.WARMUP_ITERS, max_iter // 2)),
    ]


def evaluation_period(max_iter: int, num_evaluations: int) -> int:
    """Iterations between learning-curve evaluations: ``num_evaluations - 1`` along the
    way and the final one at ``max_iter``. Rounded up, so that when ``max_iter`` is not a
    multiple none lands just before the final one (5635 / 6: every 940, not 939, which
    would evaluate at 5634 and again at 5635).
    """
    return max(1, math.ceil(max_iter / num_evaluations))


def _median_iteration_seconds(metrics_file: str, skip: int = 0) -> Optional[float]:
    """Median of Detectron2's logged iteration times (``metrics.json``)."""
    if not os.path.isfile(metrics_file):
        return None
    with open(metrics_file) as f:
        records = [json.loads(line) for line in f if line.strip()]
    times = [r["time"] for r in records if "time" in r and r.get("iteration", 0) >= skip]
    return statistics.median(times) if times else None


def calibrate_seconds_per_iteration(config_file: str, opts: Sequence[str], run_dir: str) -> float:
    """Mean seconds per training iteration of this model on this machine, timed as the
    comparison's clock times it (``timing.time_iterations``)."""
    seconds = timing.time_iterations(config_file, opts, os.path.join(run_dir, "calibration"))
    return statistics.fmean(seconds)


def train_and_evaluate(
    config_file: str,
    run_dir: str,
    datasets: Sequence[str],
    opts: Sequence[str] = (),
    seed: int = 0,
    num_evaluations: int = 6,
    budget_seconds: Optional[float] = None,
    name: Optional[str] = None,
    seconds_per_iteration: Optional[float] = None,
    budget_from: Optional[str] = None,
    schedule_multiple: Optional[float] = None,
    checkpoint_period: int = CHECKPOINT_PERIOD,
) -> Dict:
    """Train a model, evaluate it along the way and at the end, write ``run.json``.

    A run directory that holds a resume checkpoint of the same run (``resume``) is resumed
    from it; the checkpoints go once run.json is written (``model_final.pth`` stays).

    Args:
        config_file, opts: the model's config and KEY VALUE overrides.
        run_dir: where everything goes (also the model's OUTPUT_DIR).
        datasets: validation sets, evaluated at every point of the learning curve.
        seed: Detectron2's SEED (weights, data order, augmentation).
        num_evaluations: points on the learning curve, the final one included.
        budget_seconds: train for about this long: the schedule is stretched (see
            ``scaled_schedule_opts``) to the iterations that fit.
        seconds_per_iteration: with a budget, this model's training time per iteration on
            the comparison's clock (``timing``), which sets the iterations that fit; without
            it, ``timing.TIMED_ITERATIONS`` iterations are timed first.
        budget_from: the model whose schedule set the budget (recorded in run.json).
        schedule_multiple: for a schedule run, its length as a multiple of the comparison's
            base schedule (``opts`` already hold the stretched schedule); recorded.
        checkpoint_period: iterations between resume checkpoints (also written after each
            evaluation along the way).
    """
    os.makedirs(run_dir, exist_ok=True)
    base_opts = [
        *opts,
        "SEED",
        str(seed),
        "DATASETS.TEST",
        "()",
        "TEST.EVAL_PERIOD",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000000",
    ]
    cfg = setup_cfg(config_file, [*base_opts, "OUTPUT_DIR", run_dir])
    identity = {"config": config_file, "opts": base_opts, "budget_seconds": budget_seconds}
    recorded = resume.read_identity(run_dir)
    calibrated = None
    if budget_seconds is not None:
        calibrated = seconds_per_iteration
        if recorded and recorded.get("budget_seconds") == budget_seconds:
            calibrated = recorded["calibrated_s_per_iter"]  # resumed: the same iterations
        if calibrated is None:
            seed_all_rng(seed)
            calibrated = calibrate_seconds_per_iteration(config_file, base_opts, run_dir)
        max_iter = max(MIN_BUDGET_ITERS, int(budget_seconds / calibrated))
        schedule_opts = scaled_schedule_opts(cfg, max_iter)
        cfg = setup_cfg(config_file, [*base_opts, *schedule_opts, "OUTPUT_DIR", run_dir])
    identity.update(max_iter=cfg.SOLVER.MAX_ITER, calibrated_s_per_iter=calibrated)
    resumable = resume.check_identity(run_dir, identity)
    eval_period = evaluation_period(cfg.SOLVER.MAX_ITER, num_evaluations)

    probe_before = machine_speed_probe()
    seed_all_rng(seed)
    trainer = Trainer(cfg)
    clock = resume.TrainingClock()
    curve = LearningCurveHook(cfg, datasets, eval_period, run_dir, clock)
    checkpoints = resume.ResumeCheckpointer(checkpoint_period, eval_period, clock)
    trainer.register_hooks([curve, checkpoints])
    trainer.resume_or_load(resume=resumable)
    if trainer.start_iter:
        logger.info(f"Resuming {run_dir} at iteration {trainer.start_iter}")
    trainer.train()
    train_seconds = curve.training_seconds()
    probe_after = machine_speed_probe()
    with_masks = bool(cfg.MODEL.MASK_ON)
    final = curve.evaluate_all(cfg.SOLVER.MAX_ITER, train_seconds, with_masks)
    curve.points.append(final)
    proposals = {}
    if getattr(trainer.model, "proposal_generator", None) is not None:  # an R-CNN
        proposals = {d: evaluate_proposals(trainer.model, cfg, d) for d in datasets}

    run = {
        "name": name or Path(config_file).stem,
        "config": config_file,
        "opts": list(opts),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "seed": seed,
        "schedule": "time budget" if budget_seconds is not None else "iterations",
        "schedule_multiple": None if budget_seconds is not None else (schedule_multiple or 1),
        "budget_seconds": budget_seconds,
        "budget_from": budget_from,
        "calibrated_s_per_iter": calibrated,
        "calibration": None
        if budget_seconds is None
        else (
            "given (the comparison's timing)"
            if seconds_per_iteration
            else f"{timing.TIMED_ITERATIONS} timed iterations"
        ),
        "max_iter": cfg.SOLVER.MAX_ITER,
        "train_seconds": train_seconds,
        "train_s_per_iter": _median_iteration_seconds(os.path.join(run_dir, "metrics.json")),
        "infer_s_per_image": {d: r["infer_s_per_image"] for d, r in final["datasets"].items()},
        "peak_memory_mb": max(peak_memory_mb(), curve.peak_memory_before),
        "speed_probe_seconds": {"before": probe_before, "after": probe_after},
        "resumed_at": checkpoints.resumed_at,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "device": cfg.MODEL.DEVICE,
        "ground_truth": {d: MetadataCatalog.get(d).json_file for d in datasets},
        "curve": curve.points,
    }
    if proposals:  # an R-CNN: which proposals, and how good they were
        run["proposal_generator"] = cfg.MODEL.PROPOSAL_GENERATOR.NAME
        run["proposals"] = proposals
    with open(os.path.join(run_dir, RUN_FILE), "w") as f:
        json.dump(run, f, indent=1)
    resume.remove_resume_checkpoints(run_dir)
    return run

"""Inference time per image of trained models, timed back-to-back on the same images.

A run's own ``infer_s_per_image`` is timed during its final evaluation, on whatever
machine and in whatever session trained it: runs of different sessions do not compare.
Here every model's final weights run on the same images in one process, with the same
threads, warm (the first ``WARMUP_IMAGES`` run once untimed before each timed pass), the
inputs loaded beforehand so that only the model is timed, and the models in turn, the
order reversed each round.
"""

import json
import os
import statistics
import time
from typing import Dict, List, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..config import setup_cfg
from ..engine import Trainer
from .runner import RUN_FILE

TIMING_FILE = "inference_timing.json"
WARMUP_IMAGES = 5


def _load(run_dir: str):
    """The run's config and its model with ``model_final.pth`` loaded, in eval mode."""
    with open(os.path.join(run_dir, RUN_FILE)) as f:
        run = json.load(f)
    weights = os.path.join(run_dir, "model_final.pth")
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{weights}: no final weights to time (trained in another session?)"
        )
    cfg = setup_cfg(run["config"], [*run["opts"], "MODEL.WEIGHTS", weights])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return run, cfg, model.eval()


@torch.no_grad()
def _seconds_per_image(model, inputs: Sequence[list]) -> List[float]:
    seconds = []
    for batch in inputs:
        start = time.perf_counter()
        model(batch)
        seconds.append((time.perf_counter() - start) / len(batch))
    return seconds


def time_inference(run_dirs: Sequence[str], dataset: str, num_images: int, rounds: int = 2) -> Dict:
    """Seconds per image of each run's final model on the first ``num_images`` of ``dataset``.

    Returns:
        {"dataset", "images", "threads", "rounds", "models": {run name: {"median_s",
        "mean_s", "run", "name", "schedule_multiple"}}}, the median over every timed image
        of every round.
    """
    loaded = [_load(d) for d in run_dirs]
    # One loader (the first model's test mapper: the same input size for every model here).
    loader = Trainer.build_test_loader(loaded[0][1], dataset)
    inputs = []
    for batch in loader:
        inputs.append(batch)
        if len(inputs) >= num_images:
            break
    times: Dict[str, List[float]] = {os.path.basename(d): [] for d in run_dirs}
    order = list(zip(run_dirs, loaded))
    for round_index in range(rounds):
        for run_dir, (_, _, model) in order if round_index % 2 == 0 else order[::-1]:
            _seconds_per_image(model, inputs[:WARMUP_IMAGES])  # untimed: warm caches, threads
            times[os.path.basename(run_dir)] += _seconds_per_image(model, inputs)
    return {
        "dataset": dataset,
        "images": len(inputs),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "models": {
            os.path.basename(d): {
                "name": run["name"],
                "schedule_multiple": run.get("schedule_multiple") or 1,
                "median_s": statistics.median(times[os.path.basename(d)]),
                "mean_s": statistics.fmean(times[os.path.basename(d)]),
            }
            for d, (run, _, _) in zip(run_dirs, loaded)
        },
    }

"""The whole-model phases: a training step and an inference, timed, with mixed precision.

A training step is forward (autocast under ``--amp``), sum of losses, backward, SGD step
and zero_grad; an inference runs under ``torch.no_grad()``.
"""

import math
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from .contenders import Contender
from .inputs import Sample
from .measurement import Measurement, measure

# Zero: the step does all its work, but the weights stay as initialised, so every
# repetition computes the same thing and randomly initialised models cannot diverge.
LEARNING_RATE = 0.0

# --amp, for training only, as SOLVER.AMP.ENABLED: Detectron2's AMPTrainer autocasts to
# float16 on CUDA with a GradScaler. CPU float16 convolution backward has no fast kernel
# (minutes per step), so on the CPU --amp means bfloat16 autocast, without a scaler.
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}


def amp_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The mixed-precision context of ``--amp`` (a no-op when not enabled)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[device.type], enabled=enabled)


def amp_description(device_type: str) -> str:
    """What ``--amp`` does on this device, for the report."""
    if device_type.startswith("cuda"):
        return "training in float16 autocast with a GradScaler (as SOLVER.AMP.ENABLED)"
    return "training in bfloat16 autocast (CPU: no fast float16 backward)"


def make_scaler(device: torch.device, amp: bool) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for float16 training, as Detectron2's AMPTrainer uses; else None."""
    return torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD over the trainable parameters, learning rate :data:`LEARNING_RATE`."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4)


def backward_and_step(
    total: Tensor, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler]
) -> bool:
    """Backward of the scalar ``total``, SGD step (through the scaler if any), zero_grad.

    Returns:
        False if the scaler skipped the SGD step (non-finite gradients), else True.
    """
    stepped = True
    if scaler is None:
        total.backward()
        optimizer.step()
    else:
        scale = scaler.get_scale()
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale  # the scale backs off only on a skipped step
    optimizer.zero_grad(set_to_none=True)
    return stepped


def training_step(
    model: nn.Module,
    inputs: tuple,
    optimizer: torch.optim.Optimizer,
    amp: bool = False,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> Tuple[Dict[str, float], bool]:
    """Forward (autocast if ``amp``), sum of losses, backward, SGD step, zero_grad.

    Returns:
        The losses, as floats, and whether the SGD step was taken (see
        :func:`backward_and_step`).
    """
    with amp_autocast(next(model.parameters()).device, amp):
        losses = model(*inputs)
        total = sum(losses.values())
    stepped = backward_and_step(total, optimizer, scaler)
    return {name: value.item() for name, value in losses.items()}, stepped


def measure_training(
    contender: Contender,
    samples: Sequence[Sample],
    device: torch.device,
    warmup: int,
    reps: int,
    amp: bool = False,
) -> Tuple[Measurement, Dict[str, float], int]:
    """Seconds per training iteration over the batch, the losses of the last one, and how
    many of the steps (warm-up included) a float16 gradient scaler skipped."""
    model = contender.model.train()
    inputs = contender.to_inputs(samples, True)
    optimizer = make_optimizer(model)
    scaler = make_scaler(device, amp)
    last_losses: Dict[str, float] = {}
    skipped_steps = 0

    def step() -> None:
        nonlocal skipped_steps
        losses, stepped = training_step(model, inputs, optimizer, amp, scaler)
        last_losses.update(losses)
        skipped_steps += not stepped

    with EventStorage():  # Detectron2's models log training scalars to it
        result = measure(step, device, warmup, reps, items_per_call=len(samples))
    return result, last_losses, skipped_steps


def measure_inference(
    contender: Contender, samples: Sequence[Sample], device: torch.device, warmup: int, reps: int
) -> Tuple[Measurement, float]:
    """Seconds per inference call over the batch, and the detections per image."""
    model = contender.model.eval()
    inputs = contender.to_inputs(samples, False)
    detections: List[int] = []

    def step() -> None:
        with torch.no_grad():
            outputs = model(*inputs)
        detections[:] = [count_detections(output) for output in outputs]

    result = measure(step, device, warmup, reps, items_per_call=len(samples))
    return result, statistics.mean(detections)


def losses_finite(losses: Dict[str, float]) -> bool:
    """True if there are losses and every one is finite."""
    return bool(losses) and all(math.isfinite(v) for v in losses.values())


def count_detections(output: dict) -> int:
    """Detections of one image, in Detectron2's ({"instances"}) or torchvision's format."""
    return len(output["instances"]) if "instances" in output else len(output["boxes"])

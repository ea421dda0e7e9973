#!/usr/bin/env python
"""Speed, memory, size and FLOPs of fcos_d2 next to Detectron2's FCOS, torchvision's FCOS
and Detectron2's Mask R-CNN, measured in one process on the same inputs.

    python tools/benchmark.py                                    # all four, 800x1333, CUDA if any
    python tools/benchmark.py --device cpu --height 512 --width 640 --reps 3 --warmup 1
    python tools/benchmark.py --models fcos_d2 d2_fcos --config-file configs/FCOS_R_101_2x.yaml
    python tools/benchmark.py --opts MODEL.FCOS.NORM none MODEL.FCOS.NUM_CLS_CONVS 2

Every model is randomly initialised (no weights are loaded) and sees the same random
images and ground-truth boxes (fixed seed). For each model it reports the training step
(forward, sum of losses, backward, SGD step, zero_grad) in s/iter, inference in s/image,
the peak memory of each phase, the parameter count and the FLOPs of one inference
(fvcore's count: one multiply-add is one FLOP). For fcos_d2 it also times the pieces of a
training step and of an inference separately, and the target assignment alone for a
growing number of boxes. A table goes to stdout and every raw number to ``--output``.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each phase); on the
CPU the largest increase of the process's resident set size over the phase, sampled from
``/proc/self/statm`` by a background thread, so short peaks between samples can be missed.
"""

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import detectron2  # noqa: E402
import fvcore  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg, instantiate  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances, PolygonMasks  # noqa: E402
from detectron2.utils.analysis import FlopCountAnalysis  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from tabulate import tabulate  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torchvision.models.detection import fcos_resnet50_fpn  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from fcos_d2.config import setup_cfg  # noqa: E402
from fcos_d2.modeling.targets import assign_targets  # noqa: E402

MODELS = ("fcos_d2", "d2_fcos", "tv_fcos", "d2_mask_rcnn")
DEFAULT_CONFIG = "configs/FCOS_R_50_1x.yaml"
D2_FCOS_CONFIG = "COCO-Detection/fcos_R_50_FPN_1x.py"
D2_MASK_RCNN_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
NUM_CLASSES = 80
# Zero: the step does all its work, but the weights stay as initialised, so every
# repetition computes the same thing and randomly initialised models cannot diverge.
LEARNING_RATE = 0.0
MB = 2.0**20


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Repeated timings of one phase and the memory it needed.

    ``peak_mb`` is what the header of this file calls peak memory (CUDA: the largest
    allocation total; CPU: the largest RSS increase). ``extra_mb`` is, on both devices,
    the peak above what was in use when the phase began.
    """

    seconds: List[float]
    peak_mb: Optional[float] = None
    extra_mb: Optional[float] = None
    items_per_call: int = 1  # images per call, to turn s/call into s/image

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def minimum(self) -> float:
        return min(self.seconds)

    @property
    def maximum(self) -> float:
        return max(self.seconds)

    def per_item(self) -> "Measurement":
        """The same measurement in seconds per item."""
        return Measurement(
            [s / self.items_per_call for s in self.seconds], self.peak_mb, self.extra_mb, 1
        )

    def to_json(self) -> dict:
        return {
            "seconds": self.seconds,
            "median_s": self.median,
            "min_s": self.minimum,
            "max_s": self.maximum,
            "items_per_call": self.items_per_call,
            "peak_mb": self.peak_mb,
            "extra_mb": self.extra_mb,
        }


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_rss_bytes() -> Optional[int]:
    """Resident set size of this process from /proc/self/statm; None where it is absent."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except OSError:
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def release_free_memory(device: torch.device) -> None:
    """Give freed memory back before a phase, so that its peak is not hidden by reuse.

    On the CPU, glibc keeps freed heap memory in the process; ``malloc_trim`` returns it,
    otherwise a phase reusing a previous phase's freed memory would not grow the RSS.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the RSS peaks may read low


class _RssSampler(threading.Thread):
    """Records the largest RSS seen while running, every ``interval_s`` seconds."""

    def __init__(self, interval_s: float):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = read_rss_bytes() or 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, read_rss_bytes() or 0)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, read_rss_bytes() or 0)


class PeakMemory:
    """Context manager measuring the peak memory of the code it wraps.

    After the block, ``peak_mb`` and ``extra_mb`` are as in :class:`Measurement`
    (None on a CPU without /proc).
    """

    def __init__(self, device: torch.device, sample_interval_s: float = 0.002):
        self.device = device
        self.sample_interval_s = sample_interval_s
        self.peak_mb: Optional[float] = None
        self.extra_mb: Optional[float] = None

    def __enter__(self) -> "PeakMemory":
        release_free_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = read_rss_bytes()
            self._sampler = _RssSampler(self.sample_interval_s)
            self._sampler.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mb = peak / MB
            self.extra_mb = (peak - self._start) / MB
            return
        peak = self._sampler.stop()
        if self._start is not None:
            self.extra_mb = self.peak_mb = max(0, peak - self._start) / MB


def measure(
    step: Callable[[], object],
    device: torch.device,
    warmup: int,
    reps: int,
    items_per_call: int = 1,
) -> Measurement:
    """Time ``reps`` calls of ``step`` after ``warmup`` untimed ones; memory over all of them."""
    seconds = []
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            step()
        for _ in range(reps):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    return Measurement(seconds, memory.peak_mb, memory.extra_mb, items_per_call)


class StageClock:
    """Collects the wall time of named stages over several runs: ``with clock("head"): ...``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.recording = True
        self.seconds: Dict[str, List[float]] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        if self.recording:
            self.seconds.setdefault(stage, []).append(time.perf_counter() - start)

    def measurements(self) -> Dict[str, Measurement]:
        return {stage: Measurement(times) for stage, times in self.seconds.items()}


# ---------------------------------------------------------------------------------------
# Inputs: one set of random images and boxes, converted to each model's format
# ---------------------------------------------------------------------------------------


class Sample(NamedTuple):
    """One image and its ground truth, model-independent."""

    image: Tensor  # (3, H, W) float32 in [0, 255]
    boxes: Tensor  # (M, 4) x0, y0, x1, y1 in pixels
    classes: Tensor  # (M,) int64 in [0, 80)


def random_boxes(generator: torch.Generator, num_boxes: int, height: int, width: int) -> Tensor:
    """(M, 4) boxes inside the image, sides log-uniform from small to most of the image."""
    short_side = min(height, width)
    low, high = min(16.0, short_side / 4), 0.8 * short_side
    log_sides = torch.empty(num_boxes, 2).uniform_(
        float(torch.tensor(low).log()), float(torch.tensor(high).log()), generator=generator
    )
    sides = log_sides.exp()  # (M, 2) w, h
    x0 = torch.rand(num_boxes, generator=generator) * (width - sides[:, 0])
    y0 = torch.rand(num_boxes, generator=generator) * (height - sides[:, 1])
    return torch.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], dim=1)


def make_samples(
    generator: torch.Generator, num_images: int, height: int, width: int, num_boxes: int
) -> List[Sample]:
    """Random 0-255 images with ``num_boxes`` random boxes of random classes each."""
    samples = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        boxes = random_boxes(generator, num_boxes, height, width)
        classes = torch.randint(0, NUM_CLASSES, (num_boxes,), generator=generator)
        samples.append(Sample(image, boxes, classes))
    return samples


def rectangle_masks(boxes: Tensor) -> PolygonMasks:
    """One rectangular polygon per box, for Mask R-CNN's mask loss."""
    return PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()])


def to_detectron2(
    samples: Sequence[Sample],
    device: torch.device,
    with_masks: bool,
    num_classes: int = NUM_CLASSES,
) -> tuple:
    """Arguments of a Detectron2 model: ([{"image", "height", "width", "instances"}],).

    Class ids are taken modulo ``num_classes`` for a model with fewer than 80 classes.
    """
    inputs = []
    for sample in samples:
        height, width = sample.image.shape[1:]
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(sample.boxes.to(device))
        instances.gt_classes = (sample.classes % num_classes).to(device)
        if with_masks:
            instances.gt_masks = rectangle_masks(sample.boxes)
        inputs.append(
            {
                "image": sample.image.to(device),
                "height": height,
                "width": width,
                "instances": instances,
            }
        )
    return (inputs,)


def to_torchvision(samples: Sequence[Sample], device: torch.device, with_targets: bool) -> tuple:
    """Arguments of a torchvision detector: (images in [0, 1], targets) or (images,)."""
    images = [(sample.image / 255.0).to(device) for sample in samples]
    if not with_targets:
        return (images,)
    targets = [
        {"boxes": sample.boxes.to(device), "labels": (sample.classes + 1).to(device)}
        for sample in samples
    ]
    return (images, targets)


# ---------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------


class Contender(NamedTuple):
    """A model and how to feed it: ``to_inputs(samples, training)`` gives its arguments."""

    name: str
    model: nn.Module
    to_inputs: Callable[[Sequence[Sample], bool], tuple]
    description: str
    notes: List[str]


def build_fcos_d2(args: argparse.Namespace, device: torch.device) -> Contender:
    """Our FCOS from ``--config-file`` and ``--opts``, randomly initialised."""
    # 80 classes like the other models unless --opts says otherwise.
    opts = ["MODEL.FCOS.NUM_CLASSES", str(NUM_CLASSES), *args.opts]
    opts += [
        "MODEL.DEVICE",
        device.type,
        "MODEL.WEIGHTS",
        "",
        "MODEL.FCOS.SCORE_THRESH_TEST",
        str(args.score_thresh),
    ]
    cfg = setup_cfg(args.config_file, opts)
    num_classes = cfg.MODEL.FCOS.NUM_CLASSES
    notes = []
    if num_classes != NUM_CLASSES:
        notes.append(f"fcos_d2: {num_classes} classes; ground-truth class ids taken modulo that")
    return Contender(
        "fcos_d2",
        build_model(cfg),
        lambda samples, training: to_detectron2(samples, device, False, num_classes),
        f"fcos_d2 {args.config_file} {' '.join(args.opts)}".strip(),
        notes,
    )


def build_d2_fcos(args: argparse.Namespace, device: torch.device) -> Contender:
    """Detectron2's own FCOS R-50 (LazyConfig), randomly initialised."""
    cfg = model_zoo.get_config(D2_FCOS_CONFIG)
    cfg.model.test_score_thresh = args.score_thresh
    return Contender(
        "d2_fcos",
        instantiate(cfg.model).to(device),
        lambda samples, training: to_detectron2(samples, device, with_masks=False),
        f"detectron2 model_zoo {D2_FCOS_CONFIG}",
        [],
    )


def freeze_like_detectron2(model: nn.Module) -> None:
    """FrozenBN everywhere in the ResNet and stem + res2 frozen, as Detectron2's R-50.

    torchvision's ``fcos_resnet50_fpn`` trains every layer with BatchNorm when it gets
    no pretrained weights; with them it uses FrozenBatchNorm2d and trains the last three
    stages, which is also what Detectron2 (FREEZE_AT 2, FrozenBN) and fcos_d2 do.
    """
    body = model.backbone.body
    for module in list(body.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                setattr(module, child_name, frozen.to(child.weight.device))
    for name, parameter in body.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            parameter.requires_grad_(False)


def build_tv_fcos(args: argparse.Namespace, device: torch.device) -> Contender:
    """torchvision's FCOS R-50, randomly initialised, not resizing the benchmark images."""
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None)
    freeze_like_detectron2(model)
    # GeneralizedRCNNTransform scales by min(min_size / short side, max_size / long side).
    model.transform.min_size = (min(args.height, args.width),)
    model.transform.max_size = max(args.height, args.width)
    model.score_thresh = args.score_thresh
    return Contender(
        "tv_fcos",
        model.to(device),
        lambda samples, training: to_torchvision(samples, device, with_targets=training),
        "torchvision fcos_resnet50_fpn(weights=None, weights_backbone=None)",
        [
            "tv_fcos: BatchNorm replaced by FrozenBatchNorm2d and stem + layer1 frozen, as "
            "torchvision does with pretrained weights and as Detectron2 does (FREEZE_AT 2)",
            "tv_fcos: its transform still calls interpolate at scale 1.0 (no size change)",
        ],
    )


def build_d2_mask_rcnn(args: argparse.Namespace, device: torch.device) -> Contender:
    """Detectron2's Mask R-CNN R-50-FPN 1x (YAML), randomly initialised."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(D2_MASK_RCNN_CONFIG))
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            device.type,
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            str(args.score_thresh),
        ]
    )
    return Contender(
        "d2_mask_rcnn",
        build_model(cfg),
        lambda samples, training: to_detectron2(samples, device, with_masks=training),
        f"detectron2 model_zoo {D2_MASK_RCNN_CONFIG}",
        ["d2_mask_rcnn: gt_masks are the boxes' rectangles"],
    )


BUILDERS: Dict[str, Callable[[argparse.Namespace, torch.device], Contender]] = {
    "fcos_d2": build_fcos_d2,
    "d2_fcos": build_d2_fcos,
    "tv_fcos": build_tv_fcos,
    "d2_mask_rcnn": build_d2_mask_rcnn,
}


# ---------------------------------------------------------------------------------------
# Whole-model phases
# ---------------------------------------------------------------------------------------


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
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4)


def backward_and_step(
    total: Tensor, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler]
) -> bool:
    """Backward, SGD step (through the scaler if any), zero_grad.

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


def count_parameters(model: nn.Module) -> Dict[str, int]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def count_flops(model: nn.Module, inputs: tuple) -> Tuple[Optional[int], Optional[str]]:
    """FLOPs of one inference (fvcore: a multiply-add is one FLOP), or None and why not.

    Ops fvcore has no formula for (element-wise ops, NMS, ...) count as zero; their names
    are returned in the note.
    """
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = int(analysis.total())
            skipped = sorted(analysis.unsupported_ops())
    except Exception as error:  # noqa: BLE001  any tracing failure: report, do not crash
        return None, f"FLOP count failed: {type(error).__name__}: {str(error)[:300]}"
    finally:
        model.train(was_training)
    return total, (f"not counted: {', '.join(skipped)}" if skipped else None)


# ---------------------------------------------------------------------------------------
# fcos_d2 in pieces
# ---------------------------------------------------------------------------------------


def staged_training_step(
    model: nn.Module,
    inputs: List[dict],
    optimizer: torch.optim.Optimizer,
    clock: StageClock,
    amp: bool = False,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> None:
    """One training step of fcos_d2 with each piece timed.

    The pieces ``DenseDetector.forward`` and ``FCOS.forward_training`` are made of,
    called one by one.
    """
    with amp_autocast(model.device, amp):
        total = _staged_training_forward(model, inputs, clock)
    with clock("backward+SGD"):
        backward_and_step(total, optimizer, scaler)


def _staged_training_forward(model: nn.Module, inputs: List[dict], clock: StageClock) -> Tensor:
    """The forward half of :func:`staged_training_step`; returns the summed loss."""
    with clock("preprocess"):
        images = model.preprocess_image(inputs)
        gt_instances = [x["instances"].to(model.device) for x in inputs]
    features, predictions = _staged_backbone_and_head(model, images, clock)
    with clock("flatten"):
        logits, box_dists, centerness = model.concat_predictions(predictions)
    with clock("target assignment"):
        labels, box_targets = model.label_locations(features, gt_instances)
    with clock("losses"):
        losses = model.losses(logits, box_dists, centerness, labels, box_targets)
        return sum(losses.values())


def _staged_backbone_and_head(
    model: nn.Module, images: ImageList, clock: StageClock
) -> Tuple[List[Tensor], Tuple[List[Tensor], List[Tensor], List[Tensor]]]:
    """The head's input features and its predictions, the two stages timed."""
    with clock("backbone+FPN"):
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
    with clock("head"):
        predictions = model.head(features)
    return features, predictions


@torch.no_grad()
def staged_inference(model: nn.Module, inputs: List[dict], clock: StageClock) -> None:
    """One inference of fcos_d2 with each piece timed, as ``DenseDetector.forward`` does it."""
    with clock("preprocess"):
        images = model.preprocess_image(inputs)
    features, predictions = _staged_backbone_and_head(model, images, clock)
    with clock("decoding+NMS"):
        results = model.forward_inference(images, features, predictions)
    with clock("postprocess"):
        for result, x, size in zip(results, inputs, images.image_sizes):
            detector_postprocess(result, x.get("height", size[0]), x.get("width", size[1]))


def run_stages(
    step: Callable[[], None], clock: StageClock, warmup: int, reps: int
) -> Dict[str, Measurement]:
    """Per-stage timings of ``reps`` runs of ``step`` after ``warmup`` unrecorded ones."""
    clock.recording = False
    for _ in range(warmup):
        step()
    clock.recording = True
    for _ in range(reps):
        step()
    return clock.measurements()


def measure_breakdown(
    contender: Contender,
    train_samples: Sequence[Sample],
    infer_samples: Sequence[Sample],
    device: torch.device,
    warmup: int,
    reps: int,
    amp: bool = False,
) -> Dict[str, Dict[str, Measurement]]:
    """fcos_d2's training step and inference, stage by stage."""
    model = contender.model
    (train_inputs,) = contender.to_inputs(train_samples, True)
    (infer_inputs,) = contender.to_inputs(infer_samples, False)

    model.train()
    optimizer = make_optimizer(model)
    scaler = make_scaler(device, amp)
    train_clock = StageClock(device)
    with EventStorage():
        training = run_stages(
            lambda: staged_training_step(model, train_inputs, optimizer, train_clock, amp, scaler),
            train_clock,
            warmup,
            reps,
        )
    model.eval()
    infer_clock = StageClock(device)
    inference = run_stages(
        lambda: staged_inference(model, infer_inputs, infer_clock), infer_clock, warmup, reps
    )
    return {"training": training, "inference": inference}


@torch.no_grad()
def measure_assignment_scaling(
    contender: Contender,
    image: Tensor,
    box_counts: Sequence[int],
    generator: torch.Generator,
    device: torch.device,
    warmup: int,
    reps: int,
) -> Dict[int, Measurement]:
    """Time and extra memory of ``assign_targets`` on one image, for each number of boxes."""
    model = contender.model.eval()
    (inputs,) = to_detectron2(
        [Sample(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))],
        device,
        with_masks=False,
    )
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    grid = model.location_grid([features[f] for f in model.head_in_features])
    height, width = image.shape[1:]
    results = {}
    for num_boxes in box_counts:
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(random_boxes(generator, num_boxes, height, width).to(device))
        classes = torch.randint(0, model.num_classes, (num_boxes,), generator=generator)
        instances.gt_classes = classes.to(device)
        results[num_boxes] = measure(
            lambda: assign_targets(
                grid,
                [instances],
                model.num_classes,
                model.center_sampling_radius,
                normalize_by_stride=model.norm_reg_targets,
            ),
            device,
            warmup,
            reps,
        )
    return results


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def benchmark_model(
    name: str,
    args: argparse.Namespace,
    device: torch.device,
    train_samples: Sequence[Sample],
    infer_samples: Sequence[Sample],
) -> Tuple[dict, Optional[Contender]]:
    """Every whole-model number of one model; the contender is returned for fcos_d2's extras."""
    torch.manual_seed(args.seed)  # the same random init on every run
    contender = BUILDERS[name](args, device)
    print(f"[benchmark] {name}: inference ...", flush=True)
    inference, detections = measure_inference(
        contender, infer_samples, device, args.warmup, args.reps
    )
    print(f"[benchmark] {name}: training ...", flush=True)
    training, losses, skipped_steps = measure_training(
        contender, train_samples, device, args.warmup, args.reps, args.amp
    )
    print(f"[benchmark] {name}: FLOPs ...", flush=True)
    flops, flop_note = count_flops(contender.model, contender.to_inputs(infer_samples[:1], False))
    notes = list(contender.notes) + ([f"{name}: {flop_note}"] if flop_note else [])
    if skipped_steps:
        notes.append(
            f"{name}: the gradient scaler skipped {skipped_steps} of {args.warmup + args.reps} "
            "training steps (non-finite float16 gradients; a skipped step makes no SGD update)"
        )
    result = {
        "description": contender.description,
        "parameters": count_parameters(contender.model),
        "flops": flops,
        "flops_input": [1, 3, args.height, args.width],
        "train": training.to_json(),
        "train_losses_last": losses,
        "train_losses_finite": losses_finite(losses),
        "train_steps_skipped_by_grad_scaler": skipped_steps,
        "infer": inference.to_json(),
        "infer_per_image": inference.per_item().to_json(),
        "detections_per_image": detections,
        "notes": notes,
    }
    return result, contender


def fcos_d2_extras(
    contender: Contender,
    args: argparse.Namespace,
    device: torch.device,
    train_samples: Sequence[Sample],
    infer_samples: Sequence[Sample],
) -> dict:
    """fcos_d2's stage breakdown and the target-assignment scaling."""
    print("[benchmark] fcos_d2: stage breakdown ...", flush=True)
    breakdown = measure_breakdown(
        contender, train_samples, infer_samples, device, args.warmup, args.reps, args.amp
    )
    print("[benchmark] fcos_d2: target assignment scaling ...", flush=True)
    generator = torch.Generator().manual_seed(args.seed + 1)
    scaling = measure_assignment_scaling(
        contender,
        infer_samples[0].image,
        args.assign_boxes,
        generator,
        device,
        args.warmup,
        args.reps,
    )
    return {
        "breakdown": {
            phase: {stage: m.to_json() for stage, m in stages.items()}
            for phase, stages in breakdown.items()
        },
        "assignment_scaling": {str(n): m.to_json() for n, m in scaling.items()},
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Versions, the device, and how busy the machine was when the run began."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "fvcore": getattr(fvcore, "__version__", "unknown"),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_measure": (
            "torch.cuda.max_memory_allocated, reset before each phase"
            if device.type == "cuda"
            else "peak increase of the process RSS over the phase, "
            "/proc/self/statm sampled every 2 ms"
        ),
    }


def run_benchmark(args: argparse.Namespace, command: str) -> dict:
    """Benchmark the selected models; returns the JSON-ready results."""
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    size = (args.height, args.width)
    train_samples = make_samples(generator, args.train_batch, *size, args.num_boxes)
    infer_samples = make_samples(generator, args.infer_batch, *size, args.num_boxes)
    results = {
        "command": command,
        "settings": {k: v for k, v in vars(args).items()},
        "environment": environment(device),
        "models": {},
        "notes": [
            "every model randomly initialised; the same images and boxes for all (fixed seed)",
            f"training: SGD lr {LEARNING_RATE} momentum 0.9 weight decay 1e-4 (lr 0: the step "
            "does all its work but the random weights stay put, so no model can diverge); "
            "inference under torch.no_grad()",
            "FLOPs: fvcore counts of one inference on one image; a multiply-add is one FLOP",
        ],
    }
    if device.type == "cpu":
        results["notes"].append(
            "CPU memory is the RSS increase of the process: it depends on the allocator and "
            "on what earlier phases left mapped, so it changes with the order of --models"
        )
    if args.warmup < 2:
        results["notes"].append(
            "Detectron2 runs some TorchScript functions whose first two calls are slower "
            "(profiling); with --warmup below 2 the first timed repetitions include that"
        )
    for name in args.models:
        model_result, contender = benchmark_model(name, args, device, train_samples, infer_samples)
        if name == "fcos_d2":
            extras = fcos_d2_extras(contender, args, device, train_samples, infer_samples)
            model_result.update(extras)
        results["models"][name] = model_result
        results["notes"] += model_result["notes"]
        del contender
        release_free_memory(device)
    return results


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def spread(summary: dict, digits: int = 3) -> str:
    """'median [min, max]' of a Measurement's JSON."""
    median, low, high = summary["median_s"], summary["min_s"], summary["max_s"]
    return f"{median:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def ratio(models: dict, name: str, reference: str, key: str) -> str:
    """Median of ``name`` over median of ``reference`` for one measurement, or '-'."""
    if reference not in models:
        return "-"
    return f"{models[name][key]['median_s'] / models[reference][key]['median_s']:.2f}"


def megabytes(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def models_table(results: dict) -> str:
    models = results["models"]
    rows = []
    for name, model in models.items():
        rows.append(
            [
                name,
                "{total:.1f} ({trainable:.1f})".format(
                    **{k: v / 1e6 for k, v in model["parameters"].items()}
                ),
                "-" if model["flops"] is None else f"{model['flops'] / 1e9:.1f}",
                spread(model["train"]),
                ratio(models, name, "d2_fcos", "train"),
                ratio(models, name, "d2_mask_rcnn", "train"),
                "yes" if model["train_losses_finite"] else "NO",
                megabytes(model["train"]["peak_mb"]),
                spread(model["infer_per_image"]),
                ratio(models, name, "d2_fcos", "infer_per_image"),
                ratio(models, name, "tv_fcos", "infer_per_image"),
                megabytes(model["infer"]["peak_mb"]),
            ]
        )
    headers = [
        "model",
        "params M (trainable)",
        "GFLOPs",
        "train s/iter [min, max]",
        "train vs d2_fcos",
        "train vs d2_mask_rcnn",
        "losses finite",
        "train peak MB",
        "infer s/img [min, max]",
        "infer vs d2_fcos",
        "infer vs tv_fcos",
        "infer peak MB",
    ]
    return tabulate(rows, headers=headers, tablefmt="github")


def breakdown_table(fcos: dict) -> str:
    """fcos_d2's stages, each in seconds and as a % of the full training step / inference."""
    breakdown = fcos["breakdown"]
    full = {"training": fcos["train"]["median_s"], "inference": fcos["infer"]["median_s"]}
    stages = list(dict.fromkeys([*breakdown["training"], *breakdown["inference"]]))
    rows = []
    for stage in stages + ["sum of stages"]:
        row = [stage]
        for phase in ("training", "inference"):
            if stage == "sum of stages":
                seconds = sum(m["median_s"] for m in breakdown[phase].values())
            elif stage in breakdown[phase]:
                seconds = breakdown[phase][stage]["median_s"]
            else:
                row += ["-", "-"]
                continue
            row += [f"{seconds:.4f}", f"{100 * seconds / full[phase]:.1f}"]
        rows.append(row)
    rows.append(
        [
            "full (measured alone)",
            f"{full['training']:.4f}",
            "100.0",
            f"{full['inference']:.4f}",
            "100.0",
        ]
    )
    headers = ["fcos_d2 stage", "train s", "% of step", "infer s", "% of inference"]
    return tabulate(rows, headers=headers, tablefmt="github")


def scaling_table(fcos: dict) -> str:
    """assign_targets time and extra memory against the number of boxes."""
    scaling = fcos["assignment_scaling"]
    first = next(iter(scaling.values()))["median_s"]
    rows = [
        [count, spread(m, 4), f"{m['median_s'] / first:.1f}", megabytes(m["extra_mb"])]
        for count, m in scaling.items()
    ]
    headers = ["boxes / image", "assign_targets s [min, max]", "x time of first", "extra MB"]
    return tabulate(rows, headers=headers, tablefmt="github")


def format_report(results: dict) -> str:
    env = results["environment"]
    settings = results["settings"]
    lines = [
        f"{env['device_name']} ({env['device']}, {env['torch_threads']} threads, load average "
        f"at start {env['load_average_at_start']}), torch {env['torch']}, "
        f"detectron2 {env['detectron2']}",
        f"images {settings['height']}x{settings['width']}, train batch {settings['train_batch']}, "
        f"infer batch {settings['infer_batch']}, {settings['num_boxes']} boxes/image, "
        f"score thresh {settings['score_thresh']}, warmup {settings['warmup']}, "
        f"reps {settings['reps']} (times: median [min, max])",
        "--amp: " + amp_description(env["device"]) if settings["amp"] else "float32 throughout",
        "",
        models_table(results),
    ]
    fcos = results["models"].get("fcos_d2")
    if fcos is not None:
        lines += ["", breakdown_table(fcos), "", scaling_table(fcos)]
    lines += ["", "Notes:"] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="fcos_d2's config")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--train-batch", type=int, default=2, help="images per training step")
    parser.add_argument("--infer-batch", type=int, default=1, help="images per inference call")
    parser.add_argument("--num-boxes", type=int, default=10, help="ground-truth boxes per image")
    parser.add_argument(
        "--assign-boxes",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="boxes per image for the target-assignment scaling",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.0,
        help="every model's test score threshold (0: post-processing does its full work)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="train every model in mixed precision: float16 autocast and a GradScaler on "
        "CUDA, as SOLVER.AMP.ENABLED; bfloat16 autocast on the CPU. Inference stays float32.",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="output/benchmark/benchmark.json")
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help="config overrides for fcos_d2, e.g. --opts MODEL.FCOS.NORM none",
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = argument_parser().parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit("--reps must be at least 1 and --warmup at least 0")
    if len(args.opts) % 2:
        raise SystemExit(f"--opts takes KEY VALUE pairs, got {args.opts}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    results = run_benchmark(args, shlex.join(["python", "tools/benchmark.py", *argv]))
    write_json(results, args.output)
    print(format_report(results))
    print(f"\nRaw numbers: {args.output}")
    return results


if __name__ == "__main__":
    main()

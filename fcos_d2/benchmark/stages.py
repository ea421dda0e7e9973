"""fcos_d2 stage by stage, and its target assignment against the number of boxes.

The stages are timed in the model as it runs: its forward marks each stage with a
profiler range ``fcos_d2.<stage>`` (see :mod:`fcos_d2.modeling.meta_arch`), and a
forward run under ``torch.profiler`` gives each range's time. On the CPU that is the
range's wall time on the host; on CUDA its time on the device, from the start of its
first kernel to the end of its last (the host time where a range launched none). The
profiler adds a little host time to every op it records. The backward and SGD step of a
training step run outside the profiler and are timed around the call.
"""

import time
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import Tensor, nn
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEventAvg
from torch.profiler import ProfilerActivity

from ..modeling.targets import assign_targets
from .contenders import Contender
from .inputs import Sample, random_boxes, to_detectron2
from .measurement import Measurement, measure, synchronize
from .phases import amp_autocast, backward_and_step, make_optimizer, make_scaler

# The profiler range of each stage in fcos_d2's forward, and the stage's name in the report.
STAGE_RANGES: Dict[str, str] = {
    "fcos_d2.preprocess": "preprocess",
    "fcos_d2.backbone_fpn": "backbone+FPN",
    "fcos_d2.head": "head",
    "fcos_d2.flatten": "flatten",
    "fcos_d2.target_assignment": "target assignment",
    "fcos_d2.losses": "losses",
    "fcos_d2.decoding_nms": "decoding+NMS",
    "fcos_d2.postprocess": "postprocess",
}
BACKWARD_STAGE = "backward+SGD"  # timed around the call, not a range of the forward
TRAINING_STAGES = (
    "preprocess",
    "backbone+FPN",
    "head",
    "flatten",
    "target assignment",
    "losses",
    BACKWARD_STAGE,
)
INFERENCE_STAGES = ("preprocess", "backbone+FPN", "head", "decoding+NMS", "postprocess")

T = TypeVar("T")


def breakdown_note(device: torch.device) -> str:
    """How the stages were timed on ``device``, for the report's notes."""
    timed = (
        "device time (first kernel start to last kernel end; host time where none ran)"
        if device.type == "cuda"
        else "host wall time"
    )
    return (
        f"fcos_d2 stages: the {timed} of the profiler ranges of the model's own forward, "
        "one run under torch.profiler per repetition (it slows every op a little); "
        f"{BACKWARD_STAGE}: wall time around the call, outside the profiler"
    )


def range_seconds(averages: Iterable[FunctionEventAvg], use_device_time: bool) -> Dict[str, float]:
    """Seconds of each stage in a profile, each range's occurrences added up.

    Args:
        averages: the profile's ``key_averages()``. A range is there as a host event and,
            when it launched device work, as a device event spanning that work.
        use_device_time: take the device event's time where there is one.

    Returns:
        Seconds per stage name (of :data:`STAGE_RANGES`), for the stages that ran.
    """
    host_us: Dict[str, float] = {}
    device_us: Dict[str, float] = {}
    for average in averages:
        stage = STAGE_RANGES.get(average.key)
        if stage is None:
            continue
        if average.device_type == DeviceType.CPU:
            host_us[stage] = host_us.get(stage, 0.0) + average.cpu_time_total
        else:
            device_us[stage] = device_us.get(stage, 0.0) + average.device_time_total
    return {
        stage: (device_us[stage] if use_device_time and device_us.get(stage) else us) / 1e6
        for stage, us in host_us.items()
    }


def profile_stages(run: Callable[[], T], device: torch.device) -> Tuple[T, Dict[str, float]]:
    """What ``run()`` returns, and the seconds of each fcos_d2 stage it ran (see
    :func:`range_seconds`), from one run under ``torch.profiler``."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        result = run()
        synchronize(device)  # the device work of every range is in the profile
    averages = profiler.key_averages()
    on_device = [a for a in averages if a.key in STAGE_RANGES and a.device_type != DeviceType.CPU]
    if device.type == "cuda" and not on_device:
        warnings.warn(
            "the profiler recorded no CUDA work in fcos_d2's ranges (CUPTI unavailable?): "
            "the stage times are host times",
            stacklevel=2,
        )
    return result, range_seconds(averages, device.type == "cuda")


def staged_training_step(
    model: nn.Module,
    inputs: List[dict],
    optimizer: torch.optim.Optimizer,
    amp: bool = False,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> Dict[str, float]:
    """One training step of fcos_d2 (as :func:`~.phases.training_step`); seconds per stage.

    The forward and the sum of the losses run under the profiler; the backward and SGD
    step after it, timed around the call as :data:`BACKWARD_STAGE`.
    """
    device = model.device

    def forward() -> Tensor:
        with amp_autocast(device, amp):
            losses = model(inputs)
            return sum(losses.values())  # () summed loss

    total, seconds = profile_stages(forward, device)
    synchronize(device)
    start = time.perf_counter()
    backward_and_step(total, optimizer, scaler)
    synchronize(device)
    seconds[BACKWARD_STAGE] = time.perf_counter() - start
    return seconds


def staged_inference(model: nn.Module, inputs: List[dict]) -> Dict[str, float]:
    """One inference of fcos_d2 under ``torch.no_grad()``; seconds per stage."""

    def forward() -> List[dict]:
        with torch.no_grad():
            return model(inputs)

    _, seconds = profile_stages(forward, model.device)
    return seconds


def run_stages(
    step: Callable[[], Dict[str, float]], stages: Sequence[str], warmup: int, reps: int
) -> Dict[str, Measurement]:
    """Per-stage timings of ``reps`` runs of ``step`` after ``warmup`` unrecorded ones.

    Raises:
        RuntimeError: if a run did not time every one of ``stages`` (a model without
            fcos_d2's profiler ranges).
    """
    for _ in range(warmup):
        step()
    runs = [step() for _ in range(reps)]
    for seconds in runs:
        missing = [stage for stage in stages if stage not in seconds]
        if missing:
            raise RuntimeError(
                f"no profiler range timed the stages {missing}; ranges seen: {sorted(seconds)}"
            )
    return {stage: Measurement([seconds[stage] for seconds in runs]) for stage in stages}


def measure_breakdown(
    contender: Contender,
    train_samples: Sequence[Sample],
    infer_samples: Sequence[Sample],
    device: torch.device,
    warmup: int,
    reps: int,
    amp: bool = False,
) -> Dict[str, Dict[str, Measurement]]:
    """fcos_d2's training step and inference, stage by stage.

    Returns:
        {"training": {stage: timings}, "inference": {stage: timings}}, the stages of
        :data:`TRAINING_STAGES` and :data:`INFERENCE_STAGES` in that order.
    """
    model = contender.model
    (train_inputs,) = contender.to_inputs(train_samples, True)
    (infer_inputs,) = contender.to_inputs(infer_samples, False)

    model.train()
    optimizer = make_optimizer(model)
    scaler = make_scaler(device, amp)
    with EventStorage():
        training = run_stages(
            lambda: staged_training_step(model, train_inputs, optimizer, amp, scaler),
            TRAINING_STAGES,
            warmup,
            reps,
        )
    model.eval()
    inference = run_stages(
        lambda: staged_inference(model, infer_inputs), INFERENCE_STAGES, warmup, reps
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
    assigner: str = "fcos",
) -> Dict[int, Measurement]:
    """Time and extra memory of ``assign_targets`` on one image (3, H, W), for each number
    of boxes, by FCOS's assignment or ATSS's (``assigner``, with the model's ATSS keys)."""
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
                model.norm_reg_targets,  # distances in strides
                **{**model.successors.assignment_arguments(), "assigner": assigner},
            ),
            device,
            warmup,
            reps,
        )
    return results

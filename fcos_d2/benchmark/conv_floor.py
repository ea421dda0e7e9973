"""The convolution floor: a model's own convolutions, alone, as bare ``F.conv2d`` calls.

Both FCOS implementations spend most of their time in the same convolutions, so the time
those convolutions take on their own is a floor no implementation of the model can go
below without changing the convolution kernels. :func:`record_convolutions` runs the
model once with a forward hook on every ``nn.Conv2d`` (Detectron2's ``Conv2d`` included)
and keeps each call's input shape, memory format, weight and settings, and which of
input and weight need a gradient in that run. :func:`floor_step` replays them:

- inference: every call's ``F.conv2d`` forward under ``torch.no_grad()``;
- training: every call's forward, then its backward from a gradient of the output's
  shape, computing the input gradient and the weight gradient exactly where the model's
  run needed them (a frozen stem needs neither; the first conv needs no input gradient).

Everything else a step does (normalisation, activations, upsampling, target assignment,
losses, post-processing, the optimizer) is outside the floor: ours / floor says how much
of a step is not convolution.
"""

import statistics
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from .check import PHASES, interleave, model_steps
from .conv_profile import convolution_seconds, format_convolution_seconds

FLOOR_NAMES = ("fcos_d2", "d2_fcos", "conv_floor")


@dataclass(frozen=True)
class ConvCall:
    """One convolution the model ran: the input it got and the layer's settings."""

    input_shape: Tuple[int, ...]  # (N, C_in, H, W)
    channels_last: bool  # the input's memory format
    weight: Tensor  # (C_out, C_in / groups, kH, kW), detached
    bias: bool
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    input_needs_grad: bool = False  # whether backward computed a gradient for the input
    weight_needs_grad: bool = False

    def flops(self) -> float:
        """Multiply-adds of the forward (one multiply-add is one FLOP, as fvcore counts)."""
        n, _, h, w = self.input_shape
        out_channels, in_per_group, kh, kw = self.weight.shape
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return float(n * out_channels * out_h * out_w * in_per_group * kh * kw)


def record_convolutions(model: nn.Module, run: Callable[[], object]) -> List[ConvCall]:
    """The convolutions ``run()`` makes ``model`` compute, in call order.

    Args:
        model: a module whose ``nn.Conv2d`` submodules are hooked while ``run`` runs.
        run: one forward of the model (a training forward records which gradients the
            backward needs; an inference forward under no_grad records none).
    """
    calls: List[ConvCall] = []

    def hook(conv: nn.Conv2d, inputs: tuple, _output: Tensor) -> None:
        x = inputs[0]  # (N, C_in, H, W)
        grad_enabled = torch.is_grad_enabled()
        calls.append(
            ConvCall(
                input_shape=tuple(x.shape),
                channels_last=x.dim() == 4
                and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last),
                weight=conv.weight.detach(),
                bias=conv.bias is not None,
                stride=tuple(conv.stride),
                padding=tuple(conv.padding),
                dilation=tuple(conv.dilation),
                groups=conv.groups,
                input_needs_grad=grad_enabled and x.requires_grad,
                weight_needs_grad=grad_enabled and conv.weight.requires_grad,
            )
        )

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def floor_step(calls: List[ConvCall], training: bool, seed: int = 0) -> Callable[[], None]:
    """A callable replaying ``calls`` as bare convolutions (see the module docstring).

    The inputs and weights are made once, here, in each call's memory format, and each
    output gradient at the first call; after that the callable does only the convolutions.
    """
    generator = torch.Generator().manual_seed(seed)
    prepared = []
    for call in calls:
        device = call.weight.device
        memory_format = torch.channels_last if call.channels_last else torch.contiguous_format
        x = torch.randn(call.input_shape, generator=generator).to(device)
        x = x.contiguous(memory_format=memory_format)
        weight = call.weight.clone().contiguous(memory_format=memory_format)
        bias = torch.zeros(weight.shape[0], device=device) if call.bias else None
        if training:
            x.requires_grad_(call.input_needs_grad)
            weight.requires_grad_(call.weight_needs_grad)
            if bias is not None:
                bias.requires_grad_(call.weight_needs_grad)
        prepared.append((call, x, weight, bias))

    def conv(call: ConvCall, x: Tensor, weight: Tensor, bias) -> Tensor:
        return F.conv2d(x, weight, bias, call.stride, call.padding, call.dilation, call.groups)

    if not training:

        def infer() -> None:
            with torch.no_grad():
                for call, x, weight, bias in prepared:
                    conv(call, x, weight, bias)

        return infer

    gradients = [None] * len(prepared)

    def train() -> None:
        for index, (call, x, weight, bias) in enumerate(prepared):
            out = conv(call, x, weight, bias)  # (N, C_out, H', W')
            if not out.requires_grad:
                continue  # a frozen layer on the image: no backward in the model either
            if gradients[index] is None:
                gradients[index] = torch.ones_like(out)
            leaves = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
            torch.autograd.grad(out, leaves, gradients[index])

    return train


def floor_timings(args) -> dict:
    """fcos_d2, Detectron2's FCOS and fcos_d2's convolution floor, timed interleaved.

    Args:
        args: ``tools/bench_floor.py``'s settings (those of ``tools/bench_check.py``).

    Returns:
        ``{"seconds": {name: {phase: [s, ...]}}, "conv_gflops": {name: {phase: GFLOPs}},
        "conv_calls": {phase: count}, "inside_steps": {name: {phase: figures}}}``, names
        fcos_d2, d2_fcos and conv_floor; "inside_steps" (CPU only) holds each step's own
        convolution seconds by the profiler (:func:`.conv_profile.convolution_seconds`),
        for the two models, each step profiled ``args.profile_reps`` times (0: not at all;
        a profiled step runs several times slower than a timed one).
    """
    device = torch.device(args.device)
    steps, models = model_steps(args)
    calls = {}
    gflops = {}
    for name, model in models.items():
        with EventStorage():  # one untimed step of each phase, recorded
            calls[name] = {
                phase: record_convolutions(model, step) for phase, step in steps[name].items()
            }
        gflops[name] = {
            phase: sum(c.flops() for c in phase_calls) / 1e9
            for phase, phase_calls in calls[name].items()
        }
    ours = calls["fcos_d2"]
    steps["conv_floor"] = {phase: floor_step(ours[phase], phase == "train") for phase in PHASES}
    timings = {
        "seconds": interleave(steps, device, args.warmup, args.reps),
        "conv_gflops": gflops,
        "conv_calls": {phase: len(ours[phase]) for phase in PHASES},
    }
    profile_reps = getattr(args, "profile_reps", 1)
    # On a GPU the profiler's CPU times are launches, not kernels; the floor is all convolution.
    if device.type == "cpu" and profile_reps > 0:
        with EventStorage():
            timings["inside_steps"] = {
                name: {
                    phase: convolution_seconds(step, reps=profile_reps)
                    for phase, step in steps[name].items()
                }
                for name in models
            }
    return timings


def format_floor(size: Tuple[int, int], timings: dict) -> str:
    """Each phase's seconds (min / median) and the ratios ours / Detectron2's and ours /
    floor, of the medians."""
    seconds = timings["seconds"]

    def med(name: str, phase: str) -> float:
        return statistics.median(seconds[name][phase])

    lines = [
        f"{size[0]}x{size[1]}: seconds min / median; ratios of the medians (min in brackets)",
        f"{'phase':<7}{'fcos_d2':>16}{'d2_fcos':>16}{'conv floor':>16}"
        f"{'ours/d2':>16}{'ours/floor':>16}{'d2/floor':>16}",
    ]
    for phase in PHASES:
        cells = [f"{min(seconds[n][phase]):.3f} / {med(n, phase):.3f}" for n in FLOOR_NAMES]

        def ratio(a: str, b: str) -> str:
            low = min(seconds[a][phase]) / min(seconds[b][phase])
            return f"{med(a, phase) / med(b, phase):.2f} ({low:.2f})"

        ratios_ = [ratio("fcos_d2", "d2_fcos"), ratio("fcos_d2", "conv_floor")]
        ratios_.append(ratio("d2_fcos", "conv_floor"))
        lines.append(f"{phase:<7}" + "".join(f"{c:>16}" for c in cells + ratios_))
    flops = timings["conv_gflops"]
    lines.append(
        "conv GFLOPs (forward) train / infer: "
        + ", ".join(f"{n} {flops[n]['train']:.1f} / {flops[n]['infer']:.1f}" for n in flops)
        + f"; the floor replays fcos_d2's {timings['conv_calls']['train']} / "
        f"{timings['conv_calls']['infer']} convolutions"
    )
    if "inside_steps" in timings:
        lines.append(format_convolution_seconds(timings["inside_steps"]))
    return "\n".join(lines)

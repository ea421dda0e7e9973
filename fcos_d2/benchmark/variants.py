"""Ways to compute the same fcos_d2 faster, each timed against the default and checked
for how far its outputs move.

A variant takes a freshly built fcos_d2 model (the same random weights as the default's:
both are built from the same seed) and changes how it runs, not what it computes:

- ``contiguous``: no channels-last anywhere (``MODEL.FCOS.CHANNELS_LAST False``);
- ``head_contiguous``: channels-last backbone, the head in the default layout (GroupNorm
  on channels-last tensors is a known slow path on CPUs);
- ``compile_head``: ``torch.compile`` of the head (its compile time is printed apart);
- ``jit_frozen``: inference only, backbone and head traced at the benchmark's size, then
  ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference`` (oneDNN fusion);
- ``bf16``: inference only, under bfloat16 autocast (where the CPU has bfloat16 units).

:func:`variant_timings` times every variant interleaved with the default (as
:func:`.check.interleave` does) and measures each one's largest difference from the
default in the head's outputs (inference) and in the losses (training).
"""

import argparse
import contextlib
import statistics
import time
from typing import Callable, ContextManager, Dict, List, NamedTuple, Tuple

import torch
from detectron2.utils.events import EventStorage
from torch import Tensor, nn

from .check import PHASES, interleave
from .contenders import build_fcos_d2
from .inputs import make_samples
from .phases import make_optimizer, training_step


class Variant(NamedTuple):
    """How to change a built model, which phases it applies to, and the context each of
    its inferences runs in."""

    change: Callable[[nn.Module, Tensor], None]  # (model, a preprocessed image batch)
    phases: Tuple[str, ...] = PHASES
    opts: Tuple[str, ...] = ()  # config overrides its model is built with
    context: Callable[[], ContextManager] = contextlib.nullcontext


def _unchanged(model: nn.Module, images: Tensor) -> None:
    pass


def _head_contiguous(model: nn.Module, images: Tensor) -> None:
    model.head.to(memory_format=torch.contiguous_format)

    def to_contiguous(_module: nn.Module, args: tuple) -> tuple:
        return ([f.contiguous() for f in args[0]],)

    model.head.register_forward_pre_hook(to_contiguous)


def _compile_head(model: nn.Module, images: Tensor) -> None:
    model.head = torch.compile(model.head)


class _TracedBackbone(nn.Module):
    """A traced backbone that still answers what the model asks of a backbone."""

    def __init__(self, traced: torch.jit.ScriptModule, original: nn.Module):
        super().__init__()
        self.traced = traced
        self.size_divisibility = original.size_divisibility
        self.padding_constraints = original.padding_constraints
        self._shapes = original.output_shape()

    def output_shape(self) -> dict:
        return self._shapes

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return dict(zip(self._shapes, self.traced(x)))


def _freeze(module: nn.Module, example: tuple) -> torch.jit.ScriptModule:
    traced = torch.jit.trace(module.eval(), example, strict=False, check_trace=False)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def _jit_frozen(model: nn.Module, images: Tensor) -> None:
    backbone = model.backbone.eval()
    names = list(backbone.output_shape())

    class AsTuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
            features = self.backbone(x)
            return tuple(features[n] for n in names)

    with torch.no_grad():
        features = backbone(images)
        head_inputs = [features[f] for f in model.head_in_features]
        model.backbone = _TracedBackbone(_freeze(AsTuple(), (images,)), backbone)
        model.head = _freeze(model.head.eval(), (head_inputs,))


def _bfloat16() -> ContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


VARIANTS: Dict[str, Variant] = {
    "default": Variant(_unchanged),
    "contiguous": Variant(_unchanged, opts=("MODEL.FCOS.CHANNELS_LAST", "False")),
    "head_contiguous": Variant(_head_contiguous),
    "compile_head": Variant(_compile_head),
    "jit_frozen": Variant(_jit_frozen, phases=("infer",)),
    "bf16": Variant(_unchanged, phases=("infer",), context=_bfloat16),
}


def _preprocessed(model: nn.Module, inputs: List[dict]) -> Tensor:
    return model.preprocess_image(inputs).tensor  # (N, 3, H', W')


def _head_outputs(model: nn.Module, inputs: List[dict], context) -> Tensor:
    """Every level's class, box and centerness outputs, flattened into one vector."""
    model.eval()
    with torch.no_grad(), context():
        features = model.backbone(_preprocessed(model, inputs))
        outputs = model.head([features[f] for f in model.head_in_features])
    return torch.cat([t.float().flatten() for per_level in outputs for t in per_level])


def _losses(model: nn.Module, inputs: List[dict]) -> Tensor:
    model.train()
    with EventStorage():
        losses = model(inputs)
    return torch.stack([losses[k].detach() for k in sorted(losses)])


def variant_timings(args: argparse.Namespace, names: List[str]) -> dict:
    """Seconds of each phase of the default and of each variant in ``names``, timed in
    alternation, and how far each variant's outputs are from the default's.

    Args:
        args: ``tools/bench_check.py``'s settings (config_file, opts, height, width,
            train_batch, num_boxes, score_thresh, seed, device, warmup, reps).
        names: keys of :data:`VARIANTS` besides "default".

    Returns:
        ``{"seconds": {name: {phase: [s, ...]}}, "max_abs_difference": {name: {phase: x}},
        "first_call_seconds": {name: {phase: s}}}``; the difference of inference is over
        the head's outputs, that of training over the losses.
    """
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    size = (args.height, args.width)
    train_samples = make_samples(generator, args.train_batch, *size, args.num_boxes)
    infer_samples = make_samples(generator, 1, *size, args.num_boxes)
    steps, differences, first_calls = {}, {}, {}
    reference = {}
    for name in ["default", *names]:
        variant = VARIANTS[name]
        torch.manual_seed(args.seed)
        contender = build_fcos_d2(
            argparse.Namespace(**{**vars(args), "opts": [*args.opts, *variant.opts]}), device
        )
        model = contender.model
        train_inputs = contender.to_inputs(train_samples, True)[0]
        infer_inputs = contender.to_inputs(infer_samples, False)[0]
        model.eval()
        variant.change(model, _preprocessed(model, infer_inputs))
        # A frozen graph has no parameters left: only variants that train get an optimizer.
        optimizer = make_optimizer(model) if "train" in variant.phases else None

        def train(model=model, inputs=train_inputs, optimizer=optimizer) -> None:
            model.train()
            training_step(model, (inputs,), optimizer)

        def infer(model=model, inputs=infer_inputs, context=variant.context) -> None:
            model.eval()
            with torch.no_grad(), context():
                model(inputs)

        phase_steps = {"train": train, "infer": infer}
        steps[name] = {phase: phase_steps[phase] for phase in variant.phases}
        first_calls[name] = {}
        with EventStorage():
            for phase, step in steps[name].items():
                start = time.perf_counter()
                step()  # a compiled or traced variant compiles here
                first_calls[name][phase] = time.perf_counter() - start
        outputs = {"infer": _head_outputs(model, infer_inputs, variant.context)}
        if "train" in variant.phases:
            outputs["train"] = _losses(model, train_inputs)
        if name == "default":
            reference = outputs
        differences[name] = {
            phase: (outputs[phase] - reference[phase]).abs().max().item() for phase in outputs
        }
    return {
        "seconds": interleave(steps, device, args.warmup, args.reps),
        "max_abs_difference": differences,
        "first_call_seconds": first_calls,
    }


def format_variants(size: Tuple[int, int], timings: dict) -> str:
    """A row per variant and phase: seconds min / median, median / the default's median,
    the largest output difference from the default, and the first call's seconds."""
    seconds = timings["seconds"]
    lines = [
        f"{size[0]}x{size[1]}: seconds min / median, interleaved with the default",
        f"{'variant':<17}{'phase':<7}{'seconds':>16}{'/ default':>11}"
        f"{'max |diff|':>12}{'first call s':>14}",
    ]
    for name, by_phase in seconds.items():
        for phase, values in by_phase.items():
            ratio = statistics.median(values) / statistics.median(seconds["default"][phase])
            lines.append(
                f"{name:<17}{phase:<7}{min(values):>8.3f} / {statistics.median(values):.3f}"
                f"{ratio:>11.2f}{timings['max_abs_difference'][name][phase]:>12.1e}"
                f"{timings['first_call_seconds'][name][phase]:>14.1f}"
            )
    return "\n".join(lines)

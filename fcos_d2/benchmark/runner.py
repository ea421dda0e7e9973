"""The whole benchmark: every chosen model on the same inputs, as JSON-ready results."""

import argparse
import os
import platform
from typing import Sequence, Tuple

import detectron2
import fvcore
import torch
import torchvision

from ..modeling.targets import ASSIGNERS
from .contenders import BUILDERS, Contender
from .inputs import Sample, make_samples
from .measurement import RSS_SAMPLE_INTERVAL_S, release_free_memory
from .model_size import count_flops, count_parameters
from .phases import LEARNING_RATE, losses_finite, measure_inference, measure_training
from .stages import breakdown_note, measure_assignment_scaling, measure_breakdown


def benchmark_model(
    name: str,
    args: argparse.Namespace,
    device: torch.device,
    train_samples: Sequence[Sample],
    infer_samples: Sequence[Sample],
) -> Tuple[dict, Contender]:
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
    scaling = {}
    for assigner in ASSIGNERS:  # the same boxes for both
        print(f"[benchmark] fcos_d2: target assignment scaling ({assigner}) ...", flush=True)
        generator = torch.Generator().manual_seed(args.seed + 1)
        scaling[assigner] = measure_assignment_scaling(
            contender,
            infer_samples[0].image,
            args.assign_boxes,
            generator,
            device,
            args.warmup,
            args.reps,
            assigner,
        )
    return {
        "breakdown": {
            phase: {stage: m.to_json() for stage, m in stages.items()}
            for phase, stages in breakdown.items()
        },
        "assignment_scaling": {str(n): m.to_json() for n, m in scaling["fcos"].items()},
        "atss_assignment_scaling": {str(n): m.to_json() for n, m in scaling["atss"].items()},
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (the platform's processor where unknown)."""
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
            f"/proc/self/statm sampled every {RSS_SAMPLE_INTERVAL_S * 1000:g} ms"
        ),
    }


def run_benchmark(args: argparse.Namespace, command: str) -> dict:
    """Benchmark the selected models; returns the JSON-ready results.

    Args:
        args: the settings, as ``tools/benchmark.py`` parses them (its arguments with
            ``-`` as ``_``); all of them are recorded under "settings".
        command: the command line, recorded as it is.
    """
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
            model_result["notes"].append(breakdown_note(device))
        results["models"][name] = model_result
        results["notes"] += model_result["notes"]
        del contender
        release_free_memory(device)
    return results

#!/usr/bin/env python
"""Helpers of tools/gpu_check.sh: record the demo run, and summarise the results.

python tools/gpu_check_summary.py --record-demo OUT/demo.json --run-dir DIR --seconds S
python tools/gpu_check_summary.py --summarize OUT      # prints summary.md
"""

import argparse
import json
import os
import sys
import time
from typing import Optional


def record_demo(result_file: str, run_dir: str, seconds: float) -> dict:
    """The demo run's wall-clock seconds, iterations, device and final box AP, as JSON."""
    with open(os.path.join(run_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    final = [r for r in records if "bbox/AP" in r]
    with open(os.path.join(run_dir, "config.yaml")) as f:
        config = f.read()
    device = "cuda" if "DEVICE: cuda" in config else "cpu"
    summary = {
        "run_dir": run_dir,
        "device": device,
        "train_and_eval_seconds": seconds,
        "iterations": max(r.get("iteration", 0) for r in records) + 1,
        "bbox": {k.split("/", 1)[1]: v for k, v in final[-1].items() if k.startswith("bbox/")}
        if final
        else None,
    }
    with open(result_file, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _load(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _median(result: dict, model: str, phase: str) -> Optional[float]:
    entry = (result or {}).get("models", {}).get(model)
    return entry[phase]["median_s"] if entry else None


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return "–" if not a or not b else f"{a / b:.2f}"


def summarize(out: str) -> str:
    environment = _load(os.path.join(out, "environment.json")) or {}
    fp32 = _load(os.path.join(out, "benchmark_fp32.json"))
    amp = _load(os.path.join(out, "benchmark_amp.json"))
    demo = _load(os.path.join(out, "demo.json"))
    tests = ""
    if os.path.isfile(os.path.join(out, "tests.txt")):
        with open(os.path.join(out, "tests.txt")) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        tests = lines[-1] if lines else ""
    lines = [
        "# fcos_d2 GPU check",
        "",
        f"Device: {environment.get('gpu') or 'CPU (dry run)'}; torch {environment.get('torch')}, "
        f"torchvision {environment.get('torchvision')}, CUDA {environment.get('cuda')}, "
        f"Python {environment.get('python')}; {time.strftime('%Y-%m-%d')}.",
        "",
        f"CUDA tests (tests/test_cuda.py): {tests or 'not run'}",
        "",
    ]
    if fp32 or amp:
        settings = (fp32 or amp)["settings"]
        lines += [
            f"Benchmark: R-50 FPN, {settings['height']}x{settings['width']}, training batch "
            f"{settings['train_batch']}, inference batch {settings['infer_batch']}, "
            f"medians of {settings['reps']} repetitions (`tools/benchmark.py`).",
            "",
            "| model | train s/iter fp32 | train s/iter AMP | AMP speed-up | infer s/img | "
            "train peak MB fp32 | vs Mask R-CNN train fp32 | vs Mask R-CNN train AMP |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for model in ("fcos_d2", "d2_fcos", "d2_mask_rcnn"):
            train32, train16 = _median(fp32, model, "train"), _median(amp, model, "train")
            infer = _median(fp32, model, "infer_per_image")
            peak = ((fp32 or {}).get("models", {}).get(model) or {}).get("train", {}).get("peak_mb")
            lines.append(
                f"| {model} | {_fmt(train32)} | {_fmt(train16)} | {_ratio(train32, train16)} | "
                f"{_fmt(infer, 4)} | {_fmt(peak, 0)} | "
                f"{_ratio(train32, _median(fp32, 'd2_mask_rcnn', 'train'))} | "
                f"{_ratio(train16, _median(amp, 'd2_mask_rcnn', 'train'))} |"
            )
        lines += [
            "",
            "Targets: FCOS training ≤ 0.8× Mask R-CNN's s/iter; AMP ≥ 1.5× faster than "
            "float32; inference ≤ 0.85× Detectron2's FCOS: "
            + _ratio(
                _median(fp32, "fcos_d2", "infer_per_image"),
                _median(fp32, "d2_fcos", "infer_per_image"),
            )
            + ".",
            "",
        ]
    if demo:
        bbox = demo.get("bbox") or {}
        lines += [
            f"Shapes demo schedule ({demo['iterations']} iterations on {demo['device']}): "
            f"{demo['train_and_eval_seconds'] / 60:.1f} min to box AP "
            f"{_fmt(bbox.get('AP'), 1)} (AP50 {_fmt(bbox.get('AP50'), 1)}).",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record-demo", metavar="RESULT_JSON")
    parser.add_argument("--run-dir", help="the demo run's OUTPUT_DIR")
    parser.add_argument("--seconds", type=float, help="the demo run's wall-clock seconds")
    parser.add_argument("--summarize", metavar="OUT")
    args = parser.parse_args(argv)
    if args.record_demo:
        if not args.run_dir or args.seconds is None:
            parser.error("--record-demo needs --run-dir and --seconds")
        print(json.dumps(record_demo(args.record_demo, args.run_dir, args.seconds), indent=1))
    if args.summarize:
        print(summarize(args.summarize))
    if not (args.record_demo or args.summarize):
        parser.error("say --record-demo or --summarize")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tools/benchmark.py and fcos_d2.benchmark on tiny settings: the JSON the command writes,
the numbers in it, and the pieces it is made of.

No wall-clock thresholds: only structure, positivity and finiteness.
"""

import json
import math
import time
from types import SimpleNamespace

import benchmark  # tools/benchmark.py (the command line), on sys.path through conftest
import pytest
import torch
from conftest import QUICK_CONFIG
from detectron2.utils.events import EventStorage
from torch import nn
from torch.autograd import DeviceType

from fcos_d2.benchmark.contenders import build_fcos_d2
from fcos_d2.benchmark.inputs import make_samples
from fcos_d2.benchmark.measurement import PeakMemory, read_rss_bytes
from fcos_d2.benchmark.model_size import count_flops
from fcos_d2.benchmark.phases import (
    backward_and_step,
    losses_finite,
    make_optimizer,
    training_step,
)
from fcos_d2.benchmark.report import format_report
from fcos_d2.benchmark.stages import (
    INFERENCE_STAGES,
    TRAINING_STAGES,
    measure_breakdown,
    range_seconds,
    staged_training_step,
)

pytestmark = pytest.mark.slow  # end to end: run by `make test`, not by `-m "not slow"`

TINY = [
    "--config-file",
    str(QUICK_CONFIG),
    "--models",
    "fcos_d2",
    "d2_fcos",
    "--height",
    "64",
    "--width",
    "96",
    "--train-batch",
    "2",
    "--infer-batch",
    "1",
    "--num-boxes",
    "3",
    "--assign-boxes",
    "10",
    "100",
    "--warmup",
    "0",
    "--reps",
    "1",
    "--device",
    "cpu",
]
MEASUREMENT_KEYS = {
    "seconds",
    "median_s",
    "min_s",
    "max_s",
    "items_per_call",
    "peak_mb",
    "extra_mb",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One tiny run, shared by the tests of this module, and its JSON read back."""
    output = tmp_path_factory.mktemp("benchmark") / "benchmark.json"
    returned = benchmark.main(TINY + ["--output", str(output)])
    with open(output) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(returned))
    return written


def _check_measurement(summary: dict, reps: int = 1) -> None:
    assert set(summary) == MEASUREMENT_KEYS
    assert len(summary["seconds"]) == reps
    for key in ("median_s", "min_s", "max_s"):
        assert math.isfinite(summary[key]) and summary[key] > 0
    assert summary["min_s"] <= summary["median_s"] <= summary["max_s"]
    for key in ("peak_mb", "extra_mb"):  # RSS increases can be 0 on the CPU
        assert summary[key] is None or (math.isfinite(summary[key]) and summary[key] >= 0)


def test_top_level(results):
    assert set(results) == {"command", "settings", "environment", "models", "notes"}
    assert "tools/benchmark.py" in results["command"] and "--reps" in results["command"]
    settings = results["settings"]
    assert settings["height"] == 64 and settings["models"] == ["fcos_d2", "d2_fcos"]
    env = results["environment"]
    assert env["torch"] == torch.__version__ and env["detectron2"] and env["device_name"]
    assert list(results["models"]) == ["fcos_d2", "d2_fcos"]


@pytest.mark.parametrize("name", ["fcos_d2", "d2_fcos"])
def test_model_numbers(results, name):
    model = results["models"][name]
    for phase in ("train", "infer", "infer_per_image"):
        _check_measurement(model[phase])
    assert model["train"]["items_per_call"] == 2
    assert model["infer_per_image"]["median_s"] == pytest.approx(model["infer"]["median_s"])
    assert model["parameters"]["total"] >= model["parameters"]["trainable"] > 0
    # FLOPs are an int, or None with a note saying why.
    if model["flops"] is None:
        assert any("FLOP count failed" in note for note in model["notes"])
    else:
        assert model["flops"] > 0
    # fcos_d2's profiler ranges compute nothing: not listed among the uncounted ops.
    assert not any("profiler::" in note for note in model["notes"])
    losses = model["train_losses_last"]
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert model["train_losses_finite"] is True
    assert model["train_steps_skipped_by_grad_scaler"] == 0  # float32: no scaler
    # Score threshold 0: post-processing keeps the maximum number of detections.
    assert model["detections_per_image"] > 0


def test_fcos_d2_breakdown_and_scaling(results):
    fcos = results["models"]["fcos_d2"]
    training, inference = fcos["breakdown"]["training"], fcos["breakdown"]["inference"]
    # The stage names of the JSON and of the table, as they were before the profiler timed them.
    assert list(training) == [
        "preprocess",
        "backbone+FPN",
        "head",
        "flatten",
        "target assignment",
        "losses",
        "backward+SGD",
    ]
    assert list(inference) == ["preprocess", "backbone+FPN", "head", "decoding+NMS", "postprocess"]
    for summary in [*training.values(), *inference.values()]:
        _check_measurement(summary)
    assert sum(note.startswith("fcos_d2 stages:") for note in results["notes"]) == 1
    for assigner in ("assignment_scaling", "atss_assignment_scaling"):
        assert list(fcos[assigner]) == ["10", "100"]
        for summary in fcos[assigner].values():
            _check_measurement(summary)
    assert "breakdown" not in results["models"]["d2_fcos"]  # extras are fcos_d2's only


def test_report_has_the_tables(results):
    report = format_report(results)
    for text in ("fcos_d2", "d2_fcos", "vs d2_fcos", "decoding+NMS", "assign_targets", "ATSS s"):
        assert text in report


def test_losses_finite_needs_losses_and_finite_values():
    assert losses_finite({"a": 1.0, "b": 0.0})
    assert not losses_finite({})
    assert not losses_finite({"a": 1.0, "b": math.nan})
    assert not losses_finite({"a": math.inf})


def test_amp_runs_the_model_in_reduced_precision_with_finite_losses():
    args = benchmark.parse_args(TINY + ["--amp"])
    device = torch.device("cpu")
    contender = build_fcos_d2(args, device)
    model = contender.model.train()
    samples = make_samples(torch.Generator().manual_seed(0), 2, 64, 96, 3)
    (inputs,) = contender.to_inputs(samples, True)
    head_dtypes = []
    model.head.register_forward_hook(lambda m, i, out: head_dtypes.append(out[0][0].dtype))
    optimizer = make_optimizer(model)
    # The GradScaler path (CUDA's, given a CPU scaler here): finite gradients, a step taken.
    scaler = torch.amp.GradScaler("cpu")
    with EventStorage():
        losses, stepped = training_step(model, (inputs,), optimizer, True, scaler)
        stage_seconds = staged_training_step(model, inputs, optimizer, amp=True)
        plain, _ = training_step(model, (inputs,), optimizer, amp=False)
    assert stepped and scaler.get_scale() == 2.0**16
    assert head_dtypes == [torch.bfloat16, torch.bfloat16, torch.float32]
    assert set(stage_seconds) == set(TRAINING_STAGES)
    assert losses_finite(losses)
    for name, value in losses.items():  # lr 0: same weights, so close to float32
        assert value == pytest.approx(plain[name], rel=0.05), name


def test_backward_and_step_reports_a_step_the_scaler_skipped():
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    assert backward_and_step((weight * 2).sum(), optimizer, scaler)
    assert not backward_and_step((weight * math.inf).sum(), optimizer, scaler)
    assert scaler.get_scale() < 2.0**16


def test_report_names_the_precision(results):
    assert "float32 throughout" in format_report(results)
    amp_results = {**results, "settings": {**results["settings"], "amp": True}}
    assert "--amp: training in bfloat16 autocast" in format_report(amp_results)


class _Untraceable(nn.Module):
    def forward(self, inputs):
        raise RuntimeError("cannot trace me")


def test_flop_failure_is_reported_not_raised():
    model = _Untraceable()
    flops, note = count_flops(model, ([{"image": torch.zeros(3, 8, 8)}],))
    assert flops is None and "RuntimeError" in note and "cannot trace me" in note
    assert model.training  # mode restored


def test_inputs_are_reproducible_and_inside_the_image():
    first = make_samples(torch.Generator().manual_seed(3), 2, 40, 60, 50)
    second = make_samples(torch.Generator().manual_seed(3), 2, 40, 60, 50)
    for a, b in zip(first, second):
        assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
        assert a.image.shape == (3, 40, 60) and 0 <= a.image.min() and a.image.max() <= 255
        assert (a.boxes[:, :2] >= 0).all()
        assert (a.boxes[:, 2] <= 60).all() and (a.boxes[:, 3] <= 40).all()
        assert (a.boxes[:, 2:] > a.boxes[:, :2]).all()
        assert 0 <= a.classes.min() and a.classes.max() < 80


def test_peak_memory_sees_an_allocation():
    with PeakMemory(torch.device("cpu"), sample_interval_s=0.001) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, written to, so resident
        time.sleep(0.02)
    del block
    if read_rss_bytes() is None:
        assert memory.peak_mb is None
    else:
        assert memory.peak_mb >= 32


def test_profiler_ranges_time_every_stage_of_fcos_d2():
    """The breakdown comes from the profiler ranges of fcos_d2's own forward: every stage,
    every repetition, a positive time."""
    args = benchmark.parse_args(TINY)
    device = torch.device("cpu")
    contender = build_fcos_d2(args, device)
    samples = make_samples(torch.Generator().manual_seed(0), 2, 64, 96, 3)
    breakdown = measure_breakdown(contender, samples, samples[:1], device, warmup=0, reps=2)
    assert list(breakdown) == ["training", "inference"]
    assert tuple(breakdown["training"]) == TRAINING_STAGES
    assert tuple(breakdown["inference"]) == INFERENCE_STAGES
    for phase, stages in breakdown.items():
        for stage, measurement in stages.items():
            assert len(measurement.seconds) == 2, (phase, stage)
            assert all(math.isfinite(s) and s > 0 for s in measurement.seconds), (phase, stage)


def test_range_seconds_takes_device_time_where_a_range_ran_on_the_device():
    def average(key, device_type, cpu_us=0.0, device_us=0.0):
        return SimpleNamespace(
            key=key, device_type=device_type, cpu_time_total=cpu_us, device_time_total=device_us
        )

    averages = [
        average("fcos_d2.head", DeviceType.CPU, cpu_us=300.0),
        average("fcos_d2.head", DeviceType.CUDA, device_us=2000.0),
        average("fcos_d2.postprocess", DeviceType.CPU, cpu_us=400.0),  # no device work
        average("aten::conv2d", DeviceType.CPU, cpu_us=9000.0),  # not a stage
    ]
    on_device = range_seconds(averages, use_device_time=True)
    assert on_device == pytest.approx({"head": 2e-3, "postprocess": 4e-4})
    on_host = range_seconds(averages, use_device_time=False)
    assert on_host == pytest.approx({"head": 3e-4, "postprocess": 4e-4})

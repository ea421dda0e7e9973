"""tools/benchmark.py on tiny settings: the JSON it writes and the numbers in it.

No wall-clock thresholds: only structure, positivity and finiteness.
"""

import json
import math
import time

import benchmark  # tools/benchmark.py, on sys.path through conftest
import pytest
import torch
from conftest import QUICK_CONFIG
from detectron2.utils.events import EventStorage
from torch import nn

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
    losses = model["train_losses_last"]
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert model["train_losses_finite"] is True
    assert model["train_steps_skipped_by_grad_scaler"] == 0  # float32: no scaler
    # Score threshold 0: post-processing keeps the maximum number of detections.
    assert model["detections_per_image"] > 0


def test_fcos_d2_breakdown_and_scaling(results):
    fcos = results["models"]["fcos_d2"]
    training, inference = fcos["breakdown"]["training"], fcos["breakdown"]["inference"]
    for stage in ("backbone+FPN", "head", "target assignment", "losses", "backward+SGD"):
        _check_measurement(training[stage])
    for stage in ("backbone+FPN", "head", "decoding+NMS"):
        _check_measurement(inference[stage])
    assert list(fcos["assignment_scaling"]) == ["10", "100"]
    for summary in fcos["assignment_scaling"].values():
        _check_measurement(summary)
    assert "breakdown" not in results["models"]["d2_fcos"]  # extras are fcos_d2's only


def test_report_has_the_tables(results):
    report = benchmark.format_report(results)
    for text in ("fcos_d2", "d2_fcos", "vs d2_fcos", "decoding+NMS", "assign_targets"):
        assert text in report


def test_losses_finite_needs_losses_and_finite_values():
    assert benchmark.losses_finite({"a": 1.0, "b": 0.0})
    assert not benchmark.losses_finite({})
    assert not benchmark.losses_finite({"a": 1.0, "b": math.nan})
    assert not benchmark.losses_finite({"a": math.inf})


def test_amp_runs_the_model_in_reduced_precision_with_finite_losses():
    args = benchmark.parse_args(TINY + ["--amp"])
    device = torch.device("cpu")
    contender = benchmark.build_fcos_d2(args, device)
    model = contender.model.train()
    samples = benchmark.make_samples(torch.Generator().manual_seed(0), 2, 64, 96, 3)
    (inputs,) = contender.to_inputs(samples, True)
    head_dtypes = []
    model.head.register_forward_hook(lambda m, i, out: head_dtypes.append(out[0][0].dtype))
    optimizer = benchmark.make_optimizer(model)
    clock = benchmark.StageClock(device)
    # The GradScaler path (CUDA's, given a CPU scaler here): finite gradients, a step taken.
    scaler = torch.amp.GradScaler("cpu")
    with EventStorage():
        losses, stepped = benchmark.training_step(model, (inputs,), optimizer, True, scaler)
        benchmark.staged_training_step(model, inputs, optimizer, clock, amp=True)
        plain, _ = benchmark.training_step(model, (inputs,), optimizer, amp=False)
    assert stepped and scaler.get_scale() == 2.0**16
    assert head_dtypes == [torch.bfloat16, torch.bfloat16, torch.float32]
    assert benchmark.losses_finite(losses)
    for name, value in losses.items():  # lr 0: same weights, so close to float32
        assert value == pytest.approx(plain[name], rel=0.05), name


def test_backward_and_step_reports_a_step_the_scaler_skipped():
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    assert benchmark.backward_and_step((weight * 2).sum(), optimizer, scaler)
    assert not benchmark.backward_and_step((weight * math.inf).sum(), optimizer, scaler)
    assert scaler.get_scale() < 2.0**16


def test_report_names_the_precision(results):
    assert "float32 throughout" in benchmark.format_report(results)
    amp_results = {**results, "settings": {**results["settings"], "amp": True}}
    assert "--amp: training in bfloat16 autocast" in benchmark.format_report(amp_results)


class _Untraceable(nn.Module):
    def forward(self, inputs):
        raise RuntimeError("cannot trace me")


def test_flop_failure_is_reported_not_raised():
    model = _Untraceable()
    flops, note = benchmark.count_flops(model, ([{"image": torch.zeros(3, 8, 8)}],))
    assert flops is None and "RuntimeError" in note and "cannot trace me" in note
    assert model.training  # mode restored


def test_inputs_are_reproducible_and_inside_the_image():
    first = benchmark.make_samples(torch.Generator().manual_seed(3), 2, 40, 60, 50)
    second = benchmark.make_samples(torch.Generator().manual_seed(3), 2, 40, 60, 50)
    for a, b in zip(first, second):
        assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
        assert a.image.shape == (3, 40, 60) and 0 <= a.image.min() and a.image.max() <= 255
        assert (a.boxes[:, :2] >= 0).all()
        assert (a.boxes[:, 2] <= 60).all() and (a.boxes[:, 3] <= 40).all()
        assert (a.boxes[:, 2:] > a.boxes[:, :2]).all()
        assert 0 <= a.classes.min() and a.classes.max() < 80


def test_peak_memory_sees_an_allocation():
    with benchmark.PeakMemory(torch.device("cpu"), sample_interval_s=0.001) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, written to, so resident
        time.sleep(0.02)
    del block
    if benchmark.read_rss_bytes() is None:
        assert memory.peak_mb is None
    else:
        assert memory.peak_mb >= 32

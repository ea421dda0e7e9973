"""The convolution floor (fcos_d2.benchmark.conv_floor, tools/bench_floor.py): which
convolutions are recorded, with what settings and gradient needs, and that the replay
runs exactly the forwards and backwards the model ran."""

import json
import time

import bench_floor  # tools/, on the path from conftest
import pytest
import torch
from detectron2.layers import Conv2d, get_norm
from torch import nn

from fcos_d2.benchmark.conv_floor import ConvCall, floor_step, record_convolutions
from fcos_d2.benchmark.conv_profile import convolution_seconds, format_convolution_seconds


def small_network() -> nn.Sequential:
    """A frozen stem on the image, a trainable strided conv with a norm (Detectron2's
    Conv2d), and a grouped, dilated trainable conv with a bias."""
    torch.manual_seed(0)
    stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    stem.weight.requires_grad_(False)
    middle = Conv2d(8, 16, 3, stride=2, padding=1, bias=False, norm=get_norm("BN", 16))
    last = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
    return nn.Sequential(stem, nn.ReLU(), middle, nn.ReLU(), last)


def test_records_every_convolution_with_its_settings_and_gradient_needs():
    network = small_network()
    image = torch.randn(2, 3, 16, 20)
    calls = record_convolutions(network, lambda: network(image).sum().backward())
    assert [c.input_shape for c in calls] == [(2, 3, 16, 20), (2, 8, 16, 20), (2, 16, 8, 10)]
    stem, middle, last = calls
    # The image needs no gradient and the stem is frozen: no backward there at all. The
    # middle conv's input comes from the frozen stem: only its weight needs a gradient.
    assert (stem.input_needs_grad, stem.weight_needs_grad) == (False, False)
    assert (middle.input_needs_grad, middle.weight_needs_grad) == (False, True)
    assert (last.input_needs_grad, last.weight_needs_grad) == (True, True)
    assert middle.stride == (2, 2) and not middle.bias
    assert (last.dilation, last.padding, last.groups, last.bias) == ((2, 2), (2, 2), 4, True)
    assert not any(c.channels_last for c in calls)
    # The hooks are gone afterwards.
    assert len(record_convolutions(network, lambda: None)) == 0


def test_inference_records_no_gradient_needs_and_the_memory_format():
    network = small_network().to(memory_format=torch.channels_last)
    image = torch.randn(1, 3, 16, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        calls = record_convolutions(network, lambda: network(image))
    assert not any(c.input_needs_grad or c.weight_needs_grad for c in calls)
    assert all(c.channels_last for c in calls)


def test_forward_flops_by_hand():
    # 2 images, 8 -> 16 channels, 3x3, stride 2 on 16x20: 8x10 outputs, 8*9 mult-adds each.
    call = ConvCall((2, 8, 16, 20), False, torch.zeros(16, 8, 3, 3), False, (2, 2), (1, 1))
    assert call.flops() == 2 * 16 * 8 * 10 * 8 * 9
    # Grouped and dilated: 16 -> 16 in 4 groups (4 inputs each), 3x3 dilation 2, pad 2.
    grouped = ConvCall(
        (1, 16, 8, 10), False, torch.zeros(16, 4, 3, 3), True, (1, 1), (2, 2), (2, 2), 4
    )
    assert grouped.flops() == 16 * 8 * 10 * 4 * 9


def count_ops(step) -> dict:
    """How many convolution forwards and backwards ``step()`` runs."""
    figures = convolution_seconds(step, reps=1)
    return {"forward": figures["forward_calls"], "backward": figures["backward_calls"]}


def test_the_replay_runs_the_model_convolutions_forwards_and_backwards():
    network = small_network()
    image = torch.randn(2, 3, 16, 20)

    def training_step():
        network(image).sum().backward()

    calls = record_convolutions(network, training_step)
    model_ops = count_ops(training_step)
    assert model_ops == {"forward": 3, "backward": 2}  # the frozen stem has no backward
    assert count_ops(floor_step(calls, training=True)) == model_ops
    assert count_ops(floor_step(calls, training=False)) == {"forward": 3, "backward": 0}


def test_profiled_convolution_time_leaves_out_the_rest_of_the_step():
    network = small_network()
    image = torch.randn(2, 3, 64, 80)
    pause = 0.05

    def training_step():
        time.sleep(pause)  # not a convolution: in the step's time, not in the convs'
        network(image).sum().backward()

    figures = convolution_seconds(training_step, reps=2)
    assert figures["forward_calls"] == 3 and figures["backward_calls"] == 2
    assert figures["forward"] > 0 and figures["backward"] > 0
    assert figures["step"] - figures["forward"] - figures["backward"] >= pause
    text = format_convolution_seconds({"net": {"train": figures}})
    assert text.splitlines()[1].startswith("train  net ")


@pytest.mark.slow
def test_tool_prints_the_three_and_records(tmp_path, capsys):
    records = tmp_path / "floor.json"
    argv = ["--sizes", "64x96", "--reps", "2", "--warmup", "0"]
    argv += ["--records", str(records), "--record"]
    assert bench_floor.main(argv) == 0
    out = capsys.readouterr().out
    assert "64x96" in out and "ours/floor" in out
    saved = json.loads(records.read_text())
    result = saved[0]["results"][0]
    assert result["size"] == [64, 96]
    assert set(result["seconds"]) == {"fcos_d2", "d2_fcos", "conv_floor"}
    # Both models run the same R-50-FPN convolutions; fcos_d2's head has no more of them.
    flops = result["conv_gflops"]
    assert flops["fcos_d2"]["infer"] == pytest.approx(flops["d2_fcos"]["infer"], rel=0.02)
    assert result["conv_calls"]["train"] > 50
    assert "inside each step" in out
    assert set(result["inside_steps"]) == {"fcos_d2", "d2_fcos"}  # the floor is all convs
    inside = result["inside_steps"]["fcos_d2"]
    assert inside["train"]["backward_calls"] > 0 and inside["infer"]["backward_calls"] == 0


def test_bad_size_is_a_named_error(capsys):
    with pytest.raises(SystemExit):
        bench_floor.argument_parser().parse_args(["--sizes", "512by640"])
    assert "--sizes '512by640': expected HEIGHTxWIDTH" in capsys.readouterr().err

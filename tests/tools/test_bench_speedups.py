"""The speed-up variants (fcos_d2.benchmark.variants, tools/bench_speedups.py): each one
changes how the model runs, and the tool measures how far its outputs move."""

import argparse
import json

import bench_speedups  # tools/, on the path from conftest
import pytest
import torch

from fcos_d2.benchmark.contenders import build_fcos_d2
from fcos_d2.benchmark.variants import VARIANTS

CONFIG = "configs/shapes/FCOS_R_18_shapes_cpu.yaml"


def small_model() -> torch.nn.Module:
    args = argparse.Namespace(config_file=CONFIG, opts=[], score_thresh=0.0)
    return build_fcos_d2(args, torch.device("cpu")).model.eval()


def images() -> torch.Tensor:
    return torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)


def test_head_contiguous_runs_the_head_in_the_default_layout():
    model = small_model()
    conv = model.head.cls_logits
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    VARIANTS["head_contiguous"].change(model, images())
    assert conv.weight.is_contiguous()
    seen = []
    conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        features = model.backbone(images())
        model.head([features[f] for f in model.head_in_features])
    assert seen and all(seen)  # channels-last P3-P7 arrive in the default layout


def test_jit_frozen_replaces_backbone_and_head_with_frozen_graphs_of_the_same_outputs():
    model = small_model()
    x = images()
    with torch.no_grad():
        expected = model.head([model.backbone(x)[f] for f in model.head_in_features])
    VARIANTS["jit_frozen"].change(model, x)
    assert isinstance(model.head, torch.jit.ScriptModule)
    assert model.backbone.size_divisibility == 32  # what preprocess_image asks of it
    with torch.no_grad():
        actual = model.head([model.backbone(x)[f] for f in model.head_in_features])
    for expected_level, actual_level in zip(expected, actual):
        for e, a in zip(expected_level, actual_level):
            torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_tool_times_the_variants_and_their_differences(tmp_path, capsys):
    records = tmp_path / "speedups.json"
    argv = ["--config-file", CONFIG, "--sizes", "64x96", "--reps", "1", "--warmup", "0"]
    argv += ["--variants", "contiguous", "bf16", "--records", str(records), "--record"]
    assert bench_speedups.main(argv) == 0
    out = capsys.readouterr().out
    assert "contiguous" in out and "bf16" in out
    result = json.loads(records.read_text())[0]["results"][0]
    assert set(result["seconds"]) == {"default", "contiguous", "bf16"}
    assert set(result["seconds"]["bf16"]) == {"infer"}  # inference only
    difference = result["max_abs_difference"]
    assert difference["default"] == {"infer": 0.0, "train": 0.0}
    assert difference["contiguous"]["infer"] < 1e-4  # the same function, another layout
    assert difference["bf16"]["infer"] > 1e-4  # autocast did run: bfloat16 rounds


def test_unknown_variant_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_speedups.argument_parser().parse_args(["--variants", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err

"""The speed-ups compute the same function: detections and losses before and after, for
each speed-up alone and together; the location grid is cached per feature size."""

import pytest
import torch
from conftest import CONFIGS, load_config, make_instances, randomize_frozen_bn
from detectron2.layers import Conv2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from fcos_d2.modeling.speedups import FrozenBNFoldedConv2d

PLAIN = ["MODEL.FCOS.CHANNELS_LAST", "False", "MODEL.FCOS.FOLD_FROZEN_BN", "False"]


FAST = ["MODEL.FCOS.CHANNELS_LAST", "True", "MODEL.FCOS.FOLD_FROZEN_BN", "True"]


# Each speed-up alone, and both together.
SPEEDUPS = {
    "channels-last": ["MODEL.FCOS.CHANNELS_LAST", "True", "MODEL.FCOS.FOLD_FROZEN_BN", "False"],
    "fold-frozen-bn": ["MODEL.FCOS.CHANNELS_LAST", "False", "MODEL.FCOS.FOLD_FROZEN_BN", "True"],
    "both": FAST,
}


# R-50 with frozen BN (the COCO configs), narrowed so the test stays fast.
SMALL_R50 = [
    "MODEL.FPN.OUT_CHANNELS",
    "64",
    "MODEL.FCOS.NUM_CLS_CONVS",
    "2",
    "MODEL.FCOS.NUM_BOX_CONVS",
    "2",
    "MODEL.FCOS.NUM_CLASSES",
    "5",
    "MODEL.FCOS.SCORE_THRESH_TEST",
    "0.0",
]


def randomized_pair(fast_options=FAST):
    """The same random weights (frozen BN statistics included) in a plain and a fast model."""
    torch.manual_seed(0)
    plain = build_model(load_config(CONFIGS / "FCOS_R_50_1x.yaml", [*SMALL_R50, *PLAIN]))
    randomize_frozen_bn(plain)
    fast = build_model(load_config(CONFIGS / "FCOS_R_50_1x.yaml", [*SMALL_R50, *fast_options]))
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("name", list(SPEEDUPS))
def test_each_speedup_takes_effect_and_keeps_the_state_dict_keys(name):
    plain, fast = randomized_pair(SPEEDUPS[name])
    folded = sum(isinstance(m, FrozenBNFoldedConv2d) for m in fast.modules())
    assert folded == (53 if name != "channels-last" else 0)  # R-50's frozen BNs
    channels_last = fast.head.cls_logits.weight.is_contiguous(memory_format=torch.channels_last)
    assert channels_last == (name != "fold-frozen-bn") and fast.channels_last == channels_last
    assert plain.state_dict().keys() == fast.state_dict().keys()


def test_fast_model_folds_every_frozen_bn_and_keeps_the_state_dict_keys():
    plain, fast = randomized_pair()
    assert sum(isinstance(m, FrozenBNFoldedConv2d) for m in fast.modules()) == 53
    assert not any(isinstance(m, FrozenBNFoldedConv2d) for m in plain.modules())
    assert any(type(m) is Conv2d for m in plain.modules())
    assert plain.state_dict().keys() == fast.state_dict().keys()


@pytest.mark.parametrize("name", list(SPEEDUPS))
def test_detections_are_the_same(name):
    plain, fast = randomized_pair(SPEEDUPS[name])
    images = [{"image": torch.rand(3, 128, 160) * 255}, {"image": torch.rand(3, 96, 128) * 255}]
    with torch.no_grad():
        before = [o["instances"] for o in plain.eval()(images)]
        after = [o["instances"] for o in fast.eval()(images)]
    for a, b in zip(before, after):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=1e-2, rtol=0)
        assert torch.equal(a.pred_classes, b.pred_classes)


def training_losses_and_gradients(model, dtype=torch.float32):
    """Losses and parameter gradients of one training step on a fixed two-box image."""
    model.to(dtype).train()
    batch = [
        {
            "image": (torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(1)) * 255).to(
                dtype
            ),
            "instances": make_instances((128, 128), [[10, 12, 70, 90], [60, 40, 120, 100]], [1, 4]),
        }
    ]
    losses = model(batch)
    sum(losses.values()).backward()
    return losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same_training_step(plain, fast, dtype, loss_tol, grad_tol):
    (losses_a, grads_a), (losses_b, grads_b) = (
        training_losses_and_gradients(model, dtype) for model in (plain, fast)
    )
    for name in losses_a:
        torch.testing.assert_close(losses_b[name], losses_a[name], **loss_tol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], **grad_tol, msg=name)


def test_channels_last_training_losses_and_gradients_are_the_same_in_float32():
    """Losses agree to float32 rounding. Gradients are compared by their relative norm
    error: float32 rounding compounds backwards through ~50 random-initialised convs, and how
    much depends on the kernels oneDNN picks for the CPU (on one AMD EPYC, up to 1.8% in res3
    and res4; elsewhere under 0.1%). The float64 test below pins the function to 1e-9; a
    wrong gradient (a transposed layout, a missing term) is off by its own size."""
    plain, fast = randomized_pair(SPEEDUPS["channels-last"])
    (losses_a, grads_a), (losses_b, grads_b) = (
        training_losses_and_gradients(model, torch.float32) for model in (plain, fast)
    )
    for name in losses_a:
        torch.testing.assert_close(losses_b[name], losses_a[name], atol=1e-5, rtol=1e-4)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        error = (grads_b[name] - grad).norm()
        assert error <= 0.05 * grad.norm() + 1e-6, (name, error.item(), grad.norm().item())


@pytest.mark.parametrize("name", list(SPEEDUPS))
def test_training_step_is_the_same_function_in_float64(name):
    """Folding, in float32, moves some backbone gradients beyond rtol 1e-3: folding
    the random BN scales (0.5-1.5 / sqrt(0.5-2)) into 53 convs rounds differently from
    scaling their outputs. In float64 every speed-up agrees to 1e-9: the same function and
    the same gradients, the float32 difference being rounding."""
    plain, fast = randomized_pair(SPEEDUPS[name])
    tight = dict(atol=1e-9, rtol=1e-7)
    assert_same_training_step(plain, fast, torch.float64, tight, tight)


def test_location_grid_is_built_once_per_feature_size():
    model = build_model(load_config())
    features = [torch.zeros(1, 1, 8, 10), torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 2, 3)]
    first = model.location_grid(features)
    assert model.location_grid([f.clone() for f in features]) is first  # cached by size
    other = model.location_grid(
        [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    )
    assert other is not first and len(other.points) == 64 + 16 + 4
    from fcos_d2.modeling.targets import make_location_grid

    fresh = make_location_grid(
        [(8, 10), (4, 5), (2, 3)],
        model.strides,
        model.sizes_of_interest,
        model.location_offset,
        torch.device("cpu"),
    )
    assert torch.equal(first.points, fresh.points)


BF16 = ["MODEL.FCOS.INFERENCE_DTYPE", "bfloat16", "MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]


def _head_dtypes(model) -> list:
    seen = []
    model.head.register_forward_hook(lambda m, i, out: seen.append(out[0][0].dtype))
    return seen


def test_bfloat16_inference_runs_the_head_in_bfloat16_and_detects_in_float32():
    torch.manual_seed(0)
    fp32 = build_model(load_config(opts=["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])).eval()
    bf16 = build_model(load_config(opts=BF16)).eval()
    bf16.load_state_dict(fp32.state_dict())
    fp32_dtypes, bf16_dtypes = _head_dtypes(fp32), _head_dtypes(bf16)
    image = {"image": torch.rand(3, 64, 80) * 255}
    with torch.no_grad():
        expected = fp32([image])[0]["instances"]
        got = bf16([image])[0]["instances"]
    assert fp32_dtypes == [torch.float32] and bf16_dtypes == [torch.bfloat16]
    assert got.scores.dtype == torch.float32 and got.pred_boxes.tensor.dtype == torch.float32
    # The same model: the best score moves by bfloat16's rounding, not by more.
    assert len(got) > 0
    assert got.scores[0].item() == pytest.approx(expected.scores[0].item(), rel=0.05)
    assert not torch.equal(got.scores[: len(expected)], expected.scores[: len(got)])


def test_bfloat16_inference_leaves_training_in_float32():
    model = build_model(load_config(opts=BF16)).train()
    seen = _head_dtypes(model)
    image = torch.rand(3, 64, 80) * 255
    batch = [{"image": image, "instances": make_instances((64, 80), [[4, 6, 30, 40]], [0])}]
    with EventStorage():
        losses = model(batch)
    assert seen == [torch.float32]
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_the_trainers_amp_reaches_the_head_with_inference_dtype_float32():
    # SOLVER.AMP.ENABLED wraps the model's forward in autocast; the model must not undo it.
    model = build_model(load_config()).train()
    seen = _head_dtypes(model)
    image = torch.rand(3, 64, 80) * 255
    batch = [{"image": image, "instances": make_instances((64, 80), [[4, 6, 30, 40]], [0])}]
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert seen == [torch.bfloat16]
    assert all(torch.isfinite(v) for v in losses.values())


def test_unknown_inference_dtype_names_the_key():
    with pytest.raises(ValueError, match="MODEL.FCOS.INFERENCE_DTYPE.*'float16'"):
        build_model(load_config(opts=["MODEL.FCOS.INFERENCE_DTYPE", "float16"]))


def test_bfloat16_export_is_refused_by_name():
    from fcos_d2.export import FCOSExportModule

    model = build_model(load_config(opts=BF16)).eval()
    with pytest.raises(ValueError, match="MODEL.FCOS.INFERENCE_DTYPE bfloat16"):
        FCOSExportModule(model)

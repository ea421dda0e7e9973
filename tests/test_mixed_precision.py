"""Mixed precision: the model under float16 autocast trains with finite float32 losses.

Detectron2's AMPTrainer (SOLVER.AMP.ENABLED) runs the model under CUDA autocast, which
CI has no GPU for. CPU autocast with float16 makes the same choices that matter here:
convolutions, hence the head's outputs, come out in float16, and anything computed from
them stays float16 unless cast. Box areas in pixels overflow float16 (max 65504) and
Detectron2's box losses mix dtypes, so the losses must run in float32.

Backward passes use bfloat16: CPU float16 convolution backward has no fast kernel
(two minutes for one step of this tiny model), bfloat16's takes a fraction of a second.
"""

import logging

import pytest
import torch
from conftest import QUICK_CONFIG, load_config, make_instances
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import train_net
from fcos_d2 import config as config_module
from fcos_d2.config import setup_cfg

HEIGHT, WIDTH = 384, 512
# A 490 x 370 box: 181,300 px², beyond float16.
BOXES = [[10.0, 10.0, 500.0, 380.0], [100.0, 50.0, 200.0, 300.0]]


def batch():
    return [
        {
            "image": torch.rand(3, HEIGHT, WIDTH) * 255,
            "instances": make_instances((HEIGHT, WIDTH), BOXES, [0, 1]),
        }
        for _ in range(2)
    ]


def build_training_model(box_loss_type: str, norm_reg_targets: bool = False):
    cfg = load_config(
        opts=[
            "MODEL.FCOS.BOX_LOSS_TYPE",
            box_loss_type,
            "MODEL.FCOS.NORM_REG_TARGETS",
            str(norm_reg_targets),
        ]
    )
    return build_model(cfg).train()


def head_logits_dtype(model, inputs) -> torch.dtype:
    features = model.backbone(model.preprocess_image(inputs).tensor)
    return model.head([features[f] for f in model.head_in_features])[0][0].dtype


@pytest.mark.parametrize("box_loss_type", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("norm_reg_targets", [False, True])
def test_float16_autocast_losses_are_finite_float32_and_match(box_loss_type, norm_reg_targets):
    model = build_training_model(box_loss_type, norm_reg_targets)
    inputs = batch()
    with torch.no_grad(), EventStorage():
        reference = model(inputs)
        with torch.autocast("cpu", dtype=torch.float16):
            mixed = model(inputs)
            # The head really ran in float16 (else this test checks nothing).
            assert head_logits_dtype(model, inputs) == torch.float16

    for name, value in mixed.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        torch.testing.assert_close(value, reference[name], rtol=1e-2, atol=1e-3, msg=name)


@pytest.mark.parametrize("box_loss_type", ["iou", "giou", "diou", "ciou"])
def test_bfloat16_autocast_backward_gives_finite_gradients(box_loss_type):
    model = build_training_model(box_loss_type)
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch())
    sum(losses.values()).backward()
    for name, value in losses.items():
        assert torch.isfinite(value), name
    gradients = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "head.cls_logits.weight" in gradients
    for name, gradient in gradients.items():
        assert torch.isfinite(gradient).all(), name


def test_float16_autocast_inference_gives_finite_detections():
    cfg = load_config(opts=["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"])
    model = build_model(cfg).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        (result,) = model([{"image": torch.rand(3, HEIGHT, WIDTH) * 255}])
    instances = result["instances"]
    boxes = instances.pred_boxes.tensor  # (D, 4)
    assert len(instances) > 0
    assert torch.isfinite(boxes).all()
    assert (boxes[:, [0, 2]] <= WIDTH).all() and (boxes[:, [1, 3]] <= HEIGHT).all()
    assert (boxes >= 0).all()
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()


def test_amp_without_a_gpu_falls_back_to_float32_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # setup_logger (train_net, demo) stops propagation, which caplog relies on.
    monkeypatch.setattr(logging.getLogger("fcos_d2"), "propagate", True)
    monkeypatch.setattr(config_module, "_said", set())  # as in a fresh process
    with caplog.at_level(logging.WARNING, logger="fcos_d2"):
        cfg = setup_cfg(str(QUICK_CONFIG), ["SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cuda"])
    assert cfg.MODEL.DEVICE == "cpu"
    assert not cfg.SOLVER.AMP.ENABLED
    assert "SOLVER.AMP.ENABLED" in caplog.text and "No GPU found" in caplog.text
    # Said once per process: building the config again adds nothing.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fcos_d2"):
        setup_cfg(str(QUICK_CONFIG), ["SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cuda"])
    assert "No GPU found" not in caplog.text


def test_train_net_logs_the_fallback_to_the_run_log(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            str(QUICK_CONFIG),
            "SOLVER.AMP.ENABLED",
            "True",
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    cfg = train_net.setup(args)
    assert not cfg.SOLVER.AMP.ENABLED
    assert "SOLVER.AMP.ENABLED needs a CUDA device" in (tmp_path / "log.txt").read_text()

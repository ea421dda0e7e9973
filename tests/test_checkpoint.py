"""Checkpoints of the FCOS model: weights load without pickled code, and unexpected keys
are named."""

import logging

import torch
from conftest import load_config
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model


# Checkpoints load with weights_only; unexpected keys are named.
def test_checkpoint_loads_weights_only_and_unexpected_keys_are_named(tmp_path, caplog):
    cfg = load_config()
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("saved", iteration=7)
    checkpoint = torch.load(tmp_path / "saved.pth", weights_only=True)
    assert checkpoint["iteration"] == 7

    checkpoint["model"]["head.surplus_layer.weight"] = torch.zeros(3)
    torch.save(checkpoint, tmp_path / "extra.pth")
    logger = logging.getLogger("fvcore.common.checkpoint")
    logger.propagate = True
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(build_model(cfg)).load(str(tmp_path / "extra.pth"))
    assert "head.surplus_layer" in caplog.text

"""Building the config (fcos_d2.config): misspelled keys are named, and AMP without a GPU
falls back to float32 with a warning."""

import logging

import pytest
import torch
from conftest import QUICK_CONFIG

from fcos_d2 import config as config_module
from fcos_d2.config import setup_cfg


# An unknown or misspelled config key.
def test_misspelled_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{QUICK_CONFIG}"\nMODEL:\n  FCOS:\n    NUM_CLASES: 3\n')
    with pytest.raises(KeyError, match="MODEL.FCOS.NUM_CLASES"):
        setup_cfg(str(bad), [])
    with pytest.raises(AssertionError, match="MODEL.FCOS.SCORE_TRESH_TEST"):  # yacs, for opts
        setup_cfg(str(QUICK_CONFIG), ["MODEL.FCOS.SCORE_TRESH_TEST", "0.1"])


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

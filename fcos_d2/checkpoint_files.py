"""Reading other implementations' checkpoint files, and writing the converted ones.

Shared by ``tools/convert_torchvision.py`` and ``tools/convert_official.py``: every problem
with a file is a :class:`ConversionError` that names it.
"""

import argparse
import os
import pickle
from pathlib import Path
from typing import Dict, Mapping

import torch
from torch import Tensor


class ConversionError(Exception):
    """A problem with the input or output file, reported without a traceback."""


def load_state_dict_file(path: str, allow_pickle: bool = False) -> Dict[str, Tensor]:
    """Read a state dict from ``path``.

    Args:
        path: a ``.pth`` holding a state dict, or a dict with it under "model" or
            "state_dict" (a DataParallel "module." prefix is removed).
        allow_pickle: unpickle arbitrary objects (``torch.load(weights_only=False)``);
            only for files you trust, e.g. training checkpoints that store ``args``.

    Raises:
        ConversionError: naming the file when it is missing, unreadable or holds no
            state dict.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path}: cannot be loaded as a checkpoint of plain tensors: it is not a PyTorch "
            "checkpoint, or it stores other pickled objects (for a training checkpoint you "
            "trust, pass --allow-pickle)"
        ) from e
    except Exception as e:  # torch.load raises many types for a corrupt file
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ConversionError(f"{path}: holds no state dict of tensors")
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def add_allow_pickle_argument(parser: argparse.ArgumentParser) -> None:
    """The converters' ``--allow-pickle`` flag (see :func:`load_state_dict_file`)."""
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read checkpoints that hold pickled objects (only files you trust)",
    )


def model_state_of_config(config_file: str, num_classes: int) -> Dict[str, Tensor]:
    """``state_dict()`` of the fcos_d2 model of ``config_file`` with ``num_classes``, on CPU.

    Raises:
        ConversionError: naming a config file that does not exist.
    """
    from detectron2.modeling import build_model

    from .config import merge_config

    if not os.path.isfile(config_file):
        raise ConversionError(f"{config_file}: no such config file")
    cfg = merge_config(config_file)
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return build_model(cfg).state_dict()


def save_converted(converted: Mapping[str, Tensor], output_path: str, author: str) -> None:
    """Write ``{"model": converted, "__author__": author}``, which Detectron2's
    ``DetectionCheckpointer`` loads by name (no matching heuristics).

    Raises:
        ConversionError: naming an output path that cannot be written.
    """
    try:
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": dict(converted), "__author__": author}, output_path)
    except OSError as e:
        raise ConversionError(f"{output_path}: cannot write: {e}") from e

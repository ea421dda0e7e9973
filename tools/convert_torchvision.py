#!/usr/bin/env python
"""Convert torchvision ``fcos_resnet50_fpn`` weights for fcos_d2.

    python tools/convert_torchvision.py IN.pth OUT.pth [--coco80]

IN is a torchvision FCOS state dict (e.g. ``fcos_resnet50_fpn_coco-99b0c9b7.pth``) or a
checkpoint dict holding one under ``"model"`` or ``"state_dict"``. OUT is written as
``{"model": ..., "__author__": "torchvision"}``, which ``DetectionCheckpointer`` loads by
name (no matching heuristics). Use it with ``configs/FCOS_R_50_torchvision.yaml``:

    python train_net.py --config-file configs/FCOS_R_50_torchvision.yaml --eval-only \\
        MODEL.WEIGHTS OUT.pth MODEL.FCOS.NUM_CLASSES 91   # 80 with --coco80

The result is checked against the model that config builds: every key of IN is used and
every parameter of the model is filled, or nothing is written.
"""

import argparse
import os
import pickle
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from fcos_d2 import add_fcos_config  # noqa: E402
from fcos_d2.conversion import (  # noqa: E402
    convert_torchvision_fcos,
    torchvision_coco_class_indices,
)

DEFAULT_CONFIG = REPO / "configs" / "FCOS_R_50_torchvision.yaml"
CLASSIFIER_BIAS = "head.classification_head.cls_logits.bias"


class ConversionError(Exception):
    """A problem with the input or output file, reported without a traceback."""


def load_torchvision_state_dict(path: str, allow_pickle: bool = False) -> Dict[str, Tensor]:
    """Read a torchvision FCOS state dict from ``path``.

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


def num_classes_of(state_dict: Mapping[str, Tensor], path: str) -> int:
    """K of a torchvision FCOS state dict: the rows of its classifier."""
    if CLASSIFIER_BIAS not in state_dict:
        raise ConversionError(f"{path}: no {CLASSIFIER_BIAS}; not a torchvision FCOS")
    return int(state_dict[CLASSIFIER_BIAS].shape[0])


def target_model_state(config_file: str, num_classes: int) -> Dict[str, Tensor]:
    """``state_dict()`` of the fcos_d2 model of ``config_file`` with ``num_classes``, on CPU."""
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).state_dict()


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision FCOS weights (.pth)")
    parser.add_argument("output", help="where to write the fcos_d2 checkpoint (.pth)")
    parser.add_argument(
        "--coco80",
        action="store_true",
        help="keep the 80 COCO classes of torchvision's 91 labels, in Detectron2's "
        "contiguous order (for coco_2017_* datasets); then NUM_CLASSES is 80",
    )
    parser.add_argument(
        "--config-file",
        default=str(DEFAULT_CONFIG),
        help="the fcos_d2 config whose model the result must fit",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read checkpoints that hold pickled objects (only files you trust)",
    )
    return parser


def convert_file(
    input_path: str,
    output_path: str,
    config_file: str = str(DEFAULT_CONFIG),
    coco80: bool = False,
    allow_pickle: bool = False,
) -> int:
    """Convert ``input_path`` and write ``output_path``; returns the model's NUM_CLASSES.

    Raises:
        ConversionError: for unreadable input, weights that do not fit the model (the
            message names the keys) or an unwritable output.
    """
    state = load_torchvision_state_dict(input_path, allow_pickle)
    class_indices: Optional[List[int]] = torchvision_coco_class_indices() if coco80 else None
    num_classes = len(class_indices) if coco80 else num_classes_of(state, input_path)
    try:
        converted = convert_torchvision_fcos(
            state, target_model_state(config_file, num_classes), class_indices
        )
    except ValueError as e:
        raise ConversionError(f"{input_path}: {e}") from e
    try:
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": converted, "__author__": "torchvision"}, output_path)
    except OSError as e:
        raise ConversionError(f"{output_path}: cannot write: {e}") from e
    return num_classes


def main(argv: Optional[List[str]] = None) -> int:
    args = argument_parser().parse_args(argv)
    try:
        num_classes = convert_file(
            args.input, args.output, args.config_file, args.coco80, args.allow_pickle
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}; load it with --config-file {args.config_file} "
        f"MODEL.WEIGHTS {args.output} MODEL.FCOS.NUM_CLASSES {num_classes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

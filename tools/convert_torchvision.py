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
import sys
from pathlib import Path
from typing import List, Mapping, Optional

from torch import Tensor

REPO = Path(__file__).resolve().parents[1]

from fcos_d2.checkpoint_files import (  # noqa: E402
    ConversionError,
    add_allow_pickle_argument,
    load_state_dict_file,
    model_state_of_config,
    save_converted,
)
from fcos_d2.conversion import (  # noqa: E402
    convert_torchvision_fcos,
    torchvision_coco_class_indices,
)

DEFAULT_CONFIG = REPO / "configs" / "FCOS_R_50_torchvision.yaml"
CLASSIFIER_BIAS = "head.classification_head.cls_logits.bias"


def num_classes_of(state_dict: Mapping[str, Tensor], path: str) -> int:
    """K of a torchvision FCOS state dict: the rows of its classifier."""
    if CLASSIFIER_BIAS not in state_dict:
        raise ConversionError(f"{path}: no {CLASSIFIER_BIAS}; not a torchvision FCOS")
    return int(state_dict[CLASSIFIER_BIAS].shape[0])


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
    add_allow_pickle_argument(parser)
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
    state = load_state_dict_file(input_path, allow_pickle)
    class_indices: Optional[List[int]] = torchvision_coco_class_indices() if coco80 else None
    num_classes = len(class_indices) if coco80 else num_classes_of(state, input_path)
    try:
        converted = convert_torchvision_fcos(
            state, model_state_of_config(config_file, num_classes), class_indices
        )
    except ValueError as e:
        raise ConversionError(f"{input_path}: {e}") from e
    save_converted(converted, output_path, "torchvision")
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

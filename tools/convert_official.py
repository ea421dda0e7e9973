#!/usr/bin/env python
"""Convert the official FCOS checkpoints (tianzhi0549/FCOS) for fcos_d2.

    python tools/convert_official.py IN.pth OUT.pth [--config-file CONFIG]

IN is a checkpoint of the official FCOS code (maskrcnn-benchmark layout, e.g.
``FCOS_imprv_R_50_FPN_1x.pth``, ``FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x.pth``): a state
dict, or a dict holding one under ``"model"``, with or without DistributedDataParallel's
``module.`` prefix. The config is the one of ``configs/official/`` named as the model the
weights' shapes tell (R-50 / R-101 / X-101-32x8d / X-101-64x4d, with or without DCNv2), or
``--config-file``. Then:

    python train_net.py --config-file configs/official/FCOS_imprv_R_50_FPN_1x.yaml \\
        --eval-only MODEL.WEIGHTS OUT.pth

The result is checked against the model that config builds: every key of IN is used and
every parameter of the model is filled, with its shape, or nothing is written.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]

from fcos_d2.checkpoint_files import (  # noqa: E402
    ConversionError,
    add_allow_pickle_argument,
    load_state_dict_file,
    model_state_of_config,
    save_converted,
)
from fcos_d2.conversion import convert_official_fcos, official_model_name  # noqa: E402

OFFICIAL_CONFIGS = REPO / "configs" / "official"
CLASSIFIER_BIAS = "rpn.head.cls_logits.bias"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official FCOS checkpoint (.pth)")
    parser.add_argument("output", help="where to write the fcos_d2 checkpoint (.pth)")
    parser.add_argument(
        "--config-file",
        help="the fcos_d2 config whose model the result must fit "
        "(default: the configs/official/ config the weights' shapes name)",
    )
    add_allow_pickle_argument(parser)
    return parser


def convert_file(
    input_path: str,
    output_path: str,
    config_file: Optional[str] = None,
    allow_pickle: bool = False,
) -> Tuple[str, int]:
    """Convert ``input_path`` and write ``output_path``.

    Returns:
        The config the result fits, and the checkpoint's number of classes.

    Raises:
        ConversionError: for unreadable input, weights that do not fit the model (the
            message names the keys) or an unwritable output.
    """
    state = load_state_dict_file(input_path, allow_pickle)
    if CLASSIFIER_BIAS not in state:
        raise ConversionError(f"{input_path}: no {CLASSIFIER_BIAS}; not an official FCOS")
    num_classes = int(state[CLASSIFIER_BIAS].shape[0])
    if config_file is None:
        try:
            config_file = str(OFFICIAL_CONFIGS / f"{official_model_name(state)}.yaml")
        except ValueError as e:
            raise ConversionError(f"{input_path}: {e}") from e
    try:
        converted = convert_official_fcos(state, model_state_of_config(config_file, num_classes))
    except ValueError as e:
        raise ConversionError(f"{input_path} (for {config_file}): {e}") from e
    save_converted(converted, output_path, "official FCOS")
    return config_file, num_classes


def main(argv: Optional[List[str]] = None) -> int:
    args = argument_parser().parse_args(argv)
    try:
        config_file, num_classes = convert_file(
            args.input, args.output, args.config_file, args.allow_pickle
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    classes = "" if num_classes == 80 else f" MODEL.FCOS.NUM_CLASSES {num_classes}"
    print(
        f"wrote {args.output}; evaluate it with python train_net.py --config-file "
        f"{config_file} --eval-only MODEL.WEIGHTS {args.output}{classes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

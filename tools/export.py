#!/usr/bin/env python
"""Export FCOS inference with torch.export or to ONNX, and check it against the eager model.

    python tools/export.py --config-file configs/shapes/FCOS_R_18_shapes_cpu.yaml \\
        --format onnx --output fcos.onnx [--height 128 --width 128] [--input image.png] \\
        [--dynamic] MODEL.WEIGHTS output/demo/model_final.pth

The exported program maps one image (3, H, W), float32 0-255 in the config's INPUT.FORMAT
channel order (BGR unless the config says RGB), not normalised and not resized (resize it as
the model was evaluated: short side INPUT.MIN_SIZE_TEST, long side at most MAX_SIZE_TEST),
to ``boxes`` (D, 4) as x0, y0, x1, y1 in the pixels of the image given, ``scores`` (D,) and
``classes`` (D,) int64, best first (see ``fcos_d2.export.FCOSExportModule``). Class i is
``class_names[i]``, category ``category_ids[i]`` of the training set: both are stored in
the file (ONNX metadata_props / .pt2 extra file, key "fcos_d2"), from the classes.json
written beside the checkpoint at training time (else DATASETS.TEST[0]'s classes).
``--format torch.export`` writes a ``.pt2``
(``torch.export.save``; read it with ``torch.export.load(PATH).module()``); ``onnx`` writes
an ONNX model with input ``image`` and those three outputs.

The file written is read back and run on a sample image (``--input``, else smooth noise)
next to the eager model; the detections must agree (same count and classes, scores within
1e-4, boxes within 1e-2 px after sorting by score), else the exit status is 1. By default
the program takes any size from the coarsest stride + 1 to 4096 px; with ``--static`` only
the export size (``--height`` / ``--width``, by default the config's INPUT.MIN_SIZE_TEST
square, or the size of ``--input``).
"""

import argparse
import importlib
import json
import logging
import os
import sys
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from torch import Tensor
from torch.nn import functional as F

from fcos_d2.checkpoint import NumClassesError, check_num_classes  # noqa: E402
from fcos_d2.classes import classes_for_weights  # noqa: E402
from fcos_d2.config import setup_cfg  # noqa: E402
from fcos_d2.data.coco_dataset import (  # noqa: E402
    DatasetError,
    add_register_coco_argument,
    register_coco_datasets,
)
from fcos_d2.data.voc_dataset import (  # noqa: E402
    add_register_voc_argument,
    register_voc_datasets,
)
from fcos_d2.export import (  # noqa: E402
    CONTRACT_KEY,
    FCOSExportModule,
    compare_detections,
    dynamic_image_shapes,
    export_contract,
    export_program,
    instances_to_tensors,
    sample_image,
)
from fcos_d2.modeling.meta_arch import FCOS  # noqa: E402

FORMATS = ("onnx", "torch.export")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
OUTPUT_NAMES = ["boxes", "scores", "classes"]
logger = logging.getLogger("fcos_d2.export")


class ExportError(Exception):
    """A problem with an input file, the export or the output file, reported without a traceback."""


def load_model(config_file: str, opts: List[str]) -> Tuple[FCOS, CfgNode]:
    """The FCOS of ``config_file`` + ``opts`` in eval mode, with MODEL.WEIGHTS loaded."""
    if not os.path.isfile(config_file):
        raise ExportError(f"{config_file}: no such config file")
    try:
        cfg = setup_cfg(config_file, opts)
    except Exception as e:  # yacs raises KeyError, ValueError, AssertionError ...
        raise ExportError(f"{config_file} (with options {opts}): not a valid config: {e!r}") from e
    if cfg.MODEL.META_ARCHITECTURE != "FCOS":
        raise ExportError(
            f"{config_file}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; "
            "only FCOS models can be exported by this tool"
        )
    model = build_model(cfg)
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    else:
        if "://" not in weights and not os.path.isfile(weights):
            raise ExportError(f"{weights} (MODEL.WEIGHTS): no such file")
        try:
            check_num_classes(model, weights, fine_tuning=False)
        except NumClassesError as e:
            raise ExportError(str(e)) from e
        try:
            DetectionCheckpointer(model).load(weights)
        except Exception as e:
            raise ExportError(f"{weights} (MODEL.WEIGHTS): cannot be loaded: {e!r}") from e
    return model.eval(), cfg


def load_image(path: Optional[str], size: Optional[Tuple[int, int]], cfg) -> Tensor:
    """(3, H, W) float 0-255 in INPUT.FORMAT: ``path`` resized to ``size``, or sample noise."""
    if path is None:
        if size is None:
            size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
        return sample_image(*size)
    try:
        array = read_image(path, format=cfg.INPUT.FORMAT)  # (H, W, C)
    except Exception as e:  # PIL raises several types for unreadable files
        raise ExportError(f"{path}: cannot be read as an image: {e}") from e
    image = torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return image


def require_onnx() -> None:
    """Import the packages the ONNX export and check need, or say how to install them."""
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ExportError(
                f"--format onnx needs {', '.join(ONNX_PACKAGES)}; {name} cannot be imported "
                f"({e}). Install them with: pip install -e '.[export]'"
            ) from e


def export_torch(
    module: FCOSExportModule, image: Tensor, output: str, dynamic: bool, source: str, contract: dict
):
    """``torch.export`` ``module`` to ``output`` (.pt2); returns the program read back from it.

    ``source`` names the model in errors (its config file).
    """
    try:
        program = export_program(module, image, dynamic)
    except Exception as e:
        raise ExportError(
            f"torch.export of the model of {source} failed: {type(e).__name__}: {e}"
        ) from e
    try:
        torch.export.save(
            program, output, extra_files={f"{CONTRACT_KEY}.json": json.dumps(contract)}
        )
    except Exception as e:  # torch.export.save raises RuntimeError for an unwritable path
        raise ExportError(f"{output}: cannot be written: {e}") from e
    try:
        loaded = torch.export.load(output).module()
    except Exception as e:
        raise ExportError(
            f"{output}: the torch.export program written cannot be read back: {e!r}"
        ) from e

    def run(x: Tensor):
        with torch.no_grad():
            return loaded(x)

    return run


def export_onnx(
    module: FCOSExportModule, image: Tensor, output: str, dynamic: bool, source: str, contract: dict
):
    """Export ``module`` to ``output`` (.onnx); returns an onnxruntime session's runner of it.

    ``source`` names the model in errors (its config file).
    """
    require_onnx()
    import onnx
    import onnxruntime

    dynamic_shapes = dynamic_image_shapes(module.model) if dynamic else None
    try:
        program = torch.onnx.export(
            module,
            (image,),
            dynamo=True,
            input_names=["image"],
            output_names=OUTPUT_NAMES,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    except Exception as e:
        raise ExportError(
            f"ONNX export of the model of {source} failed: {type(e).__name__}: {e}"
        ) from e
    try:
        program.save(output)
        written = onnx.load(output)
        onnx.helper.set_model_props(written, {CONTRACT_KEY: json.dumps(contract)})
        onnx.save(written, output)
    except Exception as e:
        raise ExportError(f"{output}: cannot be written: {e}") from e
    try:
        onnx.checker.check_model(output)
        session = onnxruntime.InferenceSession(output, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(
            f"{output}: the ONNX model written is not valid for onnxruntime: {e}"
        ) from e

    def run(x: Tensor):
        try:
            return session.run(OUTPUT_NAMES, {"image": x.detach().cpu().numpy()})
        except Exception as e:
            raise ExportError(
                f"{output}: onnxruntime failed on a {tuple(x.shape)} image: {e}"
            ) from e

    return run


def check_sizes(image: Tensor, dynamic: bool, min_size: int) -> List[Tensor]:
    """The image, and for a dynamic export the same image cropped to a second size."""
    images = [image]
    height, width = image.shape[-2:]
    if dynamic and min(height, width) - 24 >= min_size:
        images.append(image[:, : height - 24, : width - 8])
    return images


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, metavar="PATH", help="the file to write")
    parser.add_argument("--height", type=int, help="input height of the export (with --width)")
    parser.add_argument("--width", type=int, help="input width of the export (with --height)")
    parser.add_argument("--input", metavar="IMAGE", help="the image to check on (default: noise)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--dynamic",
        action="store_true",
        help="export for any input height and width from the coarsest level's stride + 1 "
        "up to 4096 (the default)",
    )
    sizes.add_argument("--static", action="store_true", help="export for the export size only")
    add_register_coco_argument(parser)
    add_register_voc_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def run(args) -> int:
    if args.format == "onnx":
        require_onnx()  # before the model is built
    args.dynamic = not args.static
    try:
        register_coco_datasets(args.register_coco)
        register_voc_datasets(args.register_voc)
    except DatasetError as e:
        raise ExportError(str(e)) from e
    if (args.height is None) != (args.width is None):
        raise ExportError("--height and --width go together")
    size = None if args.height is None else (args.height, args.width)
    if size is not None and min(size) < 1:
        raise ExportError(f"--height and --width must be positive, got {size}")
    model, cfg = load_model(args.config_file, args.opts)
    image = load_image(args.input, size, cfg).to(model.device)
    size_range = dynamic_image_shapes(model)["image"][1]  # the same for the width
    min_size = size_range.min
    if args.dynamic and min(image.shape[-2:]) < min_size:
        raise ExportError(
            f"--dynamic exports for images of at least {min_size} px each side (this model's "
            f"coarsest stride + 1); the export image is {tuple(image.shape[-2:])}: pass a "
            "larger --height / --width, or --static for a fixed size"
        )
    module = FCOSExportModule(model).eval()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    except OSError as e:
        raise ExportError(f"{args.output}: cannot create its directory: {e}") from e

    classes = classes_for_weights(
        cfg.MODEL.WEIGHTS, cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    )
    contract = export_contract(model, cfg, classes, args.dynamic, tuple(image.shape[-2:]))
    exporter = export_onnx if args.format == "onnx" else export_torch
    exported = exporter(module, image, args.output, args.dynamic, args.config_file, contract)
    if args.dynamic:
        sizes = f"{min_size}-{size_range.max} px high and wide"
    else:
        sizes = f"{tuple(image.shape[-2:])}"
    print(f"{args.format}: wrote {args.output} for {sizes} images")
    print(
        f"  input: (3, H, W) float32 0-255 in {cfg.INPUT.FORMAT} order; outputs: boxes "
        f"(x0, y0, x1, y1) in input pixels, scores, class indices into "
        f"{contract['class_names'] or 'no recorded names'} "
        f"(category ids {contract['category_ids']}); stored under {CONTRACT_KEY!r} in the file"
    )

    failed = False
    for x in check_sizes(image, args.dynamic, min_size):
        with torch.no_grad():
            eager = instances_to_tensors(model([{"image": x}])[0]["instances"])
        difference = compare_detections(eager, exported(x))
        verdict = "ok" if difference.agrees() else "MISMATCH"
        print(f"{tuple(x.shape[-2:])} image: {difference} [{verdict}]")
        failed |= not difference.agrees()
    if failed:
        print(f"{args.output}: the {args.format} program does not reproduce the eager model")
        return 1
    return 0


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Noise of the exporters that says nothing about this model.
    warnings.filterwarnings("ignore", message=".*create_unbacked_symint.* is deprecated")
    logging.getLogger("onnxscript.optimizer").setLevel(logging.ERROR)
    try:
        return run(args)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

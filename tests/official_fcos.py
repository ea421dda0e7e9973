"""The official FCOS code (``fcos==0.9.8`` on PyPI) built in plain PyTorch on the CPU.

The package compiles a CUDA extension, ``fcos.core._C``, at install time; nothing else
in it needs a compiler. This harness downloads the source distribution (no build),
puts its Python sources on ``sys.path`` and stands in for the extension with what
torchvision already gives:

* ``_C.nms`` / ``_C.ml_nms``: torchvision's ``nms`` / ``batched_nms``. The compiled
  kernels count box areas with a +1 pixel ((x2 - x1 + 1) * (y2 - y1 + 1)); torchvision
  does not, so this stand-in decides NMS as fcos_d2 does;
* the modulated deformable convolution: ``torchvision.ops.deform_conv2d`` with a mask
  (same offset layout: 18 (dy, dx) pairs, then 9 mask logits).

It is a test helper, not part of fcos_d2: the reference the conversion is checked
against, on identical inputs.
"""

import subprocess
import sys
import tarfile
import types
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import batched_nms, deform_conv2d, nms

VERSION = "0.9.8"


def fetch_sources(cache_dir: Path) -> Path:
    """Download and unpack the ``fcos`` source distribution into ``cache_dir`` (once).

    Returns:
        The directory that holds the ``fcos`` package.

    Raises:
        RuntimeError: when pip cannot download it (no network, index without it).
    """
    root = cache_dir / f"fcos-{VERSION}"
    if (root / "fcos" / "core").is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation"]
    command += ["--no-binary", "fcos", "-d", str(cache_dir), f"fcos=={VERSION}", "-q"]
    done = subprocess.run(command, capture_output=True, text=True)
    archive = cache_dir / f"fcos-{VERSION}.tar.gz"
    if done.returncode != 0 or not archive.is_file():
        raise RuntimeError(f"pip could not download fcos=={VERSION}: {done.stderr.strip()[-500:]}")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith((".py", ".yaml"))]
        tar.extractall(cache_dir, members=members, filter="data")
    return root


def _stand_in_extension() -> types.ModuleType:
    """``fcos.core._C`` with the two entry points the FCOS detector calls at inference."""
    extension = types.ModuleType("fcos.core._C")
    extension.nms = nms
    extension.ml_nms = lambda boxes, scores, labels, threshold: batched_nms(
        boxes, scores, labels.long(), threshold
    )
    return extension


def _modulated_deform_conv(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> Tensor:
    """The official ``modulated_deform_conv`` signature, computed by torchvision."""
    if groups != 1:
        # torchvision infers the weight groups from the shapes: (C_out, C_in / g, kh, kw).
        assert weight.shape[1] * groups == x.shape[1]
    return deform_conv2d(
        x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
    )


def import_official(cache_dir: Path) -> types.ModuleType:
    """Import ``fcos.core`` from the downloaded sources, with the stand-in extension.

    The package's own ``__init__`` (a training front end needing ``acrv_datasets``) is
    skipped: ``fcos`` is registered as a bare namespace over its directory.

    Returns:
        The ``fcos.core`` module (``fcos.core.config.cfg``,
        ``fcos.core.modeling.detector.build_detection_model``).
    """
    root = fetch_sources(cache_dir)
    if "fcos.core.modeling.detector" in sys.modules:
        return sys.modules["fcos.core"]
    package = types.ModuleType("fcos")
    package.__path__ = [str(root / "fcos")]
    sys.modules["fcos"] = package
    sys.modules["fcos.core._C"] = _stand_in_extension()
    import fcos.core.layers.dcn.deform_conv_module as dcn_module
    import fcos.core.modeling.detector  # noqa: F401  (registers the builders)

    dcn_module.modulated_deform_conv = _modulated_deform_conv
    return sys.modules["fcos.core"]


def official_config(cache_dir: Path, name: str, opts: list = ()):
    """The official config ``name`` (e.g. ``FCOS_imprv_R_50_FPN_1x``), for the CPU."""
    core = import_official(cache_dir)
    cfg = core.config.cfg.clone()
    cfg.merge_from_file(str(fetch_sources(cache_dir) / "fcos" / "configs" / f"{name}.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    cfg.freeze()
    return cfg


def build_official_model(cache_dir: Path, cfg) -> torch.nn.Module:
    """The official detector of ``cfg``, randomly initialised, in eval mode."""
    core = import_official(cache_dir)
    return core.modeling.detector.build_detection_model(cfg).eval()

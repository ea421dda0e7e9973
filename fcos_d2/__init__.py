"""fcos_d2: FCOS as a Detectron2 extension.

Importing the package registers the ``"FCOS"`` meta-architecture, the
``build_fcos_resnet_fpn_backbone`` backbone and the built-in ``shapes_*`` datasets.
"""

from . import (  # noqa: F401  (registers into Detectron2's registries)
    backbone,
    datasets,  # noqa: F401  (registers the built-in datasets)
    meta_arch,
    quiet,  # noqa: F401  (first: silences third-party warnings we cannot act on)
)
from .config import add_fcos_config
from .head import FCOSHead
from .meta_arch import FCOS

__all__ = ["add_fcos_config", "FCOS", "FCOSHead"]

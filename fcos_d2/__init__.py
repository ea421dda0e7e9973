"""fcos_d2: FCOS as a Detectron2 extension.

Importing the package registers the ``"FCOS"`` meta-architecture and proposal generator,
the ``build_fcos_resnet_fpn_backbone`` backbone (all in :mod:`fcos_d2.modeling`) and the
built-in ``shapes_*`` datasets (:mod:`fcos_d2.data`).
"""

# isort: off
from . import quiet  # noqa: F401  (first: silences third-party warnings we cannot act on)

# isort: on
from . import data, modeling  # noqa: F401  (registries)
from .config import add_fcos_config
from .modeling import FCOS, FCOSHead

__all__ = ["add_fcos_config", "FCOS", "FCOSHead"]

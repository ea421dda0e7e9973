"""fcos_d2: FCOS as a Detectron2 extension.

Importing the package registers the ``"FCOS"`` meta-architecture and proposal generator,
the ``build_fcos_resnet_fpn_backbone`` backbone and the built-in ``shapes_*`` datasets.
"""

# isort: off
from . import quiet  # noqa: F401  (first: silences third-party warnings we cannot act on)

# isort: on
from . import backbone, datasets, meta_arch, proposal_generator  # noqa: F401  (registries)
from .config import add_fcos_config
from .head import FCOSHead
from .meta_arch import FCOS

__all__ = ["add_fcos_config", "FCOS", "FCOSHead"]

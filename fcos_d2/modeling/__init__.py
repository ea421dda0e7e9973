"""The model: backbone, head, target assignment, losses, post-processing, and the two
ways Detectron2 runs it (the ``FCOS`` meta-architecture and the ``FCOS`` proposal
generator), plus test-time augmentation. Importing registers all three registries' entries."""

from . import backbone, proposal_generator  # noqa: F401  (registries)
from .head import FCOSHead
from .meta_arch import FCOS

__all__ = ["FCOS", "FCOSHead"]

"""The backbone's deformable convs (DCN, DCNv2) computed by torchvision, on any device.

Detectron2's ResNet builds ``DeformBottleneckBlock`` for the stages of
``MODEL.RESNETS.DEFORM_ON_PER_STAGE``, whose ``conv2`` is Detectron2's ``DeformConv`` or
``ModulatedDeformConv`` (``DEFORM_MODULATED``): compiled kernels of ``detectron2._C``,
CUDA only, and absent from a Detectron2 installed without its extension (as here).
``torchvision.ops.deform_conv2d`` computes the same function, with the same offset layout
((dy, dx) pairs per kernel position, then the mask), on the CPU and the GPU.
:func:`torchvision_deformable_convs` has the ResNet built with
:class:`TorchvisionDeformConv` in their place: the same parameters and state-dict keys.
"""

import contextlib
import math
from typing import Callable, Iterator, Optional

import torch
from detectron2.modeling.backbone import resnet
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


class TorchvisionDeformConv(nn.Module):
    """Detectron2's ``DeformConv`` / ``ModulatedDeformConv`` (same arguments, parameters,
    norm and activation) run by ``torchvision.ops.deform_conv2d``.

    ``forward(x, offset)`` is DCN; ``forward(x, offset, mask)`` is DCNv2.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[Tensor], Tensor]] = None,
    ):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups  # read from the offsets' shape by torchvision
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5) if bias else 0.0)

    def forward(self, x: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        # x (N, C_in, H, W); offset (N, 2*G*kh*kw, H', W'); mask (N, G*kh*kw, H', W')
        x = deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


@contextlib.contextmanager
def torchvision_deformable_convs() -> Iterator[None]:
    """Within this context, Detectron2's ResNet builds its deformable blocks with
    :class:`TorchvisionDeformConv` (restored on exit)."""
    saved = resnet.DeformConv, resnet.ModulatedDeformConv
    resnet.DeformConv = resnet.ModulatedDeformConv = TorchvisionDeformConv
    try:
        yield
    finally:
        resnet.DeformConv, resnet.ModulatedDeformConv = saved

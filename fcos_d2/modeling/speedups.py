"""Faster execution of the same function: frozen BatchNorm folded into its conv.

Detectron2's ResNet applies each frozen BatchNorm as a separate pass over the conv's
output. Folding its affine transform into the conv's weights and bias removes that
pass; the weights are folded on every call (cheap: weights, not activations), so
training still updates the conv's own weights and checkpoints keep their layout.
"""

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F


class FrozenBNFoldedConv2d(Conv2d):
    """A Detectron2 ``Conv2d`` whose ``FrozenBatchNorm2d`` is folded into the convolution.

    Same parameters, buffers and state-dict keys as the ``Conv2d`` it replaces.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
        shift = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        x = F.conv2d(
            x,
            weight.to(x.dtype),
            shift.to(x.dtype),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Switch every Detectron2 ``Conv2d`` followed by a frozen BatchNorm to the folded form.

    Returns:
        The number of convs switched.
    """
    folded = 0
    for child in module.modules():
        if type(child) is Conv2d and isinstance(child.norm, FrozenBatchNorm2d):
            child.__class__ = FrozenBNFoldedConv2d
            folded += 1
    return folded

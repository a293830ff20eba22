"""The operations of the DARTS cell space (Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search.
ICLR 2019, Sec. 3.1 and Appendix A.1.1), as plain modules.

The 8 candidates of every edge (``OPS``, in the order of the paper's ``PRIMITIVES``):

    none            the zero op: no connection (output zeros; never part of a derived cell)
    max_pool_3x3    3x3 max pooling
    avg_pool_3x3    3x3 average pooling (padding not counted)
    skip_connect    identity; on a stride-2 edge a factorized reduce (two offset 1x1 stride-2 convs)
    sep_conv_3x3    separable conv applied twice: (ReLU, depthwise kxk, pointwise 1x1, BN) x 2
    sep_conv_5x5
    dil_conv_3x3    ReLU, depthwise kxk with dilation 2, pointwise 1x1, BN (receptive field 5x5)
    dil_conv_5x5    (receptive field 9x9)

``affine=False`` gives the search network's BatchNorms (no learned scale/shift, as in the paper's search
code, so the architecture weights alone scale an op's output); in the search network a pooling op is
followed by such a BatchNorm. The evaluation network uses ``affine=True`` and bare pools.
"""
from __future__ import annotations

import torch
from torch import nn

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5")
NONE = "none"
SKIP_CONNECT = "skip_connect"


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape (stride 2 halves the size like the other ops)."""

    is_zero = True

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, affine=affine))


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing a pixel column: ReLU, two 1x1 stride-2 convs on ``x`` and on
    ``x`` shifted by one pixel, concatenated (``cout // 2`` channels each), BN."""

    def __init__(self, cin: int, cout: int, affine: bool = True):
        super().__init__()
        if cout % 2:
            raise ValueError(f"factorized reduce needs an even number of output channels, got {cout}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        a = self.conv_1(x)
        b = self.conv_2(x[:, :, 1:, 1:])
        if b.shape[-2:] != a.shape[-2:]:  # odd input sizes: the shifted branch is one pixel short
            b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return self.bn(torch.cat([a, b], dim=1))


class DilConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(cin, cin, kernel, stride, padding, dilation=dilation, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, affine=affine))


class SepConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(DilConv(cin, cin, kernel, stride, padding, 1, affine),
                         DilConv(cin, cout, kernel, 1, padding, 1, affine))


def make_op(name: str, channels: int, stride: int, affine: bool = True, search: bool = False) -> nn.Module:
    """The module of op ``name`` on ``channels`` channels (in = out) with ``stride``."""
    c = channels
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = (nn.MaxPool2d(3, stride, padding=1) if name == "max_pool_3x3"
                else nn.AvgPool2d(3, stride, padding=1, count_include_pad=False))
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if search else pool
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        k = int(name[-1])
        return SepConv(c, c, k, stride, k // 2, affine)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        k = int(name[-1])
        return DilConv(c, c, k, stride, k - 1, 2, affine)
    raise ValueError(f"unknown op {name!r}; the DARTS ops are {', '.join(OPS)}")


class AuxiliaryHead(nn.Module):
    """The CIFAR auxiliary classifier of the evaluation network (DARTS code, ``AuxiliaryHeadCIFAR``),
    on the 8x8 feature map after the second reduction; used in training only."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability ``drop_prob`` and rescale the rest (the DARTS
    evaluation network's drop-path, from FractalNet / NASNet)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask

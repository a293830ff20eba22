"""Plain building blocks of the chain spaces: conv-bn-act, the inverted residual (MBConv), the stem,
the head and FBNet's projection "skip".

These are ordinary ``nn.Module`` s with no search code in them: the child network built from an Arch
and the candidates inside a supernet's mixed ops are made of exactly the same blocks, so a derived
architecture inherits what the supernet measured and the latency table profiles what is deployed.

References: MobileNetV2 (Sandler et al. 2018, Table 1 and Fig. 4d: inverted residual with linear
bottleneck); FBNet (Wu et al. 2019, Fig. 3 and Table 2: the "TBS" block, group 1x1 convs with a
channel shuffle, ``skip`` with a 1x1 projection where shapes change).
"""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "silu": nn.SiLU}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going below 90% of it
    (the rule of the MobileNetV2 / ProxylessNAS reference code)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def make_act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name](inplace=True) if name != "hswish" else ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}") from None


class ConvBNAct(nn.Sequential):
    """``k x k`` convolution (no bias, "same" padding) -> BatchNorm -> activation (``act=None``: none)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = "relu6"):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle, used by FBNet after a grouped 1x1 expansion."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2 Fig. 4d), the token ``k{kernel}e{expand}[_g{groups}]``.

    1x1 expansion conv-bn-act to ``expand * cin`` channels (omitted at ``expand == 1`` unless
    ``pw_at_e1``, FBNet's convention) -> ``kernel x kernel`` depthwise conv-bn-act with ``stride`` ->
    1x1 linear projection conv-bn. ``groups > 1`` makes both 1x1 convs grouped with a channel shuffle
    after the expansion (FBNet's ``_g2`` candidates). A residual is added when ``stride == 1`` and
    ``cin == cout``; ``zero_init`` then starts the projection's BatchNorm scale at 0, so that the block
    is the identity at initialization (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1; He et
    al. 2019, "Bag of Tricks", Sec. 3.1: zero gamma).
    """

    def __init__(self, cin: int, cout: int, kernel: int, expand: int, stride: int = 1,
                 groups: int = 1, act: str = "relu6", pw_at_e1: bool = False, zero_init: bool = False):
        super().__init__()
        mid = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1 or pw_at_e1:
            layers.append(ConvBNAct(cin, mid, 1, groups=groups, act=act))
            if groups > 1:
                layers.append(ChannelShuffle(groups))
        layers.append(ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act))
        layers.append(ConvBNAct(mid, cout, 1, groups=groups, act=None))
        self.body = nn.Sequential(*layers)
        if zero_init and self.use_residual:
            nn.init.zeros_(self.body[-1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class Head(nn.Module):
    """1x1 conv-bn-act to ``cout`` features, then global average pooling, flattened (B, cout)."""

    def __init__(self, cin: int, cout: int, act: str = "relu6"):
        super().__init__()
        self.conv = ConvBNAct(cin, cout, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class Classifier(nn.Sequential):
    """Dropout (optional) then the final linear layer."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        layers.append(nn.Linear(cin, num_classes))
        super().__init__(*layers)

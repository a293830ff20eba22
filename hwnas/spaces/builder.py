"""Arch -> plain ``nn.Module``: the child network, with no search code inside it."""
from __future__ import annotations

import torch
from torch import nn

from hwnas.spaces.arch import Arch


class ChildNet(nn.Module):
    """stem -> [first] -> layers -> head (1x1 conv, global pool) -> classifier."""

    def __init__(self, stem: nn.Module, first: nn.Module | None, layers: list[nn.Module], head: nn.Module,
                 classifier: nn.Module):
        super().__init__()
        self.stem = stem
        self.first = first if first is not None else nn.Identity()
        self.layers = nn.Sequential(*layers)
        self.head = head
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.layers(self.first(self.stem(x)))))


def build_child(arch: Arch | dict, resolution: int | None = None, num_classes: int | None = None) -> nn.Module:
    """Build the child network of ``arch`` (an Arch or its JSON dict).

    ``resolution`` is the input size it will be run at (default: the config's deploy resolution);
    it only changes strides (see hwnas.spaces.chain). ``num_classes`` overrides the config's.
    """
    if not isinstance(arch, Arch):
        arch = Arch.from_dict(arch)
    if num_classes is not None:
        arch = arch.with_config(num_classes=num_classes)
    return arch.space_obj.build_child(arch.layers, arch.config, resolution)


def count_params(module: nn.Module, auxiliary: bool = False) -> int:
    """Parameters of ``module``; those of an auxiliary head (training only, never deployed) are left
    out unless ``auxiliary`` (the DARTS papers' convention for their published counts)."""
    return sum(p.numel() for name, p in module.named_parameters() if auxiliary or not name.startswith("auxiliary."))

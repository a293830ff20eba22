"""What a mixed op's ``build(tokens, make)`` receives: ``make(token, divide=1)`` builds the plain
candidate module (on ``1/divide`` of the channels for PC-DARTS), and the layer's shape is readable as
``make.cin``, ``make.cout``, ``make.stride``."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class CandidateFactory:
    build: Callable[[str, int], nn.Module]
    cin: int
    cout: int
    stride: int

    def __call__(self, token: str, divide: int = 1) -> nn.Module:
        return self.build(token, divide)

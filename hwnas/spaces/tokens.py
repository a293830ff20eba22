"""Candidate tokens of the chain spaces, named like timm's block strings so an Arch reads like one.

Grammar (documented once, used everywhere)::

    k{K}e{E}         inverted residual (MBConv), depthwise kernel K, expansion E      e.g. k5e6
    k{K}e{E}_g{G}    the same with grouped 1x1 convs and a channel shuffle (FBNet)     e.g. k3e1_g2
    skip             no block: identity where the shape is kept; in a space that allows it on a
                     stage's first layer (FBNet) a 1x1 conv-bn-act projection to the new shape
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SKIP = "skip"
_TOKEN = re.compile(r"^k(?P<k>[1-9]\d*)e(?P<e>[1-9]\d*)(?:_g(?P<g>[1-9]\d*))?$")


@dataclass(frozen=True)
class Op:
    """A parsed token. ``kernel == 0`` means ``skip``."""

    token: str
    kernel: int = 0
    expand: int = 0
    groups: int = 1

    @property
    def is_skip(self) -> bool:
        return self.kernel == 0


def parse_token(token: str) -> Op:
    """Parse a candidate token; raises ``ValueError`` naming the token and the grammar."""
    if token == SKIP:
        return Op(SKIP)
    m = _TOKEN.match(token) if isinstance(token, str) else None
    if m is None:
        raise ValueError(f"malformed token {token!r}: expected 'skip' or k<kernel>e<expand>[_g<groups>], e.g. 'k5e6'")
    kernel, expand, groups = int(m["k"]), int(m["e"]), int(m["g"] or 1)
    if kernel % 2 == 0:
        raise ValueError(f"malformed token {token!r}: kernel size must be odd")
    return Op(token, kernel, expand, groups)

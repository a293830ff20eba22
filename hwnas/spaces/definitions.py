"""The chain spaces of the three hardware-aware papers, as data.

- ``proxyless``: ProxylessNAS (Cai et al., ICLR 2019, Sec. 4 / Appendix): the MobileNetV2 skeleton
  (stem 32, fixed first block MBConv1 3x3 c16, stages 24/40/80/96/192/320 of 4/4/4/4/4/1 layers,
  head 1280, ReLU6); candidates MBConv k{3,5,7} x e{3,6}, plus the zero op (``skip``) on every layer
  that is not the first of its stage.
- ``fbnet``: FBNet (Wu et al., CVPR 2019, Table 1 and Table 2): stem 16, 22 searched TBS layers
  (c16 x1, c24 x4, c32 x4, c64 x4, c112 x4, c184 x4, c352 x1), head 1984, ReLU; 9 candidates
  k3/k5 x {e1, e1 group 2, e3, e6} and ``skip`` (on a stage's first layer a 1x1 projection). FBNet's
  block keeps its 1x1 expansion at e=1 (``pw_at_e1``).
- ``spnas``: Single-Path NAS (Stamoulis et al., ECML-PKDD 2019, Sec. 3 and Fig. 5): the
  MnasNet/MobileNetV2 skeleton (stem 32, fixed SepConv 3x3 c16, stages 24/40/80/96/192/320 of
  4/4/4/4/4/1 layers, head 1280, ReLU); candidates k{3,5} x e{3,6}, and ``skip`` where a residual
  exists (not on a stage's first layer).
- ``densenas``: DenseNAS's MobileNetV2-based space (Fang et al., CVPR 2020, Sec. 4.1, and the released
  ``configs/imagenet_search_cfg_mbv2.yaml``): stem 16, fixed first block MBConv1 3x3 c16, six stages of
  alternative widths (24 | 32 40 48 | 56 64 72 | 96 112 128 | 160 176 192 | 320 352 384, strides
  2/2/2/1/2/1, 3 stacked layers per block, none in the last stage), every node linked to the next 4 up to
  one stage ahead, final 1x1 conv 1984, ReLU6; candidates MBConv k{3,5,7} x e{3,6}, plus ``skip`` on
  stacked layers. See hwnas.spaces.dense.
- ``darts``: the DARTS cell space (Liu et al., ICLR 2019), see hwnas.spaces.cell.
- ``nb201``: the NAS-Bench-201 cell space (Dong & Yang, ICLR 2020), see hwnas.spaces.nb201.
"""
from __future__ import annotations

from hwnas.spaces.cell import SPACE as DARTS
from hwnas.spaces.chain import ChainSpace
from hwnas.spaces.dense import DenseSpace
from hwnas.spaces.nb201 import SPACE as NB201


def _stages(widths, depths, strides):
    return [{"c": c, "n": n, "s": s} for c, n, s in zip(widths, depths, strides)]


_COMMON = {"width_mult": 1.0, "resolution": 224, "num_classes": 1000, "dropout": 0.0}

PROXYLESS = ChainSpace(
    name="proxyless",
    candidates=("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6"),
    skip_where="inner",
    defaults={"stem": 32, "first": {"token": "k3e1", "c": 16},
              "stages": _stages((24, 40, 80, 96, 192, 320), (4, 4, 4, 4, 4, 1), (2, 2, 2, 1, 2, 1)),
              "head": 1280, "act": "relu6", "pw_at_e1": False, **_COMMON},
    paper="Cai, Zhu, Han. ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware. ICLR 2019.",
)

FBNET = ChainSpace(
    name="fbnet",
    candidates=("k3e1", "k3e1_g2", "k3e3", "k3e6", "k5e1", "k5e1_g2", "k5e3", "k5e6"),
    skip_where="everywhere",
    defaults={"stem": 16, "first": None,
              "stages": _stages((16, 24, 32, 64, 112, 184, 352), (1, 4, 4, 4, 4, 4, 1), (1, 2, 2, 2, 1, 2, 1)),
              "head": 1984, "act": "relu", "pw_at_e1": True, **_COMMON},
    paper="Wu et al. FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural Architecture Search. CVPR 2019.",
)

SPNAS = ChainSpace(
    name="spnas",
    candidates=("k3e3", "k3e6", "k5e3", "k5e6"),
    skip_where="inner",
    defaults={"stem": 32, "first": {"token": "k3e1", "c": 16},
              "stages": _stages((24, 40, 80, 96, 192, 320), (4, 4, 4, 4, 4, 1), (2, 2, 2, 1, 2, 1)),
              "head": 1280, "act": "relu", "pw_at_e1": False, **_COMMON},
    paper="Stamoulis et al. Single-Path NAS: Designing Hardware-Efficient ConvNets in less than 4 Hours. ECML-PKDD 2019.",
)

DENSENAS = DenseSpace(
    name="densenas",
    candidates=("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6"),
    defaults={"stem": 16, "first": {"token": "k3e1", "c": 16},
              "stages": [{"c": [24], "s": 2, "n": 3}, {"c": [32, 40, 48], "s": 2, "n": 3},
                         {"c": [56, 64, 72], "s": 2, "n": 3}, {"c": [96, 112, 128], "s": 1, "n": 3},
                         {"c": [160, 176, 192], "s": 2, "n": 3}, {"c": [320, 352, 384], "s": 1, "n": 0}],
              "reach": 4, "head": 1984, "resolution": 224, "num_classes": 1000, "act": "relu6", "dropout": 0.0},
    paper="Fang et al. Densely Connected Search Space for More Flexible Neural Architecture Search. CVPR 2020.",
)

#: every space by name; ``darts`` and ``nb201`` are cell spaces, the others chain spaces.
SPACES: dict = {s.name: s for s in (PROXYLESS, FBNET, SPNAS, DARTS, NB201, DENSENAS)}
CHAIN_SPACES = ("proxyless", "fbnet", "spnas")

"""Published CIFAR-10 genotypes of the DARTS family as ``darts``-space Arch data (the evaluation network:
C=36, 20 cells, auxiliary head on, 32x32, 10 classes).

Genotypes as released (``genotypes.py`` of each repository; the pair order inside a node does not
matter, a node sums its two edges):

- ``darts_v1``, ``darts_v2``: Liu et al. ICLR 2019, ``quark0/darts: cnn/genotypes.py`` (DARTS_V1 first
  order, DARTS_V2 second order). Published 3.3M parameters each (Table 1).
- ``pcdarts``: Xu et al. ICLR 2020, ``yuhuixu1993/PC-DARTS: genotypes.py`` (PC_DARTS_cifar). 3.6M.
- ``gdas``: Dong & Yang CVPR 2019, ``D-X-Y/AutoDL-Projects`` (GDAS_V1, reduction cell searched too).
  3.4M (Table 2, "GDAS"; the 2.5M figure is GDAS with the fixed FRC reduction cell).
- ``pdarts``: Chen et al. ICCV 2019, ``chenxin061/pdarts: genotypes.py`` (PDARTS). 3.4M.

The published counts exclude the auxiliary head (the DARTS code's ``count_parameters_in_MB`` skips
parameters named ``auxiliary``); so does ``hwnas.spaces.builder.count_params`` by default, and the
figures below are compared at the papers' precision (0.1M).
"""
from __future__ import annotations

import copy

_CONFIG = {"C": 36, "layers": 20, "auxiliary": True, "resolution": 32, "num_classes": 10}


def _preset(normal, reduce) -> dict:
    return {"space": "darts", "config": dict(_CONFIG),
            "genotype": {"normal": [list(p) for p in normal], "normal_concat": [2, 3, 4, 5],
                         "reduce": [list(p) for p in reduce], "reduce_concat": [2, 3, 4, 5]}}


CELL_PRESETS: dict[str, dict] = {
    "darts_v1": _preset(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]),
    "darts_v2": _preset(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
    "pcdarts": _preset(
        [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
         ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]),
    "gdas": _preset(
        [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_5x5", 4), ("sep_conv_3x3", 3)],
        [("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("sep_conv_5x5", 1),
         ("dil_conv_5x5", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_5x5", 1)]),
    "pdarts": _preset(
        [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
         ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)]),
}

#: published parameter counts (millions, auxiliary head excluded) and CIFAR-10 test error (%).
CELL_PUBLISHED: dict[str, dict] = {
    # The released DARTS_V1 genotype builds 3,169,414 parameters (3.2M); Table 1 prints 3.3M for both orders.
    "darts_v1": {"params_m": 3.3, "error": 3.00, "source": "Liu et al. ICLR 2019, Table 1 (first order)",
                 "built_differs": True},
    "darts_v2": {"params_m": 3.3, "error": 2.76, "source": "Liu et al. ICLR 2019, Table 1 (second order)"},
    "pcdarts": {"params_m": 3.6, "error": 2.57, "source": "Xu et al. ICLR 2020, Table 1"},
    "gdas": {"params_m": 3.4, "error": 2.93, "source": "Dong & Yang CVPR 2019, Table 1"},
    "pdarts": {"params_m": 3.4, "error": 2.50, "source": "Chen et al. ICCV 2019, Table 1"},
}


def get_cell_preset(name: str) -> dict:
    return copy.deepcopy(CELL_PRESETS[name])

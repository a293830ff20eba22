"""The NAS-Bench-201 search network (Dong & Yang, ICLR 2020, Sec. 5: the benchmark's paper runs DARTS,
GDAS and the others on its own network): the ``nb201`` space's network at the config's ``C`` and ``N``
with a mixed op on every edge of every cell. The 6 decisions are shared by all cells, so decision ``i``
configures one mixed op per cell (``decision_ops``). BatchNorms inside the cells are not affine (the
DARTS-family search setting); the stem, the reduction blocks and the head are the benchmark's.
"""
from __future__ import annotations

from torch import nn

from hwnas.mixed.base import MixedOp
from hwnas.mixed.factory import CandidateFactory
from hwnas.spaces.nb201 import EDGES, OPS, NB201Network, make_op


class SearchCell(nn.Module):
    def __init__(self, channels: int, mixed_op: type[MixedOp]):
        super().__init__()
        factory = CandidateFactory(lambda t, d, c=channels: make_op(t, c // d, affine=False), channels, channels, 1)
        self.edges = nn.ModuleList(mixed_op.build(OPS, factory) for _ in EDGES)

    def forward(self, x):
        states = [x]
        for node in range(1, 4):
            outs = [self.edges[k](states[src]) for k, (n, src) in enumerate(EDGES) if n == node]
            states.append(sum(outs[1:], outs[0]))
        return states[-1]


class NB201Supernet(nn.Module):
    def __init__(self, space, config: dict, mixed_op: type[MixedOp], resolution: int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        cfg = space.resolve_config({**config, **({"num_classes": num_classes} if num_classes else {})})
        self.space, self.config = space, cfg
        self.resolution = int(resolution or cfg["resolution"])
        self.net = NB201Network(cfg, self.resolution, make_cell=lambda stage, c: SearchCell(c, mixed_op))
        self.search_cells = [m for m in self.net.cells if isinstance(m, SearchCell)]

    @property
    def choices(self) -> list[tuple[str, ...]]:
        return [OPS] * len(EDGES)

    def decision_ops(self, i: int) -> list[MixedOp]:
        return [cell.edges[i] for cell in self.search_cells]

    def forward(self, x):
        return self.net(x)

    def derive(self, log_probs, edge_log_weights=None) -> list[str]:
        """Each edge's strongest op, ``none`` included (the benchmark's DARTS code, ``genotype()``)."""
        return self.space.derive(self.choices, log_probs)

    def child_state_dict(self, tokens) -> None:
        """None: the search cells' BatchNorms are not affine, so a derived cell is trained from scratch
        (as the benchmark's paper evaluates searched cells: by looking up or training the cell)."""
        return None

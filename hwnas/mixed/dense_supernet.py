"""The dense super network of the DenseNAS space (Fang et al., CVPR 2020, Sec. 3.1-3.2, Fig. 2).

Node 0 is the stem and the fixed first block; routing block ``j`` takes the outputs of every node ``n`` that
links to it, each through its own head layer (shape alignment ``w_n -> w_j``, one mixed op over the MBConv
candidates), sums them weighted by the transition probabilities ``w_{n->j}`` the strategy sets
(``route_weights[n]``, over ``n``'s successors: ``softmax(beta_n)``; Sec. 3.2's ``x_j = sum_n w_{n->j}
O_{n->j}(x_n)``), and runs its stacked layers (mixed ops over the candidates and ``skip``). The sink sums,
the same way, the 1x1 head convs (pooled) of the last stage's blocks (the released ``Conv1_1_Block``); the
classifier follows. With ``path`` set (a list of nodes) only that path's head layers and blocks run, with
weight 1: a child inside the supernet.

Every mixed op is built by the chain space's module code (``ChainSpace.make_module``), so a child's weights
load into the chain network ``DenseSpace.build_child`` builds (``child_state_dict``).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from hwnas.mixed.base import MixedOp
from hwnas.mixed.factory import CandidateFactory
from hwnas.spaces.dense import SINK_OP
from hwnas.spaces.tokens import SKIP


class DenseSupernet(nn.Module):

    def __init__(self, space, config: dict, mixed_op: type[MixedOp], resolution: int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        cfg = space.resolve_config({**config, **({"num_classes": num_classes} if num_classes else {})})
        self.space, self.config = space, cfg
        self.structure = space.structure(cfg)
        chain_cfg = space.chain_defaults(cfg)
        plan = space.chain.plan(chain_cfg, resolution)
        res = space.stage_resolutions(cfg, resolution)  # the strides at this resolution
        make = lambda part, token=None: space.chain.make_module(part, token, chain_cfg)  # noqa: E731
        self.stem, self.first = make(plan.stem), make(plan.first)
        nodes = self.structure.nodes
        sink = len(nodes) - 1

        def mixed(part, tokens, where: str) -> MixedOp:
            try:
                factory = CandidateFactory(
                    lambda t, d, p=part: make(replace(p, cin=p.cin // d, cout=p.cout // d) if d > 1 else p, t),
                    part.cin, part.cout, part.stride)
                return mixed_op.build(tuple(tokens), factory)
            except ValueError as e:
                raise ValueError(f"space {space.name!r}, {where}: {e}") from None

        self.heads = nn.ModuleDict()
        for n, node in enumerate(nodes):
            for j in node.successors:
                tokens = (SINK_OP,) if j == sink else space.candidates
                self.heads[f"{n}>{j}"] = mixed(space.part(cfg, n, j, res), tokens, f"head {n}->{j}")
        self.stacks = nn.ModuleList()
        for n, node in enumerate(nodes):
            self.stacks.append(nn.ModuleList(mixed(space.part(cfg, n, None, res), space.candidates + (SKIP,),
                                                   f"block {n}.{k + 1}") for k in range(node.layers)))
        self.classifier = make(plan.classifier)
        #: per node with successors, the weights of its outgoing links (set by the strategy; None: every link
        #: 1/|out(n)|, what a method without route parameters, One-Shot's all-paths forward, runs)
        self.route_weights: list[torch.Tensor | None] = [None] * len(nodes)
        #: the nodes of the one path to run (a child), or None (the dense forward)
        self.path: list[int] | None = None

    # -- the mixed ops a strategy drives ---------------------------------------------------------------
    @property
    def mixed(self) -> list[MixedOp]:
        """Every mixed op: the head layers (in the order of ``heads``), then the stacked layers."""
        return list(self.heads.values()) + [op for stack in self.stacks for op in stack]

    @property
    def choices(self) -> list[tuple[str, ...]]:
        """The space's decisions' choices (route tokens carry the head op; ``-`` off the path)."""
        return [d.choices for d in self.space.decisions(self.config)]

    def derive(self, log_probs) -> list[str]:
        return self.space.derive(self.choices, log_probs)

    def set_child(self, tokens: list[str]) -> None:
        """Run exactly the network ``tokens`` describe: its path, and every mixed op on it on its token."""
        st = self.structure
        self.path = self.space.path_nodes(self.config, tokens)
        for n, nxt in zip(self.path, self.path[1:]):
            op = self.heads[f"{n}>{nxt}"]
            op.select(op.tokens.index(tokens[st.route[n]].split(":", 1)[1]))
        for n in self.path[1:]:
            for op, i in zip(self.stacks[n], st.stack[n]):
                op.select(op.tokens.index(tokens[i]))

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(self.stem(x))
        if self.path is not None:
            for n, j in zip(self.path, self.path[1:]):
                x = self.heads[f"{n}>{j}"](x)
                for op in self.stacks[j]:
                    x = op(x)
            return self.classifier(x)
        nodes = self.structure.nodes
        out: list[torch.Tensor | None] = [x] + [None] * (len(nodes) - 1)
        for j in range(1, len(nodes)):
            total = None
            for n in range(j):
                if j not in nodes[n].successors:
                    continue
                w = self.route_weights[n]
                k = nodes[n].successors.index(j)
                share = 1.0 / len(nodes[n].successors) if w is None else w[k].to(out[n].dtype)
                term = share * self.heads[f"{n}>{j}"](out[n])
                total = term if total is None else total + term
            for op in self.stacks[j]:
                total = op(total)
            out[j] = total
        return self.classifier(out[-1])

    def weight_parameters(self):
        return self.parameters()

    def child_state_dict(self, tokens: list[str]) -> dict[str, torch.Tensor]:
        """The weights of the child ``tokens`` in the layout of ``DenseSpace.build_child``'s chain network."""
        st = self.structure
        path = self.space.path_nodes(self.config, tokens)
        out = {f"{name}.{k}": v.clone() for name in ("stem", "first", "classifier")
               for k, v in getattr(self, name).state_dict().items()}
        n = path[-2]  # into the sink: the chain's head
        out.update({f"head.{k}": v for k, v in self.heads[f"{n}>{path[-1]}"].child_state_dict(SINK_OP).items()})
        layer = 0
        for n, j in zip(path[:-2], path[1:-1]):
            ops = [(self.heads[f"{n}>{j}"], tokens[st.route[n]].split(":", 1)[1])]
            ops += [(op, tokens[i]) for op, i in zip(self.stacks[j], st.stack[j])]
            for op, token in ops:
                out.update({f"layers.{layer}.{k}": v for k, v in op.child_state_dict(token).items()})
                layer += 1
        return out

"""A supernet of a chain space: the child network's fixed parts around one mixed op per searchable
layer, each mixed op holding every candidate of that layer built by the same code as the child."""
from __future__ import annotations

import torch
from torch import nn

from dataclasses import replace

from hwnas.mixed.base import MixedOp
from hwnas.mixed.factory import CandidateFactory
from hwnas.spaces.chain import ChainSpace, Plan


class ChainSupernet(nn.Module):

    def __init__(self, space: ChainSpace, config: dict, mixed_op: type[MixedOp], resolution: int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        cfg = space.resolve_config({**config, **({"num_classes": num_classes} if num_classes else {})})
        self.space, self.config = space, cfg
        self.plan: Plan = space.plan(cfg, resolution)
        make = lambda part, token=None: space.make_module(part, token, cfg)  # noqa: E731
        self.stem = make(self.plan.stem)
        self.first = make(self.plan.first) if self.plan.first else nn.Identity()
        mixed = []
        for i, p in enumerate(self.plan.layers):
            try:
                factory = CandidateFactory(
                    lambda t, d, p=p: make(replace(p, cin=p.cin // d, cout=p.cout // d) if d > 1 else p, t),
                    p.cin, p.cout, p.stride)
                mixed.append(mixed_op.build(p.choices, factory))
            except ValueError as e:
                raise ValueError(f"space {space.name!r}, layer {i}: {e}") from None
        self.mixed = nn.ModuleList(mixed)
        self.head = make(self.plan.head)
        self.classifier = make(self.plan.classifier)

    @property
    def choices(self) -> list[tuple[str, ...]]:
        return [m.tokens for m in self.mixed]

    def decision_ops(self, i: int) -> list[MixedOp]:
        """The mixed ops that decision ``i`` (layer ``i``) configures: just that layer's."""
        return [self.mixed[i]]

    def derive(self, log_probs) -> list[str]:
        """The space's unconstrained derivation: the most probable candidate of every layer."""
        return self.space.derive(self.choices, log_probs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(self.stem(x))
        for op in self.mixed:
            x = op(x)
        return self.classifier(self.head(x))

    def weight_parameters(self):
        return self.parameters()

    def child_state_dict(self, tokens: list[str]) -> dict[str, torch.Tensor]:
        """The weights of the child ``tokens`` as a state dict for ``hwnas.spaces.builder.build_child``."""
        out = {name: t for name, t in self.state_dict().items() if not name.startswith("mixed.")}
        for i, (op, token) in enumerate(zip(self.mixed, tokens, strict=True)):
            out.update({f"layers.{i}.{k}": v for k, v in op.child_state_dict(token).items()})
        return out

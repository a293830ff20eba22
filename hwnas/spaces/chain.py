"""Chain search spaces as data: a skeleton (stem, stages of layers, head) and a candidate set per layer.

A space fixes *what may be chosen* (its candidate tokens and where ``skip`` is allowed); the skeleton
lives in an Arch's ``config`` so that, e.g., the wider released ProxylessNAS GPU model is an Arch of
the same space as the Mobile one. ``plan`` turns a config into the concrete list of parts with their
shapes at a given input resolution; the child builder, the supernet and the latency profiler all read
that one plan, so a block profiled for the latency table is the block that is trained and deployed.

Config keys (all optional; missing keys take the space's defaults)::

    stem        channels of the 3x3 stride-2 stem conv-bn-act
    first       {"token": "k3e1", "c": 16}: a fixed first block (stride 1), or None
    stages      [{"c": channels, "n": layers, "s": stride of the stage's first layer}, ...]
    head        channels of the final 1x1 conv-bn-act (before global pooling)
    width_mult  multiplies stem/first/stage widths (rounded to multiples of 8); the head only grows
    resolution  deploy input resolution (the latency table's), default 224
    num_classes classifier outputs, default 1000
    act         "relu6" | "relu" | "hswish" | "silu"
    pw_at_e1    keep the 1x1 expansion conv at e=1 (FBNet's block)
    dropout     dropout before the classifier

Small inputs: a network built for an input smaller than the deploy one (digits at 32x32) turns its
earliest stride-2 steps into stride 1 until at most ``floor(log2(resolution / 2))`` downsamplings
remain, so the last feature map stays at least 2x2: at 32x32 only the stem's stride goes (4
downsamplings, 32 -> 2); at 64x64 and above nothing changes. (CIFAR-style MobileNetV2 also drops the
first stage's stride, ending at 4x4; that costs about 4x the compute in the early stages, which a
2-core CPU search on a proxy set cannot afford.) Parameter shapes do not depend on strides: weights
trained at 32x32 load into the 224x224 network unchanged.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial

from torch import nn

from hwnas.blocks import ConvBNAct, Head, Classifier, MBConv, make_divisible
from hwnas.spaces.base import Decision, LatencyTerms, Space
from hwnas.spaces.tokens import SKIP, parse_token


class ArchError(ValueError):
    """A malformed Arch or config; the message names the field, the bad value and what is allowed."""


CONFIG_KEYS = ("stem", "first", "stages", "head", "width_mult", "resolution", "num_classes", "act",
               "pw_at_e1", "dropout")


@dataclass(frozen=True)
class Part:
    """One concrete piece of a planned network.

    ``kind`` is "stem", "first", "layer", "head" or "classifier"; ``token`` the block token for
    "first"/"layer"; ``in_res`` the input feature-map size. ``choices`` are the allowed tokens of a
    searchable layer (empty for fixed parts)."""

    kind: str
    cin: int
    cout: int
    stride: int = 1
    in_res: int = 1
    token: str = ""
    stage: int = -1
    position: int = -1
    choices: tuple[str, ...] = ()

    @property
    def out_res(self) -> int:
        return (self.in_res - 1) // self.stride + 1


@dataclass(frozen=True)
class Plan:
    """Every part of a network at one resolution, in order. ``layers`` are the searchable ones."""

    config: dict
    resolution: int
    stem: Part
    first: Part | None
    layers: tuple[Part, ...]
    head: Part
    classifier: Part

    @property
    def fixed(self) -> tuple[Part, ...]:
        return tuple(p for p in (self.stem, self.first, self.head, self.classifier) if p is not None)


@dataclass(frozen=True)
class ChainSpace(Space):
    """A chain search space: candidate tokens, where ``skip`` is allowed, and the default skeleton.
    Its decisions are the searchable layers, independent of each other (the ``Space`` defaults).

    ``skip_where``: "inner" (every layer that is not the first of its stage: the block is dropped
    and its residual remains, ProxylessNAS's zero op), "everywhere" (also on a stage's first layer,
    where it is a 1x1 conv-bn-act projection, as FBNet's), or "nowhere". ``zero_init_residual``: every
    residual MBConv starts as the identity (``MBConv``'s ``zero_init``).
    """

    name: str
    candidates: tuple[str, ...]
    skip_where: str
    defaults: dict
    paper: str
    notes: str = ""
    zero_init_residual: bool = False

    capabilities = frozenset({"layers"})
    chained_blocks = True

    def choices(self, first_of_stage: bool) -> tuple[str, ...]:
        if self.skip_where == "everywhere" or (self.skip_where == "inner" and not first_of_stage):
            return self.candidates + (SKIP,)
        return self.candidates

    # -- config -----------------------------------------------------------------------------
    def resolve_config(self, config: dict | None = None) -> dict:
        """Defaults overlaid with ``config``, validated; raises ArchError naming the bad field."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ArchError(f"space {self.name!r}: unknown config key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
        out = copy.deepcopy(self.defaults)
        out.update(copy.deepcopy(config))
        _check_config(self.name, out)
        return out

    def num_layers(self, config: dict | None = None) -> int:
        return sum(s["n"] for s in self.resolve_config(config)["stages"])

    def decisions(self, config: dict | None = None) -> tuple[Decision, ...]:
        return tuple(Decision(f"layer {i}", p.choices) for i, p in enumerate(self.plan(config).layers))

    def check_layers(self, config: dict, layers) -> None:
        plan = self.plan(config)
        if not isinstance(layers, list):
            raise ArchError(f"arch layers must be a list of tokens, got {type(layers).__name__}")
        if len(layers) != len(plan.layers):
            raise ArchError(f"arch has {len(layers)} layers but its {self.name!r} config has "
                            f"{len(plan.layers)} (stage depths {[s['n'] for s in plan.config['stages']]})")
        for i, (token, part) in enumerate(zip(layers, plan.layers)):
            if token not in part.choices:
                try:
                    parse_token(token)
                    why = "not a candidate here"
                except ValueError as e:
                    why = str(e)
                raise ArchError(f"layer {i} (stage {part.stage}, position {part.position}): token {token!r} "
                                f"is {why}; allowed: {', '.join(part.choices)}")

    # -- building ---------------------------------------------------------------------------
    def build_child(self, layers: list[str], config: dict, resolution: int | None = None) -> nn.Module:
        """stem -> [first] -> layers -> head -> classifier (``hwnas.spaces.builder.ChildNet``)."""
        from hwnas.spaces.builder import ChildNet

        plan = self.plan(config, resolution)
        make = lambda part, token=None: self.make_module(part, token, plan.config)  # noqa: E731
        return ChildNet(make(plan.stem), make(plan.first) if plan.first else None,
                        [make(p, t) for p, t in zip(plan.layers, layers)], make(plan.head), make(plan.classifier))

    def build_supernet(self, config: dict, mixed_op, resolution: int | None = None, num_classes: int | None = None,
                       **options) -> nn.Module:
        from hwnas.mixed.supernet import ChainSupernet

        if options:
            raise ValueError(f"space {self.name!r}: the chain supernet takes no options, got {sorted(options)}")
        return ChainSupernet(self, config, mixed_op, resolution, num_classes)

    # -- latency ----------------------------------------------------------------------------
    def latency_terms(self, config: dict) -> LatencyTerms:
        plan = self.plan(config)
        keys = lambda p, t=None: [s] if (s := self.signature(p, t, config)) is not None else []  # noqa: E731
        return LatencyTerms(choices=[p.choices for p in plan.layers],
                            signatures=[[keys(p, t) for t in p.choices] for p in plan.layers],
                            fixed=[(p.kind, keys(p)) for p in plan.fixed])

    def profiled_blocks(self, config: dict | None = None) -> list[tuple[str, object, tuple[int, ...]]]:
        """Every distinct (part, candidate) at the config's deploy resolution: the fixed parts (stem, first
        block, head, classifier) and every candidate of every layer; identities (``skip`` where the shape
        is kept) cost nothing and are not listed."""
        cfg = self.resolve_config(config)
        plan = self.plan(cfg)
        items = [(p, None) for p in plan.fixed] + [(p, t) for p in plan.layers for t in p.choices]
        out, seen = [], set()
        for part, token in items:
            sig = self.signature(part, token, cfg)
            if sig is None or sig in seen:
                continue
            seen.add(sig)
            shape = (part.cin,) if part.kind == "classifier" else (part.cin, part.in_res, part.in_res)
            out.append((sig, partial(self.make_module, part, token, cfg), shape))
        return out

    def block_positions(self, config: dict, layers: list[str]) -> list[tuple[str, str | None]]:
        """``(attribute path, signature)`` of every top-level block of the child of ``layers``, in the order
        they run; ``None`` for blocks with no row (identities)."""
        plan = self.plan(config)
        out = [("stem", self.signature(plan.stem, None, config))]
        if plan.first is not None:
            out.append(("first", self.signature(plan.first, None, config)))
        out += [(f"layers.{i}", self.signature(p, t, config)) for i, (p, t) in enumerate(zip(plan.layers, layers))]
        out += [("head", self.signature(plan.head, None, config)),
                ("classifier", self.signature(plan.classifier, None, config))]
        return out

    # -- planning ---------------------------------------------------------------------------
    def plan(self, config: dict | None = None, resolution: int | None = None) -> Plan:
        """Concrete parts of the network for ``config`` at input ``resolution`` (default: the
        config's deploy resolution), with small-input stride adaptation (see module docstring)."""
        cfg = self.resolve_config(config)
        res = int(resolution or cfg["resolution"])
        if res < 8:
            raise ArchError(f"resolution {res} is too small (minimum 8)")
        wm = cfg["width_mult"]
        width = lambda c: make_divisible(c * wm, 8)  # noqa: E731
        stage_strides = _adapt_strides([2] + [s["s"] for s in cfg["stages"]], res)
        stem_stride, stage_strides = stage_strides[0], stage_strides[1:]

        stem = Part("stem", 3, width(cfg["stem"]), stem_stride, res)
        cin, r = stem.cout, stem.out_res
        first = None
        if cfg["first"] is not None:
            first = Part("first", cin, width(cfg["first"]["c"]), 1, r, token=cfg["first"]["token"])
            cin = first.cout
        layers = []
        for si, (stage, stride) in enumerate(zip(cfg["stages"], stage_strides)):
            cout = width(stage["c"])
            for pos in range(stage["n"]):
                s = stride if pos == 0 else 1
                layers.append(Part("layer", cin, cout, s, r, stage=si, position=pos,
                                   choices=self.choices(pos == 0)))
                r = (r - 1) // s + 1
                cin = cout
        head_c = make_divisible(cfg["head"] * max(1.0, wm), 8)
        head = Part("head", cin, head_c, 1, r)
        classifier = Part("classifier", head_c, cfg["num_classes"], 1, 1)
        return Plan(cfg, res, stem, first, tuple(layers), head, classifier)

    # -- modules and signatures ---------------------------------------------------------------
    def make_module(self, part: Part, token: str | None = None, config: dict | None = None) -> nn.Module:
        """The plain module of ``part`` (with ``token`` for a searchable layer)."""
        cfg = config if config is not None else self.defaults
        act = cfg.get("act", "relu6")
        if part.kind == "stem":
            return ConvBNAct(part.cin, part.cout, 3, part.stride, act=act)
        if part.kind == "head":
            return Head(part.cin, part.cout, act=act)
        if part.kind == "classifier":
            return Classifier(part.cin, part.cout, cfg.get("dropout", 0.0))
        op = parse_token(token or part.token)
        if op.is_skip:
            if part.stride == 1 and part.cin == part.cout:
                return nn.Identity()
            return ConvBNAct(part.cin, part.cout, 1, part.stride, act=act)
        return MBConv(part.cin, part.cout, op.kernel, op.expand, part.stride, op.groups, act=act,
                      pw_at_e1=bool(cfg.get("pw_at_e1", False)), zero_init=self.zero_init_residual)

    def signature(self, part: Part, token: str | None = None, config: dict | None = None) -> str | None:
        """The latency-table key of ``part`` with ``token`` at the deploy shape, e.g.
        ``k5e6:24>40:s2:r56:relu6``; None for an identity (costs nothing, never profiled)."""
        cfg = config if config is not None else self.defaults
        act = cfg.get("act", "relu6")
        if part.kind in ("stem", "head"):
            return f"{part.kind}:{part.cin}>{part.cout}:s{part.stride}:r{part.in_res}:{act}"
        if part.kind == "classifier":
            return f"classifier:{part.cin}>{part.cout}"
        token = token or part.token
        op = parse_token(token)
        if op.is_skip and part.stride == 1 and part.cin == part.cout:
            return None
        pw = ":pw1" if (not op.is_skip and op.expand == 1 and cfg.get("pw_at_e1", False)) else ""
        return f"{token}:{part.cin}>{part.cout}:s{part.stride}:r{part.in_res}:{act}{pw}"


def _adapt_strides(strides: list[int], resolution: int) -> list[int]:
    """Turn the earliest stride-2 steps into stride 1 until at most floor(log2(res/2)) remain."""
    allowed = max(0, int(math.floor(math.log2(resolution / 2))))
    excess = sum(1 for s in strides if s > 1) - allowed
    out = []
    for s in strides:
        if s > 1 and excess > 0:
            out.append(1)
            excess -= 1
        else:
            out.append(s)
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_config(space: str, cfg: dict) -> None:
    where = f"space {space!r} config"
    for key in ("stem", "head", "resolution", "num_classes"):
        if not _is_int(cfg[key]) or cfg[key] < 1:
            raise ArchError(f"{where}: {key}={cfg[key]!r} must be a positive integer")
    if not isinstance(cfg["width_mult"], (int, float)) or not 0 < cfg["width_mult"] <= 4:
        raise ArchError(f"{where}: width_mult={cfg['width_mult']!r} must be a number in (0, 4]")
    if cfg["act"] not in ("relu", "relu6", "hswish", "silu"):
        raise ArchError(f"{where}: act={cfg['act']!r}; allowed: relu, relu6, hswish, silu")
    if not isinstance(cfg.get("dropout", 0.0), (int, float)) or not 0 <= cfg.get("dropout", 0.0) < 1:
        raise ArchError(f"{where}: dropout={cfg.get('dropout')!r} must be in [0, 1)")
    first = cfg["first"]
    if first is not None:
        if not isinstance(first, dict) or set(first) != {"token", "c"} or not _is_int(first["c"]) or first["c"] < 1:
            raise ArchError(f"{where}: first={first!r} must be null or {{'token': 'k3e1', 'c': 16}}")
        try:
            if parse_token(first["token"]).is_skip:
                raise ValueError("the fixed first block cannot be 'skip'")
        except ValueError as e:
            raise ArchError(f"{where}: first block: {e}") from None
    stages = cfg["stages"]
    if not isinstance(stages, list) or not stages:
        raise ArchError(f"{where}: stages must be a non-empty list of {{'c', 'n', 's'}}")
    for i, st in enumerate(stages):
        if (not isinstance(st, dict) or set(st) != {"c", "n", "s"} or not all(_is_int(st[k]) for k in "cns")
                or st["c"] < 1 or st["n"] < 1 or st["s"] not in (1, 2)):
            raise ArchError(f"{where}: stage {i} = {st!r} must be {{'c': >=1, 'n': >=1, 's': 1|2}}")

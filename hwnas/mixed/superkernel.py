"""Single-Path NAS's superkernel layer (Stamoulis et al., ECML-PKDD 2019, Sec. 3.1-3.2): one MBConv
holding every candidate of a kernel x expansion grid.

The layer is the grid's largest candidate, ``k{k_max}e6``. Its depthwise ``k_max x k_max`` kernel runs
through ``hwnas.kernels.masked_dwconv``, which keeps the inner kernels and drops the outer rings and
the second half of the channels by the indicators of the learned thresholds (eq. 2-3 of the paper; the
kernel's docstring has the exact form). The channels the expansion decision drops are also zeroed after
the depthwise BatchNorm and activation (otherwise BN's shift would leak them into the projection), so
with the decisions fixed the layer computes exactly the child ``k{k}e{e}`` made of its cropped weights
(``child_state_dict``). Where the layer may be skipped (a residual layer whose choices include
``skip``), the residual branch is multiplied by the skip indicator ``1(||w_{k,e3}||^2 > t_skip)``.

Each decision is present only where the layer's choices need it: the kernel-size thresholds when more
than one kernel size is allowed, the expansion threshold when both e3 and e6 are, the skip threshold
when ``skip`` is. A layer whose choices are not such a grid (FBNet's e1 and grouped candidates) is
refused with a message naming them.
"""
from __future__ import annotations

import torch
from torch import nn

from hwnas.kernels import indicator, masked_dwconv, masked_dwconv_reference, superkernel_margins
from hwnas.mixed.base import MixedOp
from hwnas.spaces.tokens import SKIP, parse_token

#: a threshold value that fixes a decision: z = ||.||^2 - t is then -BIG (off) or +BIG (on).
BIG = 1e30
KERNELS = (3, 5, 7)


class SuperkernelOp(MixedOp):
    """State set by the strategy before each forward (``set_thresholds``): ``thresholds``, a 4-vector ``[t_k5, t_k7, t_e6,
    t_skip]`` (entries a layer has no decision for are ignored; ``fixed(token)`` gives the thresholds
    that select one candidate exactly)."""

    def __init__(self, tokens: tuple[str, ...], block: nn.Module, kernels: tuple[int, ...], expands: tuple[int, ...],
                 fused: bool = True):
        nn.Module.__init__(self)
        self.tokens = tuple(tokens)
        self.block = block
        self.kernels, self.expands = kernels, expands
        self.has_skip = SKIP in self.tokens
        self.k_max = max(kernels)
        self.fused = fused
        self.set_thresholds(None)
        body = block.body
        self.expand, self.dw, self.project = body[0], body[1], body[2]
        self.mid = self.dw[0].weight.shape[0]
        self.split = self.mid // 2 if len(expands) == 2 else self.mid

    @classmethod
    def build(cls, tokens, make) -> "SuperkernelOp":
        kernels, expands = grid_of(tokens, "Single-Path NAS")
        block = make(f"k{kernels[-1]}e{expands[-1]}")
        return cls(tuple(tokens), block, kernels, expands)

    # -- decisions ------------------------------------------------------------------------------------
    @property
    def thresholds(self) -> torch.Tensor | None:
        return self.__dict__["_thresholds"]

    def set_thresholds(self, t: torch.Tensor | None) -> None:
        """Use ``t`` (the strategy's parameter, a detached copy, or ``fixed(token)``) in the next forwards.
        Kept outside the module's parameters: the weight optimizer must never see the thresholds."""
        self.__dict__["_thresholds"] = t

    def _split_thresholds(self, t: torch.Tensor):
        t_kernel = t[: self.k_max // 2 - 1] if len(self.kernels) > 1 else None
        t_expand = t[2:3] if len(self.expands) == 2 else None
        t_skip = t[3:4] if self.has_skip else None
        return t_kernel, t_expand, t_skip

    def margins(self, thresholds: torch.Tensor | None = None):
        """``(z5, z7, z_e6, z_skip)`` (None where the layer has no such decision)."""
        t = self.thresholds if thresholds is None else thresholds
        t_kernel, t_expand, t_skip = self._split_thresholds(t.to(self.dw[0].weight.dtype))
        return superkernel_margins(self.dw[0].weight, t_kernel, t_expand, self.split, t_skip)

    def token_weights(self, soft: str | None = None) -> torch.Tensor:
        """One entry per token of the layer. Default: the 0/1 one-hot of the current decisions
        (straight-through gradients). ``soft="sum"``: each decision on with probability ``sigmoid(z)``,
        independently, and a token's probability summed over the decision states that give it (a
        distribution). ``soft="max"``: the largest such state probability instead of the sum, whose
        argmax is the current decisions' token (a skip collects the probability of 4 states, so the
        summed distribution can favour it while every decision says "keep")."""
        z5, z7, ze, zs = self.margins()
        one = self.dw[0].weight.new_ones(())
        if soft is None:
            d5, d7, de, ds = (one if z is None else indicator(z) for z in (z5, z7, ze, zs))
        else:
            d5, d7, de, ds = (one if z is None else torch.sigmoid(z) for z in (z5, z7, ze, zs))
        if soft == "max":  # a skipped layer takes its most probable inner state
            inner = [torch.maximum(d, 1 - d) for d, z in ((d5, z5), (d7, z7), (de, ze)) if z is not None]
            best_inner = torch.stack(inner).prod() if inner else one
            return torch.stack([(1 - ds) * best_inner if t == SKIP else self._token_weight(t, ds, d5, d7, de)
                                for t in self.tokens])
        return torch.stack([1 - ds if t == SKIP else self._token_weight(t, ds, d5, d7, de) for t in self.tokens])

    def _token_weight(self, token: str, ds, d5, d7, de) -> torch.Tensor:
        """``ds * P_k(d5, d7) * P_e(de)`` for a kernel/expansion token (the multilinear runtime form)."""
        o = parse_token(token)
        if len(self.kernels) == 1:
            pk = ds.new_ones(())
        else:
            pk = {3: 1 - d5, 5: d5 * (1 - d7) if 7 in self.kernels else d5, 7: d5 * d7}[o.kernel]
        pe = ({3: 1 - de, 6: de}[o.expand]) if len(self.expands) == 2 else ds.new_ones(())
        return ds * pk * pe

    def fixed(self, token: str) -> torch.Tensor:
        """Thresholds that make the layer compute exactly ``token``."""
        on, off = -BIG, BIG
        if token == SKIP:
            return torch.tensor([on, on, on, off])
        o = parse_token(token)
        return torch.tensor([on if o.kernel >= 5 else off, on if o.kernel >= 7 else off,
                             on if o.expand == 6 else off, on])

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.thresholds is None:
            raise RuntimeError("SuperkernelOp: the strategy set no thresholds")
        t = self.thresholds.to(device=x.device, dtype=self.dw[0].weight.dtype)
        t_kernel, t_expand, t_skip = self._split_thresholds(t)
        h = self.expand(x)
        conv = masked_dwconv if self.fused else masked_dwconv_reference
        dw_conv = self.dw[0]
        y = conv(h, dw_conv.weight, t_kernel, t_expand, stride=dw_conv.stride[0], channel_split=self.split)
        y = self.dw[2](self.dw[1](y))
        _, _, ze, zs = self.margins(t) if t_expand is not None or t_skip is not None else (None,) * 4
        if ze is not None:
            mask = torch.ones(self.mid, dtype=y.dtype, device=y.device)
            mask = torch.cat([mask[: self.split], indicator(ze).to(y.dtype).expand(self.mid - self.split)])
            y = y * mask.view(1, -1, 1, 1)
        out = self.project(y)
        if not self.block.use_residual:
            return out
        if zs is not None:
            out = indicator(zs).to(out.dtype) * out
        return x + out

    # -- the child's weights ------------------------------------------------------------------------
    def child_state_dict(self, token: str) -> dict[str, torch.Tensor]:
        """The weights of the plain child layer ``token`` (an MBConv's state dict; empty for skip)."""
        return crop_child_state(self.block, token, self.k_max, self.expands[-1])


def grid_of(tokens, method: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(kernels, expands)`` of a layer whose candidates are a kernel x expansion grid (k3[/k5[/k7]] x
    e3/e6, optionally skip), the layers whose candidates can be cut out of one ``k{max}e{max}`` MBConv;
    ValueError naming the candidates otherwise."""
    ops = [parse_token(t) for t in tokens if t != SKIP]
    kernels = tuple(sorted({o.kernel for o in ops}))
    expands = tuple(sorted({o.expand for o in ops}))
    grid = {(k, e) for k in kernels for e in expands}
    if (not ops or any(o.groups != 1 for o in ops) or {(o.kernel, o.expand) for o in ops} != grid
            or kernels != KERNELS[:len(kernels)] or expands not in ((3,), (6,), (3, 6))):
        raise ValueError(
            f"{method} needs layers whose candidates are a kernel x expansion grid "
            f"(k3[/k5[/k7]] x e3/e6, optionally skip); this layer has {', '.join(tokens)}")
    return kernels, expands


def candidate_cut(token: str, k_max: int, e_max: int, mid_max: int) -> tuple[int, int, int] | None:
    """Where candidate ``token`` sits in a ``k{k_max}e{e_max}`` MBConv with ``mid_max`` expansion channels:
    ``(kernel, offset of its centre kernel, expansion channels)``; None for skip."""
    if token == SKIP:
        return None
    o = parse_token(token)
    return o.kernel, (k_max - o.kernel) // 2, mid_max * o.expand // e_max


def crop_child_state(block: nn.Module, token: str, k_max: int, e_max: int) -> dict[str, torch.Tensor]:
    """The state dict of the plain MBConv ``token`` cut out of ``block``, the ``k{k_max}e{e_max}`` MBConv
    holding a grid's weights: the centre ``k x k`` of the depthwise kernel and the first ``mid``
    expansion channels (with their BatchNorm entries); empty for skip."""
    cut = candidate_cut(token, k_max, e_max, block.body[1][0].weight.shape[0])
    if cut is None:
        return {}
    k, off, mid = cut
    out = {}
    for name, v in block.state_dict().items():
        if v.dim() == 0:
            out[name] = v
        elif name.startswith("body.0."):
            out[name] = v[:mid]
        elif name == "body.1.0.weight":
            out[name] = v[:mid, :, off:off + k, off:off + k]
        elif name.startswith("body.1."):
            out[name] = v[:mid]
        elif name == "body.2.0.weight":
            out[name] = v[:, :mid]
        else:
            out[name] = v
    return {k: t.clone() for k, t in out.items()}

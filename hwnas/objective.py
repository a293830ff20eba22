"""The latency-target policy: what a target means and how a search honours it.

- ``parse_target`` / ``check_target``: a target as text (``20ms``, ``40%``...) to milliseconds, refused
  below the fastest architecture of the space (``LatencyTargetError``).
- ``LOWER_FRACTION``: a binding target ``T`` is met in the window ``[LOWER_FRACTION * T, T]``.
- ``most_probable_within`` / ``most_probable_cell_within``: the constrained derivation, the most probable
  architecture whose predicted latency lies in that window.
- ``LatencyMultiplier``: the Lagrange multiplier that steers the expected latency into the window while
  searching.
- ``latency_loss`` (``LOSS_FORMS``, ``DEFAULTS``): the ProxylessNAS latency-regularized loss forms.
- ``resolve_target`` (``Target``, ``parse_machine_factor``): a search's target in the table's milliseconds,
  resolved once before the search is built.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger("hwnas.search")

LOWER_FRACTION = 0.9  # a binding target is met in [0.9 T, T]
LOSS_FORMS = ("mul#log", "add#linear")
DEFAULTS = {"mul#log": {"alpha": 0.2, "beta": 0.3}, "add#linear": {"lambda": 0.1}}


class LatencyTargetError(ValueError):
    """An unreachable or malformed latency target."""


_TARGET = re.compile(r"^\s*(?P<v>\d+(?:\.\d*)?|\.\d+)\s*(?P<u>ms|us|s|%)?\s*$")


def parse_target(text: str | float | None, fastest_ms: float, slowest_ms: float) -> float | None:
    """``"20ms"``, ``"20"`` (ms), ``"800us"``, ``"0.02s"`` or ``"40%"`` (that far from the fastest
    to the slowest architecture of the space on this table) -> milliseconds; None stays None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = _TARGET.match(str(text))
    if m is None:
        raise LatencyTargetError(f"latency target {text!r} is not a number with unit ms, us, s or % (e.g. 20ms, 40%)")
    v, unit = float(m["v"]), m["u"] or "ms"
    if unit == "%":
        if not 0 <= v <= 100:
            raise LatencyTargetError(f"latency target {text!r}: a percentage must be within 0..100")
        return fastest_ms + v / 100.0 * (slowest_ms - fastest_ms)
    return v * {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]


def check_target(target_ms: float | None, fastest_ms: float, slowest_ms: float, where: str = "") -> bool:
    """True if the target binds. Raises LatencyTargetError below the fastest architecture."""
    if target_ms is None:
        return False
    if target_ms <= 0:
        raise LatencyTargetError(f"latency target must be positive, got {target_ms:g} ms")
    if target_ms < fastest_ms:
        raise LatencyTargetError(
            f"latency target {target_ms:.3f} ms is below the fastest architecture of the space{where} "
            f"({fastest_ms:.3f} ms; slowest {slowest_ms:.3f} ms)")
    return target_ms < slowest_ms


def most_probable_within(log_probs: list[np.ndarray], latencies: list[np.ndarray], fixed_ms: float,
                         lower_ms: float, upper_ms: float, bins: int = 20000) -> list[int]:
    """Indices (one per layer) maximizing the summed log-probability with predicted latency in
    ``[lower_ms, upper_ms]``; if no architecture reaches ``lower_ms`` under ``upper_ms``, the most
    probable one under ``upper_ms``. Raises LatencyTargetError if even that is impossible.

    Deriving an architecture from per-layer probabilities under a latency budget is a multiple-choice
    knapsack: choose one candidate per layer maximizing ``sum_l log p_l(c_l)`` subject to
    ``LAT_fixed + sum_l LAT_l(c_l)`` in ``[lower, upper]``. It is solved exactly (up to the latency
    quantization) by dynamic programming over latency in ``bins`` steps of ``upper / bins``; each
    candidate's latency is rounded *up*, so the result never exceeds ``upper``, and the lower bound is
    checked with the rounding slack taken against it. The unconstrained argmax is returned unchanged
    whenever it already lies inside the window."""
    budget = upper_ms - fixed_ms
    lat = [np.asarray(x, dtype=np.float64) for x in latencies]
    lp = [np.asarray(x, dtype=np.float64) for x in log_probs]
    if budget < sum(float(x.min()) for x in lat) - 1e-12:
        raise LatencyTargetError(f"no architecture fits under {upper_ms:.3f} ms")
    greedy = [int(np.argmax(x)) for x in lp]
    total = fixed_ms + sum(float(lat[i][j]) for i, j in enumerate(greedy))
    if lower_ms <= total <= upper_ms:
        return greedy
    width = max(budget, 1e-12) / bins
    score = np.full(bins + 1, -np.inf)
    score[0] = 0.0
    back = np.zeros((len(lat), bins + 1), dtype=np.int16)
    for i, (costs, logp) in enumerate(zip(lat, lp)):
        new = np.full(bins + 1, -np.inf)
        for j, (c, s) in enumerate(zip(costs, logp)):
            k = int(np.ceil(c / width - 1e-9))
            if k > bins:
                continue
            cand = np.full(bins + 1, -np.inf)
            cand[k:] = score[: bins + 1 - k] + s
            better = cand > new
            new[better] = cand[better]
            back[i, better] = j
        score = new
    slack = len(lat)  # each rounding-up adds less than one bin
    lo_bin = int(np.ceil((lower_ms - fixed_ms) / width)) + slack
    window = score.copy()
    window[: max(0, min(lo_bin, bins + 1))] = -np.inf
    end = int(np.argmax(window)) if np.isfinite(window).any() else int(np.argmax(score))
    if not np.isfinite(score[end]):
        raise LatencyTargetError(f"no architecture fits under {upper_ms:.3f} ms")
    choice = []
    for i in range(len(lat) - 1, -1, -1):
        j = int(back[i, end])
        choice.append(j)
        end -= int(np.ceil(lat[i][j] / width - 1e-9))
    return choice[::-1]


def most_probable_cell_within(log_probs: list[np.ndarray], latencies: list[np.ndarray], fixed_ms: float,
                              lower_ms: float, upper_ms: float, groups: list[list[int]], keep: int = 2,
                              none: int = 0, bins: int = 20000) -> list[int]:
    """``most_probable_within`` for a cell space: indices (one per edge decision) where every node keeps
    exactly ``keep`` incoming edges with an op other than ``none`` (index ``none``) and the rest are
    ``none``. Each node becomes one super-layer whose options are every choice of ``keep`` edges and of
    their ops (at most C(5, 2) * 7^2 = 490), scored by the sum of the chosen ops' log-probabilities, so
    the unconstrained optimum is the paper's derivation (the strongest edges with their strongest ops)."""
    from itertools import combinations, product

    options, node_lp, node_lat = [], [], []
    for group in groups:
        opts, lps, lats = [], [], []
        for edges in combinations(group, keep):
            op_lists = [[j for j in range(len(log_probs[i])) if j != none] for i in edges]
            for ops in product(*op_lists):
                opts.append(tuple(zip(edges, ops)))
                lps.append(sum(float(log_probs[i][j]) for i, j in zip(edges, ops)))
                lats.append(sum(float(latencies[i][j]) for i, j in zip(edges, ops)))
        options.append(opts)
        node_lp.append(np.asarray(lps))
        node_lat.append(np.asarray(lats))
    picks = most_probable_within(node_lp, node_lat, fixed_ms, lower_ms, upper_ms, bins=bins)
    out = [none] * len(log_probs)
    for opts, k in zip(options, picks):
        for i, j in opts[k]:
            out[i] = j
    return out


class LatencyMultiplier(nn.Module):
    """The one latency-target mechanism every latency-aware strategy shares: a Lagrange multiplier on the
    expected latency, updated by dual ascent.

    With a target T the architecture step minimizes the method's task loss plus ``lam * (E[LAT] / T* - 1)``
    and, after each step, moves ``lam <- lam + eta * (E[LAT] / T* - 1)`` (dual ascent on the equality
    constraint ``E[LAT] = T*``; Boyd & Vandenberghe, Convex Optimization, Sec. 5.1-5.5, and e.g. the
    "budget" updates of constrained NAS such as TF-NAS, Hu et al. 2020, Sec. 3.4). ``T* = aim * T`` with
    ``aim = 0.95`` by default, the middle of the window ``[LOWER_FRACTION T, T] = [0.9 T, T]`` that the
    derivation (``most_probable_within``) guarantees: while the expected latency is above ``T*`` the
    multiplier grows and pushes the architecture towards faster candidates; below, it shrinks
    and turns negative, which rewards spending the budget instead of leaving it unused. The multiplier is a
    buffer, so it is saved and restored with the strategy's checkpoint.
    """

    def __init__(self, target_ms: float, step: float = 0.05, aim: float = 0.95, init: float = 0.0):
        super().__init__()
        if target_ms <= 0:
            raise ValueError(f"latency target must be positive, got {target_ms:g} ms")
        if not 0 < aim <= 1:
            raise ValueError(f"aim must be in (0, 1], got {aim:g}")
        if step < 0:
            raise ValueError(f"multiplier step must be >= 0, got {step:g}")
        self.target_ms, self.aim, self.step = float(target_ms), float(aim), float(step)
        self.register_buffer("lam", torch.tensor(float(init), dtype=torch.float64))

    def violation(self, expected_ms: torch.Tensor) -> torch.Tensor:
        """``E[LAT] / T* - 1``: positive when too slow, negative when budget is left."""
        return expected_ms / (self.aim * self.target_ms) - 1.0

    def penalty(self, expected_ms: torch.Tensor) -> torch.Tensor:
        """``lam * (E[LAT] / T* - 1)`` (differentiable in ``expected_ms``; ``lam`` is a constant here)."""
        return self.lam.to(expected_ms.dtype) * self.violation(expected_ms)

    @torch.no_grad()
    def update(self, expected_ms: torch.Tensor | float) -> float:
        """One dual-ascent step; returns the new multiplier."""
        v = self.violation(torch.as_tensor(expected_ms, dtype=torch.float64).detach().cpu())
        self.lam += self.step * v.to(self.lam.device)
        return float(self.lam)


def latency_loss(ce: torch.Tensor, expected_ms: torch.Tensor, target_ms: float, form: str = "mul#log",
                 params: dict | None = None) -> torch.Tensor:
    """The ProxylessNAS latency-regularized losses (Cai et al. 2019, Sec. 3.3.1 and its code):

    - ``mul#log``:    ``alpha * CE * (log E[LAT] / log T) ** beta``   (defaults alpha=0.2, beta=0.3)
    - ``add#linear``: ``CE + lambda * (E[LAT] - T) / T``              (default lambda=0.1)

    ``T`` is the reference latency (the target). ``mul#log`` needs E[LAT] and T above 1 ms (the logs
    are of milliseconds); use ``add#linear`` for sub-millisecond targets.
    """
    p = {**DEFAULTS.get(form, {}), **(params or {})}
    if form == "mul#log":
        if target_ms <= 1.0:
            raise ValueError(f"loss form mul#log needs a target above 1 ms (got {target_ms:g} ms); use add#linear")
        return p["alpha"] * ce * (torch.log(expected_ms) / math.log(target_ms)) ** p["beta"]
    if form == "add#linear":
        return ce + p["lambda"] * (expected_ms - target_ms) / target_ms
    raise ValueError(f"unknown latency loss form {form!r}; allowed: {', '.join(LOSS_FORMS)}")


def parse_machine_factor(value) -> float | str | None:
    """A machine factor as given (``--machine-factor``): None, ``"auto"`` or a positive number."""
    if value is None or value == "auto":
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if not (np.isfinite(f) and f > 0):
        raise ValueError(f"--machine-factor {value!r}: give a positive number (this machine's speed now / at the "
                         "table's validation, from `hwnas latency drift`) or auto")
    return f


@dataclass
class Target:
    """A search's latency target on the table's scale. ``target_ms`` None: no target; ``binds`` False: every
    architecture meets it (the search then runs for accuracy alone). ``range_ms`` is (fastest, slowest) of
    the space on the table, None without one; ``machine_factor`` the factor an absolute target was divided
    by (this machine now / at the table's validation)."""

    target_ms: float | None = None
    binds: bool = False
    range_ms: tuple[float, float] | None = None
    machine_factor: float | None = None

    @property
    def lower_ms(self) -> float | None:
        """The lower edge of the derivation's window ``[LOWER_FRACTION * T, T]`` (None unless binding)."""
        return LOWER_FRACTION * self.target_ms if self.binds else None

    @property
    def binding_ms(self) -> float | None:
        """The target a strategy is steered to: ``target_ms`` when it binds, else None."""
        return self.target_ms if self.binds else None

    def describe(self, space: str, window: bool = True) -> str:
        """One line for the log: the target, the space's range, and (``window``) the one-shot derivation's
        window; a multi-trial search holds trials to T alone."""
        if self.range_ms is None:
            return "no latency table: searching for accuracy alone"
        lo, hi = self.range_ms
        rng = f"space {space!r} spans {lo:.2f}-{hi:.2f} ms on this table"
        if self.target_ms is None:
            return f"no latency target: searching for accuracy alone ({rng})"
        if not self.binds:
            return (f"latency target {self.target_ms:.2f} ms does not bind: every architecture is faster "
                    f"({rng}); searching for accuracy alone")
        now = (f" on the table's scale, {self.target_ms * self.machine_factor:.2f} ms on this machine now"
               if self.machine_factor is not None else "")
        kept = f"; derived architecture kept in [{self.lower_ms:.2f}, {self.target_ms:.2f}] ms" if window else ""
        return f"latency target {self.target_ms:.2f} ms{now} ({rng}){kept}"


def resolve_target(text, latency, machine_factor: float | None = None, where: str = "") -> Target:
    """``text`` (``20ms``, ``40%``, None) against the space's range on ``latency`` (a ``LatencyModel``, or
    None). An absolute target is divided by ``machine_factor`` onto the table's scale (a percentage is of
    the table's own range already). Raises ``LatencyTargetError`` below the fastest architecture, and
    ValueError for a target without a table."""
    if latency is None:
        if text is not None:
            raise ValueError("a latency target needs a latency table")
        return Target()
    (fast, _), (slow, _) = latency.extremes()
    target = parse_target(text, fast, slow)
    if machine_factor is not None and target is not None and not str(text).strip().endswith("%"):
        log.info("target %.3f ms on this machine now = %.3f ms on the table's scale (machine factor %.3f)",
                 target, target / machine_factor, machine_factor)
        target /= machine_factor
    binds = check_target(target, fast, slow, where)
    return Target(target, binds, (fast, slow), machine_factor)

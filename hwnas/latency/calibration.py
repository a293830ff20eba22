"""Calibrations that map a latency table's per-block sums to whole-network latency.

A network's plain prediction is the sum of its blocks' table rows. Timed alone, each block pays its own
call (a session run, a framework dispatch) and reads an input that was not just written; in the network
the blocks share one call and hand over cache-hot activations, and the runtime may fuse across their
boundaries. Two forms are fitted on measured networks (``hwnas latency validate``):

``affine``:   ``measured ~ a + b * sum``
    a constant per-network offset (what lies between blocks and is the same in every architecture) and
    one common scale. Monotonic in the sum, so it never reorders architectures.

``grouped``:  ``measured ~ a + sum_g b_g * S_g``,   ``b_g = b + d_g``
    ``S_g`` is the sum of the network's blocks of type ``g`` — the per-layer-type corrections the
    latency issue names: a block kind whose in-network cost differs from its cost alone (an average pool
    whose input is cache-hot in the network, a strided skip that ORT fuses with its neighbour) gets its
    own scale. The deviations ``d_g`` are shrunk toward 0 by a ridge penalty ``lam * sum_g d_g^2``, so with
    few samples the fit falls back to the affine form.

Either form may add a per-block term ``c`` (ms; every block's latency becomes ``b_g * row + c``): the
call overhead each block paid when it was timed alone and the network pays once. It matters when the
number of blocks differs between architectures (an identity skip has no row).

All are least squares on the relative error (each sample's residual divided by its measured latency,
because the figures reported are relative). ``select_calibration`` fits the affine form and each grouping
of ``GROUPINGS`` over a grid of ``lam``, each with and without ``c``, and keeps the candidate with the
smallest leave-one-out relative error on the fit samples (closed form for a linear smoother: ``e_i / (1 -
H_ii)``) — a richer form only when it beats the plain affine one by more than one standard error of the
paired difference of squared leave-one-out residuals (with ~50 noisy samples a 0.3-point gain is chance,
and the affine form keeps the ranking of the plain sum). The leave-one-out figure of the chosen ``lam``
is itself slightly optimistic (``lam`` was tuned on it); nothing the selection sees is held out:
``validate`` reports every figure on networks neither the fit nor the selection used.

Every form folds into the table's entries (``block_ms``), so the expected latency a search differentiates
stays a linear function of the architecture probabilities.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

FORMS = ("affine", "grouped")


def _kind(sig: str) -> str:
    return sig.split(":", 1)[0]


def _op(sig: str) -> str:
    return re.sub(r"^k\d+", "", _kind(sig)) or _kind(sig)


def _stage(sig: str) -> str:
    m = re.search(r":r(\d+)", sig)
    return f"r{m.group(1)}" if m else "fixed"


#: how a table row's signature maps to its group: ``kind`` is the block as profiled (``k5e6``,
#: ``sep_conv_3x3``, ``stem``), ``op`` the kind without its kernel size (``e6``, ``e1_g2``, ``skip``: the
#: expansion and grouping that set a block's memory traffic), ``stage`` the block's input resolution.
GROUPINGS: dict[str, Callable[[str], str]] = {"kind": _kind, "op": _op, "stage": _stage}
#: a group's scale must lie within this factor range of the common scale ``b``: the largest real
#: effect seen (ONNX Runtime's 3x3 average pool on the cell space, much cheaper in a network than alone,
#: relative to the other blocks) is well inside it, while a fit that makes one stage of a noisy torch
#: table nearly free is noise the leave-one-out figure alone did not reject (measurements:
#: docs/measurements.md, 'Calibration scale range')
SCALE_RANGE = (0.25, 4.0)
#: ridge penalties tried, in units of the mean diagonal entry of the penalized columns' Gram matrix
LAMBDAS = tuple(10.0 ** e for e in np.arange(-4.0, 4.01, 0.5))


def signature_group(sig: str, grouping: str) -> str:
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown calibration grouping {grouping!r}; use one of {', '.join(GROUPINGS)}")
    return GROUPINGS[grouping](sig)


def check_calibration(cal: Mapping) -> None:
    """Raise ValueError naming what is wrong with a stored calibration."""
    form = cal.get("form")
    if form not in FORMS:
        raise ValueError(f"latency table calibration form {form!r} is unknown; expected one of {', '.join(FORMS)}")
    if not (isinstance(cal.get("a"), (int, float)) and math.isfinite(cal["a"])):
        raise ValueError(f"latency table calibration offset a={cal.get('a')!r} is not a finite number")
    if not (isinstance(cal.get("b"), (int, float)) and cal["b"] > 0):
        raise ValueError(f"latency table calibration {cal!r} is not an affine form with b > 0")
    if not (isinstance(cal.get("per_block", 0.0), (int, float)) and math.isfinite(cal.get("per_block", 0.0))):
        raise ValueError(f"latency table calibration per_block={cal.get('per_block')!r} is not a finite number")
    if "references" in cal:
        from hwnas.latency.reference import check_references

        check_references(cal["references"])
    if form == "grouped":
        if cal.get("grouping") not in GROUPINGS:
            raise ValueError(f"latency table calibration grouping {cal.get('grouping')!r} is unknown; "
                             f"expected one of {', '.join(GROUPINGS)}")
        scales = cal.get("scales")
        bad = {g: v for g, v in scales.items() if not (isinstance(v, (int, float)) and v > 0)} if isinstance(scales, Mapping) else scales
        if bad or not isinstance(scales, Mapping):
            raise ValueError(f"latency table calibration scales must be positive numbers per group, got {bad or cal.get('scales')!r}")


def row_scale(cal: Mapping | None, sig: str) -> float:
    """Factor a table row's latency is multiplied by under ``cal`` (1 without calibration; a group the
    fit never saw gets the common scale ``b``)."""
    if not cal:
        return 1.0
    if cal["form"] == "affine":
        return float(cal["b"])
    return float(cal["scales"].get(signature_group(sig, cal["grouping"]), cal["b"]))


def block_ms(cal: Mapping | None, sig: str, ms: float) -> float:
    """A block's calibrated latency: its row scaled, plus the per-block term (``per_block``, ms; usually
    negative: the call overhead every block paid alone and pays once per network)."""
    if not cal:
        return float(ms)
    return row_scale(cal, sig) * float(ms) + float(cal.get("per_block", 0.0))


def predict(cal: Mapping | None, blocks: Iterable[tuple[str, float]]) -> float:
    """Calibrated latency of a network given its blocks as ``(signature, table ms)`` (repeats included)."""
    total = sum(block_ms(cal, s, ms) for s, ms in blocks)
    return total + (float(cal["a"]) if cal else 0.0)


def fit_affine(raw_sum, measured) -> dict:
    """Least-squares ``measured ~ a + b * raw_sum`` on the relative error."""
    x, y = np.asarray(raw_sum, float), np.asarray(measured, float)
    w = 1.0 / y
    (a, b), *_ = np.linalg.lstsq(np.stack([w, x * w], 1), np.ones_like(y), rcond=None)
    return {"form": "affine", "a": float(a), "b": float(b), "fit_samples": int(len(x))}


def _ridge_loo(X: np.ndarray, lam: float, free: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted rows ``X`` (target 1 per row: y/y), the first ``free`` columns unpenalized, the rest
    penalized by ``lam``. Returns the coefficients and every row's leave-one-out residual (relative)."""
    penalty = np.full(X.shape[1], lam)
    penalty[:free] = 0.0
    A = X.T @ X + np.diag(penalty)
    Ainv = np.linalg.pinv(A)
    coef = Ainv @ X.T @ np.ones(len(X))
    hat = np.einsum("ij,jk,ik->i", X, Ainv, X)
    resid = (1.0 - X @ coef) / np.clip(1.0 - hat, 1e-9, None)
    return coef, resid


def group_sums(blocks: Iterable[tuple[str, float]], grouping: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for sig, ms in blocks:
        g = signature_group(sig, grouping)
        out[g] = out.get(g, 0.0) + float(ms)
    return out


def _rms(r: np.ndarray) -> float:
    return math.sqrt(float(np.mean(r**2)))


def select_calibration(samples: Sequence[Sequence[tuple[str, float]]], measured: Sequence[float],
                       groupings: Iterable[str] = tuple(GROUPINGS), per_block: bool = True,
                       rows: Mapping[str, float] | None = None) -> dict:
    """The calibration with the smallest leave-one-out relative error on ``samples`` (each a network's
    blocks as ``(signature, table ms)``) measured at ``measured`` ms: the affine form or a grouped form
    (module docstring), each also with a per-block term ``c`` (``per_block``: every block's latency
    becomes ``b_g * row + c``; the count of blocks differs between architectures when some choices, like
    an identity skip, have no row). Any form but the plain affine one must beat it by more than one
    standard error. The returned dict carries ``loo_rmse`` (relative) and ``candidates``, the best
    leave-one-out figure of every form tried, so the choice can be read back. ``rows`` (signature -> ms,
    default: the rows the samples use) are the table rows every candidate must keep positive: pass the
    whole table so that a row no sample used cannot come out free or negative."""
    y = np.asarray(measured, float)
    if len(y) != len(samples) or len(y) < 3:
        raise ValueError(f"a calibration needs at least 3 measured networks with their blocks, got {len(y)}")
    if not np.all(np.isfinite(y) & (y > 0)):
        raise ValueError("measured latencies must be positive finite numbers")
    w = 1.0 / y
    sums = np.array([sum(ms for _, ms in s) for s in samples])
    counts = np.array([float(len(s)) for s in samples])
    rows = dict(rows) if rows is not None else {sig: ms for s in samples for sig, ms in s}
    coef, affine_resid = _ridge_loo(np.stack([w, sums * w], 1), 0.0, 2)
    if coef[1] <= 0:
        raise ValueError(f"the measured latencies do not grow with the table's sum (fitted scale {coef[1]:.3g}): "
                         "the table does not describe these networks")
    best = {"form": "affine", "a": float(coef[0]), "b": float(coef[1]), "fit_samples": int(len(y)),
            "loo_rmse": _rms(affine_resid)}
    candidates = {"affine": round(_rms(affine_resid), 5)}
    best_resid = affine_resid
    variants = [(None, True)] if per_block and np.ptp(counts) > 0 else []
    variants += [(g, c) for g in groupings for c in ((False, True) if variants else (False,))]
    for grouping, with_count in variants:
        cols = [w, sums * w] + ([counts * w] if with_count else [])
        names = []
        if grouping is not None:
            per = [group_sums(s, grouping) for s in samples]
            names = sorted({g for p in per for g in p})
            if len(names) < 2:
                continue
            cols += [np.array([p.get(g, 0.0) for p in per]) * w for g in names]
        X, free = np.stack(cols, 1), 2 + int(with_count)
        unit = float(np.mean(X[:, free:] ** 2)) * len(y) if names else 0.0
        found = None
        for lam in (LAMBDAS if names else (0.0,)):
            coef, resid = _ridge_loo(X, lam * unit, free)
            c = float(coef[2]) if with_count else 0.0
            scales = dict(zip(names, coef[1] + coef[free:], strict=True))
            scale = lambda sig: scales.get(signature_group(sig, grouping), coef[1]) if names else coef[1]  # noqa: E731
            if coef[1] <= 0 or any(not SCALE_RANGE[0] * coef[1] <= v <= SCALE_RANGE[1] * coef[1] for v in scales.values()):
                continue  # a non-positive scale would reward slower blocks; a far-off one is fitting noise
            if any(scale(sig) * ms + c <= 0 for sig, ms in rows.items() if ms > 0):
                continue  # a block may not come out free or negative
            if found is None or _rms(resid) < _rms(found[2]):
                found = (lam, coef, resid, c, scales)
        if found is None:
            continue
        lam, coef, resid, c, scales = found
        label = ("affine" if grouping is None else f"grouped by {grouping}") + (" + per block" if with_count else "")
        candidates[label] = round(_rms(resid), 5)
        # one-standard-error rule: a richer form must beat the affine one by more than the standard
        # error of the paired difference of squared leave-one-out residuals, or the simpler form stays
        gain = affine_resid**2 - resid**2
        if gain.mean() > gain.std(ddof=1) / math.sqrt(len(gain)) and _rms(resid) < _rms(best_resid):
            best_resid = resid
            best = {"form": "grouped" if names else "affine", "a": float(coef[0]), "b": float(coef[1]),
                    "fit_samples": int(len(y)), "loo_rmse": _rms(resid)}
            if names:
                best.update(grouping=grouping, scales={g: float(v) for g, v in scales.items()}, **{"lambda": float(lam)})
            if with_count:
                best["per_block"] = c
    best["candidates"] = candidates
    return best


def describe(cal: Mapping) -> str:
    """One line a person reads: the form and its coefficients."""
    c = cal.get("per_block", 0.0)
    tail = f" {'+' if c >= 0 else '-'} {abs(c) * 1000:.1f} us per block" if c else ""
    if cal["form"] == "affine":
        return f"measured = {cal['a']:.3f} ms + {cal['b']:.3f} x sum of rows{tail}"
    scales = ", ".join(f"{g} {s:.3f}" for g, s in sorted(cal["scales"].items()))
    return (f"measured = {cal['a']:.3f} ms + per-{cal['grouping']} scale x that {cal['grouping']}'s rows "
            f"({scales}; common {cal['b']:.3f}){tail}")

"""``hwnas latency``: show / validate a table, predict an architecture's latency, compare two profiles."""
from __future__ import annotations

import math
from pathlib import Path

from hwnas.runs import new_run_dir
from hwnas.cli._common import Progress, _config_overrides, _non_negative_int


def cmd_latency(args) -> int:
    from hwnas.latency.calibration import describe as describe_calibration
    from hwnas.latency.predictor import LatencyModel
    from hwnas.latency.table import LatencyTable

    if args.latency_cmd == "show":
        _print_lookup(args)
        if not args.table:
            return 0
    table = LatencyTable.load(args.table)
    meta = table.meta
    if args.latency_cmd == "validate":
        return _latency_validate(args, table)
    if args.latency_cmd == "drift":
        return _latency_drift(args, table)
    if args.latency_cmd == "agreement":
        return _latency_agreement(args, table)
    if args.latency_cmd == "show":
        from hwnas.spaces import get_space

        space = get_space(args.space or meta.get("space"))
        profiled = meta.get("config") if meta.get("space") == space.name else None
        config = space.resolve_config({**(profiled or {}), "resolution": meta.get("resolution", 224),
                                       **_config_overrides(args)})
        dev = meta.get("device") or {}
        print(f"table {args.table}: {len(table)} rows; space {space.name}, {meta.get('resolution')}x{meta.get('resolution')}, "
              f"batch {meta.get('batch')}, {meta.get('dtype')}; {meta.get('backend')} ({meta.get('provider')}) on "
              f"{dev.get('name', dev.get('slug', '?'))}, {meta.get('threads')} threads; statistic {meta.get('statistic')}; "
              + ("blocks timed in place inside networks" if meta.get("context") == "network" else "blocks timed alone"))
        model = LatencyModel(table, space, config)
        if model.calibration:
            c = model.calibration
            print(f"calibrated: {describe_calibration(c)}, fitted by `hwnas latency validate` on "
                  f"{c.get('fit_samples', '?')} networks; every figure below includes it")
        (lo, lo_t), (hi, hi_t) = model.extremes()
        print(f"fastest architecture {lo:.3f} ms: {space.describe(lo_t)}")
        print(f"slowest architecture {hi:.3f} ms: {space.describe(hi_t)}")
        parts = ", ".join(dict.fromkeys(part for part, _, _ in model.fixed_parts))
        print(f"fixed parts ({parts}): {model.fixed_ms:.3f} ms")
        print(f"{'decision':>14} {'min ms':>8} {'max ms':>8}  fastest / slowest choice (summed over every place it runs)")
        for i, d in enumerate(space.decisions(config)):
            costs = [(float(ms), t) for t, ms in zip(d.choices, model.layer(i)) if t != space.absent_token]
            (fast, fast_t), (slow, slow_t) = min(costs), max(costs)
            print(f"{d.name:>14} {fast:>8.3f} {slow:>8.3f}  {fast_t} / {slow_t}")
        return 0
    from hwnas.exporting import resolve_arch

    arch = resolve_arch(args.arch).arch
    model = LatencyModel(table, arch.space_obj, arch.config)
    if args.breakdown:
        for part, sig, ms in model.breakdown(arch.layers):
            print(f"{part:<22} {ms:>8.3f} ms  {sig}")
    if model.calibration:
        raw = LatencyModel(table, arch.space_obj, arch.config, calibrated=False).of_tokens(arch.layers)
        print(f"{model.of_tokens(arch.layers):.3f} ms (calibrated; plain sum {raw:.3f} ms)")
    else:
        print(f"{model.of_tokens(arch.layers):.3f} ms")
    factor = args.machine_factor
    if factor is not None:
        if factor == "auto":
            from hwnas.latency.drift import measure_drift

            factor = measure_drift(table)["factor"]
        else:
            try:
                factor = float(factor)
            except ValueError:
                factor = float("nan")
            if not (math.isfinite(factor) and factor > 0):
                raise ValueError(f"--machine-factor {args.machine_factor!r}: give a positive number or auto")
        print(f"{model.of_tokens(arch.layers) * factor:.3f} ms on this machine now (machine factor {factor:.3f}: the "
              f"table's reference networks now / at its validation)")
    return 0


def _print_lookup(args) -> None:
    """The table lookup (``hwnas.latency.lookup``) and the tables of this machine it finds."""
    import torch

    from hwnas.device import device_slug
    from hwnas.latency.lookup import is_overlay, table_roots
    from hwnas.latency.tables import default_threads

    roots = table_roots(args.tables)
    for line in roots.lines():
        print(line)
    slug = device_slug(torch.device("cpu"), default_threads())
    found = [(root, p) for root in roots.read for p in sorted(root.glob(f"{slug}/*/*.csv"))]
    print(f"tables for this machine ({slug}):" + ("" if found else " none (hwnas profile makes one; a search "
                                                                   "profiles what it needs)"))
    for root, p in found:
        kind = "overlay" if is_overlay(p) else ("shipped" if root == roots.shipped else "own")
        print(f"  {kind:<8} {p}")


def _latency_drift(args, table) -> int:
    from hwnas.latency.drift import measure_drift

    d = measure_drift(table, warmup=args.warmup, iterations=args.iterations, rounds=args.rounds)
    f = d["factor"]
    for now, then, r in zip(d["now_ms"], d["then_ms"], d["ratios"], strict=True):
        print(f"reference network: {now:.3f} ms now, {then:.3f} ms at validation ({r:.3f}x)")
    print(f"machine factor {f:.3f} ({d['statistic']}): this machine runs the table's networks at {f:.2f}x their "
          f"latency at validation; its predictions are {(1 / f - 1) * 100:+.1f}% against what it measures now")
    if abs(f - 1) > 0.05:
        print(f"to search for a target on this machine as it runs now: hwnas search --latency-target <T>ms "
              f"--machine-factor {f:.3f} (or auto); or profile and validate the table again")
    return 0


def _latency_agreement(args, table) -> int:
    from hwnas.latency.agreement import compare_tables
    from hwnas.latency.table import LatencyTable

    result = compare_tables(table, LatencyTable.load(args.other), statistic=args.statistic, tolerance=args.tolerance)
    print(f"{args.other} against {args.table}: {result.rows} rows in common"
          + (f", {len(result.only_a)} only in --table" if result.only_a else "")
          + (f", {len(result.only_b)} only in --other" if result.only_b else ""))
    for key, (a, b) in result.differences.items():
        print(f"note: {key} differs: {a!r} vs {b!r}")
    print(result.summary())
    for sig, ratio in result.worst(args.worst):
        print(f"{ratio - 1:+8.1%}  {table.df.at[sig, result.statistic]:9.4f} ms  {sig}")
    return 0


def _latency_validate(args, table) -> int:
    from hwnas.latency.calibration import describe as describe_calibration
    from hwnas.latency.validation import STATISTIC_CANDIDATES, refit, validate
    from hwnas.spaces import get_space

    space = get_space(table.meta.get("space"))
    config = space.resolve_config({**(table.meta.get("config") or {}), "resolution": table.meta["resolution"]})
    out = Path(args.out) if args.out else new_run_dir(args.runs, "validate", space.name)
    state = {}
    was = table.statistic
    choose = STATISTIC_CANDIDATES if args.statistic == "auto" else None
    if args.statistic and not choose and args.statistic != was:
        # rows and networks are read at the new statistic; the old calibration was fitted at the other one
        table.meta["statistic"] = args.statistic
        table.meta.pop("calibration", None)
        print(f"reading {table.path.name} at {args.statistic} instead of {was}"
              + ("" if args.no_store else " (stored in its sidecar with the new calibration)"))

    def progress(i, n):
        if "bar" not in state:
            state["bar"] = Progress(n, "prepare, then time networks")
        state["bar"].update(1)
        if i == n:
            state["bar"].close()

    if args.refit:
        src = Path(args.refit)
        if args.no_store or args.out:  # leave the run (and the report beside a table) as it was
            import shutil

            out = Path(args.out) if args.out else new_run_dir(args.runs, "refit", space.name)
            if not (src / "samples.csv").exists():
                raise FileNotFoundError(f"{src / 'samples.csv'} does not exist: --refit takes the directory of an "
                                        "earlier validate run")
            out.mkdir(parents=True, exist_ok=True)
            for name in ("samples.csv", "report.json"):
                if (src / name).exists() and (src / name).resolve() != (out / name).resolve():
                    shutil.copyfile(src / name, out / name)
        else:
            out = src
        rep = refit(table, space, config, out, choose_statistic=choose)
        print(f"refitted on the measurements in {src}/samples.csv (nothing measured again)"
              + (f"; {src} left as it was" if out != src else ""))
    else:
        rep = validate(table, space, config, out, samples=args.samples, seed=args.seed, iterations=args.iterations,
                       rounds=args.rounds, sampling=args.sampling, warmup=args.warmup, chunk=args.chunk,
                       repeats=args.repeats, choose_statistic=choose, progress=progress)
    if rep.statistic_choice:
        ch = rep.statistic_choice
        loo = ", ".join(f"{q} {v:.1%}" for q, v in ch["candidates"].items())
        print(f"statistic: {ch['chosen']} (leave-one-out error of the best calibration on the fit networks: {loo}"
              + (f"; the table was read at {was})" if ch["chosen"] != was else ")")
              + ("" if args.no_store or ch["chosen"] == was else "; stored in its sidecar"))
        if len(ch.get("by_weight", {}).get(ch["chosen"], {})) > 1:
            tried = ", ".join(f"{w} {v:.1%}" for w, v in ch["by_weight"][ch["chosen"]].items())
            print(f"anchor weight: {ch['anchor_weight']:g} (each chunk's factor divided out as factor ** weight; "
                  f"leave-one-out error at {ch['chosen']} by weight: {tried})")
    figures = [("plain sum", rep.before), ("calibrated", rep.after)]
    if (rep.calibration["form"] != "affine" or rep.calibration.get("per_block")) and rep.after_affine:
        figures.append(("affine", rep.after_affine))
    for name, fig in figures:
        print(f"{name:>10}: {fig['within_5pct']:.0%} within +-5%, {fig['within_10pct']:.0%} within +-10%, "
              f"MAPE {fig['mape']:.1%}, mean error {fig['mean_signed_error']:+.1%}, Kendall tau {fig['kendall_tau']:.3f} "
              f"({fig['n']} held-out networks)")
    if rep.chunk_factors:
        f = rep.chunk_factors
        w = (rep.statistic_choice or {}).get("anchor_weight", 1.0)
        print(f"chunks of {rep.chunk}: the anchors put the machine's speed per chunk at {min(f):.2f}-{max(f):.2f}x "
              "their median (divided out of every measurement" + (f" as factor ** {w:g})" if w != 1.0 else ")"))
    c = rep.calibration
    tried = ", ".join(f"{k} {v:.1%}" for k, v in c.get("candidates", {}).items())
    print(f"calibration: {describe_calibration(c)} (fit on {c['fit_samples']} other networks; leave-one-out "
          f"error of each form tried: {tried})")
    r = rep.repeatability
    if r:
        print(f"noise floor: {r['n']} networks built twice and timed in the same rounds agreed within +-5% in "
              f"{r['within_5pct']:.0%}, within +-10% in {r['within_10pct']:.0%} (median difference "
              f"{r['median_abs_diff']:.1%}, largest {r['max_abs_diff']:.1%}): with that noise a perfect predictor "
              f"would land within +-10% of one measurement about {r['perfect_within_10pct']:.0%} of the time "
              f"(+-5%: {r['perfect_within_5pct']:.0%})"
              + (f", and its Kendall tau would be about {r['perfect_kendall_tau']:.3f}" if "perfect_kendall_tau" in r else ""))
    if not args.no_store:
        table.meta["calibration"] = c
        table.save(table.path)
        print(f"calibration stored in {table.path}'s sidecar: predictions and searches with this table use it")
    print(f"report: {out}/report.json, samples.csv, scatter.png")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("latency", help="inspect latency tables")
    lsub = p.add_subparsers(dest="latency_cmd", required=True)
    q = lsub.add_parser("show", help="the table lookup and this machine's tables; with --table, a summary of it: "
                                     "the space's latency range, per-layer spread")
    q.add_argument("--table", default=None)
    q.add_argument("--tables", default=None, metavar="DIR", help="table directory (default: the lookup printed)")
    q.add_argument("--space", default=None, help="default: the table's")
    q.add_argument("--num-classes", dest="num_classes", type=int, default=None)
    q.add_argument("--width-mult", dest="width_mult", type=float, default=None)
    q.set_defaults(func=cmd_latency)
    q = lsub.add_parser("validate", help="measure random networks end to end vs the table; fit a calibration")
    q.add_argument("--table", required=True)
    q.add_argument("--samples", type=int, default=100, help="random networks; half fit the calibration (default %(default)s)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--iterations", type=int, default=50, help="timed calls per network, all rounds (default %(default)s)")
    q.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default %(default)s)")
    q.add_argument("--sampling", default="spread", choices=["spread", "uniform"],
                   help="spread: random networks across the space's latency range; uniform: each layer uniform "
                        "(they cluster near the mean) (default %(default)s)")
    q.add_argument("--warmup", type=int, default=10)
    q.add_argument("--chunk", type=int, default=None,
                   help="prepare and time this many networks at a time, with three anchor networks timed in every "
                        "chunk to divide out the machine's drift between chunks (default: all at once, except 10 for "
                        "torch eager on a CPU, whose networks slow down when ~100 are alive together)")
    q.add_argument("--repeats", type=int, default=10,
                   help="networks also built and timed a second time, for the measurement's own noise floor "
                        "(default %(default)s; 0: none)")
    q.add_argument("--out", default=None, help="report directory (default runs/<stamp>-validate-<space>)")
    q.add_argument("--runs", default="runs")
    q.add_argument("--no-store", action="store_true", help="do not store the calibration in the table")
    q.add_argument("--refit", default=None, metavar="RUN_DIR",
                   help="measure nothing: fit the calibration again on an earlier validate run's samples.csv "
                        "(its report is rewritten in place)")
    q.add_argument("--statistic", default=None, choices=["p10", "p50", "mean", "p90", "auto"],
                   help="read the table's rows and the measured networks at this statistic instead of the sidecar's "
                        "(with --refit: on the run's stored measurements); stored with the calibration. auto: "
                        "whichever of p10 and p50 the fit networks predict best (leave-one-out), the held-out ones "
                        "left out of the choice")
    q.set_defaults(func=cmd_latency)
    q = lsub.add_parser("drift", help="how fast this machine runs now against the table's validation")
    q.add_argument("--table", required=True)
    q.add_argument("--iterations", type=int, default=100)
    q.add_argument("--rounds", type=int, default=5)
    q.add_argument("--warmup", type=int, default=10)
    q.set_defaults(func=cmd_latency)

    q = lsub.add_parser("agreement", help="do two profiles of one table agree, row by row?")
    q.add_argument("--table", required=True)
    q.add_argument("--other", required=True, help="the second profile of the same table (e.g. made with hwnas profile --out DIR)")
    q.add_argument("--statistic", default=None, choices=["p10", "p50", "mean", "p90"],
                   help="row statistic compared (default: --table's own; issue 3 asks p50)")
    q.add_argument("--tolerance", type=float, default=0.05, help="relative difference allowed (default %(default)s)")
    q.add_argument("--worst", type=_non_negative_int, default=5,
                   help="list this many rows that differ most (default %(default)s)")
    q.set_defaults(func=cmd_latency)
    q = lsub.add_parser("predict", help="predicted latency of an architecture")
    q.add_argument("--table", required=True)
    q.add_argument("--arch", required=True)
    q.add_argument("--breakdown", action="store_true")
    q.add_argument("--machine-factor", default=None,
                   help="also print the prediction on this machine now: a factor from `hwnas latency drift`, or auto")
    q.set_defaults(func=cmd_latency)

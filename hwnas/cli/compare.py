"""``hwnas compare``: methods side by side on one setting, against random search."""
from __future__ import annotations

from pathlib import Path

from hwnas.runs import new_run_dir
from hwnas.cli._common import (Progress, _add_space_opts, _add_table_opts, _lazy_progress, _config_overrides,
                               _log_to_file, _table_callback, log)
from hwnas.strategies import STRATEGIES


def cmd_compare(args) -> int:
    from hwnas.compare import CompareConfig, compare
    from hwnas.device import resolve_device

    from hwnas.selection import SELECTORS

    multi = [m for m in args.methods if m in SELECTORS]
    if args.evaluator == "tabular" or multi:
        if len(multi) != len(args.methods) or args.evaluator != "tabular":
            raise ValueError("hwnas compare runs either one-shot methods (" + ", ".join(sorted(STRATEGIES)) +
                             ") or multi-trial ones (" + ", ".join(sorted(SELECTORS)) + ") with --evaluator tabular")
        return _compare_trials(args)

    cfg = CompareConfig(methods=args.methods, space=args.space, latency_target=args.latency_target,
                        epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                        train_epochs=args.train_epochs, random_archs=args.random, seed=args.seed, data=args.data,
                        data_root=args.data_root, config=_config_overrides(args),
                        device=str(resolve_device(args.device)), arch_lr_scale=args.arch_lr_scale)
    out = Path(args.out) if args.out else new_run_dir(args.runs, "compare", args.space)
    fresh = not out.exists()
    _log_to_file(out / "log.txt")
    log.info("compare directory: %s", out)
    try:
        rows = compare(cfg, out, _table_callback(args, args.latency_table), progress=Progress)
    except Exception:
        if fresh and not any(p.is_dir() for p in out.iterdir()):  # refused before any entry started
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    print((Path(out) / "report.md").read_text())
    print(f"report: {out}/report.md, report.csv, accuracy_vs_latency.png ({len(rows)} entries)")
    return 0


def _compare_trials(args) -> int:
    from hwnas.selection.compare_trials import TrialsCompareConfig, compare_selectors

    space = args.space if args.space != "spnas" else "nb201"  # the one-shot default does not apply here
    cfg = TrialsCompareConfig(methods=args.methods, repeats=args.repeats, trials=args.trials, seed=args.seed,
                              space=space, latency_target=args.latency_target, benchmark=args.benchmark,
                              metric=args.metric, latency_column=args.latency_column, config=_config_overrides(args))
    out = Path(args.out) if args.out else new_run_dir(args.runs, "compare", space)
    _log_to_file(out / "log.txt")
    log.info("compare directory: %s", out)
    table = None if args.latency_column else _table_callback(args, args.latency_table)
    rows = compare_selectors(cfg, out, table=table, progress=_lazy_progress("runs"))
    print((out / "report.md").read_text())
    print(f"report: {out}/report.md, report.csv, best_so_far.png ({len(rows)} rows)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="methods side by side on one setting, against random search")
    from hwnas.selection import SELECTORS

    p.add_argument("--methods", nargs="+", default=["proxyless", "fbnet", "spnas"],
                   choices=sorted(STRATEGIES) + sorted(SELECTORS),
                   help="one-shot methods, or multi-trial ones (random evolution bo rl) with --evaluator tabular")
    p.add_argument("--evaluator", default=None, choices=["tabular"],
                   help="multi-trial methods: look every trial up in --benchmark (the only evaluator compare runs "
                        "them on: a trained evaluation of repeats x trials networks is a job for a cluster)")
    p.add_argument("--benchmark", default=None, metavar="FILE.csv", help="tabular: columns arch, --metric[, --latency-column]")
    p.add_argument("--metric", default="accuracy", help="tabular: the column to maximize (default %(default)s)")
    p.add_argument("--latency-column", default=None, metavar="COL", help="tabular: latency in ms in place of a table")
    p.add_argument("--repeats", type=int, default=20, help="tabular: seeds per method (default %(default)s)")
    p.add_argument("--trials", type=int, default=300, help="tabular: trials per run (default %(default)s)")
    _add_space_opts(p, space_default="spnas")
    p.add_argument("--latency-target", default="50%", help="a binding target (default %(default)s)")
    p.add_argument("--latency-table", default=None)
    p.add_argument("--latency-device", default="cpu")
    _add_table_opts(p)
    p.add_argument("--no-profile", action="store_true", help="fail instead of profiling a missing table")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=16, help="search epochs per method (default %(default)s)")
    p.add_argument("--warmup-epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-epochs", type=int, default=10, help="from-scratch training of every architecture")
    p.add_argument("--random", type=int, default=3, help="random architectures in the window (default %(default)s)")
    p.add_argument("--arch-lr-scale", type=float, default=1.0,
                   help="multiply every method's architecture learning rate (its paper's) by this: a short search "
                        "on small data takes few architecture steps, too few at the papers' rates for the alphas to "
                        "leave uniform (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default=None, help="report directory (default runs/<stamp>-compare-<space>); "
                                               "an existing one is resumed")
    p.set_defaults(func=cmd_compare)

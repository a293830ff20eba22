"""``hwnas rank RUN --archs N``: how well a one-shot run's supernet ranks architectures of its latency window."""
from __future__ import annotations

from hwnas.cli._common import _lazy_progress, _log_to_file


def cmd_rank(args) -> int:
    from pathlib import Path

    from hwnas.ranking import rank

    if args.benchmark and args.trial_epochs is not None:
        raise ValueError("give --trial-epochs (train each architecture) or --benchmark (look it up), not both")
    run = Path(args.run)
    if not (run / "checkpoint.pt").exists():
        raise ValueError(f"{run}: not a finished one-shot search run (no checkpoint.pt)")
    _log_to_file(run / "log.txt")
    f = rank(run, args.archs, trial_epochs=args.trial_epochs or 1, benchmark=args.benchmark, metric=args.metric,
             seed=args.seed, calibration_batches=args.calibration_batches, progress=_lazy_progress("archs"))
    truth = f"{f['benchmark']} ({f['metric']})" if f["benchmark"] else f"trained from scratch {f['trial_epochs']} epoch(s)"
    print(f"{f['method']} supernet of {f['run_dir']} against {truth}, {f['archs']} architectures"
          + (f" in [{f['window_ms'][0]:.3f}, {f['window_ms'][1]:.3f}] ms" if f["window_ms"] else ""))
    print(f"Kendall tau {f['kendall_tau']:.3f}, Spearman rho {f['spearman_rho']:.3f}; the supernet's pick is "
          f"#{f['top1_truth_rank']} of {f['archs']} by its own accuracy")
    print(f"supernet estimates {f['supernet_range'][0]:.3f}-{f['supernet_range'][1]:.3f}, own accuracies "
          f"{f['truth_range'][0]:.3f}-{f['truth_range'][1]:.3f}")
    print(f"files: {f['out']}/rank.json, rank.csv, rank.png, trials.jsonl (rerun to resume)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("rank", help="how well a supernet ranks architectures (Kendall tau, Spearman rho)",
                       description=__doc__)
    p.add_argument("run", help="a finished one-shot search run directory (any method)")
    p.add_argument("--archs", type=int, default=10, help="architectures to score both ways (default 10)")
    p.add_argument("--trial-epochs", type=int, default=None,
                   help="train each from scratch for this many epochs (default 1)")
    p.add_argument("--benchmark", default=None, help="or look each up in this tabular benchmark CSV")
    p.add_argument("--metric", default="accuracy", help="the benchmark's accuracy column")
    p.add_argument("--calibration-batches", type=int, default=8, help="BN recalibration batches (supernet side)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_rank)

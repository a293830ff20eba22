"""``hwnas search``: search a space on data, latency-aware, and derive an architecture."""
from __future__ import annotations

from pathlib import Path

from hwnas.cli._common import (Progress, _add_space_opts, _add_table_opts, _lazy_progress, _config_overrides,
                               _parse_opts, _profile_progress)
from hwnas.strategies import STRATEGIES


def cmd_search(args) -> int:
    from hwnas import api

    result = api.search(
        args.method, space=args.space, latency_target=args.latency_target, data=args.data, data_root=args.data_root,
        config=_config_overrides(args), options=_parse_opts(args.opt) if args.resume else _method_options(args),
        epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr=args.lr,
        arch_every=args.arch_every, seed=args.seed, device=args.device, train_resolution=args.train_resolution,
        machine_factor=args.machine_factor, latency_table=args.latency_table, latency_device=args.latency_device,
        tables=args.tables, backend=args.backend, batch=args.batch, dtype=args.dtype, mode=args.mode,
        provider=args.provider, threads=args.threads, profile_missing=not args.no_profile,
        no_latency=args.no_latency, runs=args.runs, resume=args.resume, progress=Progress,
        profile_progress=_profile_progress(args.space or args.method), evaluator=args.evaluator, trials=args.trials,
        trial_epochs=args.trial_epochs, supernet=args.supernet, benchmark=args.benchmark, metric=args.metric,
        latency_column=args.latency_column, storage=args.storage, workers=args.workers, heartbeat=args.heartbeat,
        engine=args.engine, ray_address=args.ray_address, trial_cpus=args.trial_cpus, trial_gpus=args.trial_gpus,
        trial_progress=_lazy_progress("trials"))
    if result.summary is None:  # torchrun: a rank other than 0 (rank 0 prints the summary)
        return 0
    if "trials" in result.summary:
        _print_selection_summary(result)
    else:
        _print_summary(result)
    return 0


def _table_label(cfg) -> str:
    return f"{cfg.table}{' + overlay ' + cfg.table_overlay if cfg.table_overlay else ''}"


def _print_selection_summary(result) -> None:
    s, cfg = result.summary, result.config
    print(f"best of {s['trials']} trials ({cfg.method}, scored by {cfg.evaluator}): trial {s['trial']}, "
          f"{cfg.metric if cfg.evaluator == 'tabular' else 'accuracy'} {s['accuracy']:.4f}: {result.space.describe(s['arch'])}")
    if s["predicted_latency_ms"] is not None:
        tgt = f"target {s['target_ms']:.3f} ms" if s["target_ms"] is not None else "no target"
        source = (f"column {cfg.latency_column} of {cfg.benchmark}" if cfg.latency_column else f"table {_table_label(cfg)}")
        print(f"predicted latency: {s['predicted_latency_ms']:.3f} ms ({tgt}; {source})")
    print(f"run directory: {s['run_dir']} (arch.json, trials.jsonl, best_so_far.png, log.txt); next: hwnas train, "
          f"then hwnas export --onnx")


def _method_options(args) -> dict:
    opts = _parse_opts(args.opt)
    if args.loss:
        opts["loss"] = args.loss
    if args.arch_lr is not None:
        opts["arch_lr"] = args.arch_lr
    if args.no_fused:
        opts["fused"] = False
    if getattr(args, "order", None) is not None:
        opts["order"] = args.order
    return opts


def _print_summary(result) -> None:
    s, cfg = result.summary, result.config
    print(result.space.derived_arch_summary(s["arch"]))
    if s["predicted_latency_ms"] is not None:
        lo, hi = s["range_ms"]
        tgt = f"target {s['target_ms']:.3f} ms" if s["target_ms"] is not None else "no target"
        if s["target_ms"] is not None and not s["target_binds"]:
            tgt += " (does not bind)"
        print(f"predicted latency: {s['predicted_latency_ms']:.3f} ms ({tgt}; space range {lo:.3f}-{hi:.3f} ms; "
              f"table {_table_label(cfg)})")
        if s.get("predicted_now_ms"):
            print(f"on this machine now (machine factor {s['machine_factor']:.3f}): {s['predicted_now_ms']:.3f} ms")
    print(f"supernet validation accuracy of the derived path: {s['supernet_val_acc']:.4f} (it ranks candidates; "
          f"the architecture's own accuracy comes from training it: hwnas train)")
    inherited = "child.pt, " if (Path(s["run_dir"]) / "child.pt").exists() else ""
    print(f"run directory: {s['run_dir']} (arch.json, {inherited}metrics.csv, log.txt, alpha_evolution.png); "
          f"next: hwnas train (from scratch, into the run directory), then hwnas export --onnx")


def add_parser(sub) -> None:
    from hwnas.selection import SELECTORS

    p = sub.add_parser("search", help="latency-aware architecture search")
    p.add_argument("--method", default="proxyless", choices=sorted(STRATEGIES) + sorted(SELECTORS),
                   help="a one-shot method, or a multi-trial one (random, evolution, bo, rl) that evaluates --trials "
                        "architectures with --evaluator")
    p.add_argument("--evaluator", default="train", choices=["train", "supernet", "tabular"],
                   help="multi-trial: train each candidate from scratch (--trial-epochs), score it as a path of "
                        "the trained supernet of --supernet RUN (BatchNorm recalibrated), or look it up in "
                        "--benchmark FILE.csv")
    p.add_argument("--benchmark", default=None, metavar="FILE.csv",
                   help="--evaluator tabular: a CSV with a column 'arch' (the space's architecture strings, "
                        "NAS-Bench-201's notation on nb201), the --metric column and optionally --latency-column")
    p.add_argument("--metric", default="accuracy", help="--evaluator tabular: the column to maximize (default %(default)s)")
    p.add_argument("--latency-column", default=None, metavar="COL",
                   help="--evaluator tabular: each architecture's latency in ms, used in place of a latency table")
    p.add_argument("--trials", type=int, default=20, help="multi-trial: architectures to evaluate (default %(default)s)")
    p.add_argument("--trial-epochs", type=int, default=1,
                   help="multi-trial, --evaluator train: epochs per candidate (default %(default)s)")
    p.add_argument("--supernet", default=None, metavar="RUN_DIR",
                   help="multi-trial, --evaluator supernet: a finished one-shot search whose supernet scores paths")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="multi-trial: N worker processes on this machine sharing one Optuna study (more join with "
                        "hwnas worker --study RUN)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="multi-trial, parallel: journal:PATH (a file on a shared filesystem) or postgresql://... "
                        "(default with --workers: RUN/study.journal)")
    p.add_argument("--heartbeat", type=float, default=10.0, metavar="S",
                   help="parallel workers: seconds between a running trial's heartbeats; a trial silent for 6 is "
                        "failed and evaluated again (default %(default)s)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="parallel workers: local processes, or ray: one Ray task per trial (pip install 'hwnas[ray]'; "
                        "--workers then caps the tasks in flight, default the cluster's CPUs / --trial-cpus)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: ray.init's address (e.g. auto, ray://HOST:10001; default a local Ray instance)")
    p.add_argument("--trial-cpus", type=float, default=1.0, help="--engine ray: CPUs of one trial's task (default 1)")
    p.add_argument("--trial-gpus", type=float, default=0.0, help="--engine ray: GPUs of one trial's task (default 0)")
    _add_space_opts(p, space_default=None)
    p.add_argument("--latency-target", default=None,
                   help="e.g. 20ms, 800us, or 40%% (that far from the fastest to the slowest architecture)")
    p.add_argument("--latency-table", default=None, help="latency table to use (default: this machine's, profiled if absent)")
    p.add_argument("--latency-device", default="cpu", help="device the latency target is for (default %(default)s)")
    _add_table_opts(p)
    p.add_argument("--no-profile", action="store_true", help="fail instead of profiling a missing table")
    p.add_argument("--no-latency", action="store_true", help="search for accuracy alone, no table")
    p.add_argument("--data", default="digits", help="digits (embedded), cifar10, cifar100 or an image folder")
    p.add_argument("--data-root", default=None)
    p.add_argument("--machine-factor", default=None,
                   help="this machine's speed now relative to the table's validation (`hwnas latency drift`), or auto "
                        "to measure it first: an absolute --latency-target is divided by it onto the table's scale")
    p.add_argument("--train-resolution", type=int, default=None,
                   help="input size the supernet trains at (default: the data's; digits 32). Latency is always "
                        "for the deploy --resolution")
    p.add_argument("--epochs", type=int, default=None,
                   help="search epochs (default: 16 on a chain space; 2 on the darts cell space, whose search "
                        "network costs seconds a step on a small CPU; docs/measurements.md, 'DARTS cell search cost')")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="weight-only epochs before architecture steps (default: 8 on a chain space, 0 on darts)")
    p.add_argument("--order", type=int, default=None, choices=[1, 2],
                   help="darts: first- or second-order architecture gradient (eq. 7-8 of the paper; default 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--arch-every", type=int, default=1, help="an architecture step every N weight steps")
    p.add_argument("--arch-lr", type=float, default=None)
    p.add_argument("--loss", default=None, choices=["mul#log", "add#linear"], help="latency loss form")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (repeatable), e.g. tau0=5.0 target_step=0.05")
    p.add_argument("--no-fused", action="store_true",
                   help="fbnet, spnas, darts, pcdarts, gdas, pdarts: run the pure-torch references instead of the "
                        "fused kernels (to compare the two)")
    p.add_argument("--device", default="auto", help="where to train: auto (CUDA if present), cpu, cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs", help="where run directories go (default %(default)s)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed search")
    p.set_defaults(func=cmd_search)

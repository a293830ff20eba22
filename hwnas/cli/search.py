"""``hwnas search``: search a space on data, latency-aware, and derive an architecture."""
from __future__ import annotations

from pathlib import Path

from hwnas.cli._common import (Progress, _add_space_opts, _add_table_opts, _config_overrides, _log_to_file,
                              _parse_opts, _table_callback, log)
from hwnas.strategies import STRATEGIES


def cmd_search(args) -> int:
    from hwnas.device import resolve_device
    from hwnas.api import build_search
    from hwnas.runs import new_run_dir
    from hwnas.search import SearchConfig, load_search_config

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").exists():
            raise ValueError(f"--resume {run_dir}: not a run directory (no config.json)")
        cfg = load_search_config(run_dir)
        if args.opt:  # e.g. a run from before its method's defaults changed, whose config.json lacks them
            cfg.options = {**cfg.options, **_parse_opts(args.opt)}
        resolve_device(cfg.device)
    else:
        train_device = resolve_device(args.device)
        from hwnas.spaces import get_space
        from hwnas.strategies import get_strategy

        strategy = get_strategy(args.method)
        space_name = args.space or strategy.default_space
        strategy.check_space(get_space(space_name))
        epochs, warmup = strategy.default_epochs(get_space(space_name))
        epochs = args.epochs if args.epochs is not None else epochs
        warmup = args.warmup_epochs if args.warmup_epochs is not None else min(warmup, max(0, epochs - 1))
        cfg = SearchConfig(method=args.method, space=space_name, data=args.data, data_root=args.data_root,
                           seed=args.seed, epochs=epochs, warmup_epochs=warmup,
                           batch_size=args.batch_size, lr=args.lr, arch_every=args.arch_every,
                           device=str(train_device), latency_target=args.latency_target,
                           config=_config_overrides(args), options=_method_options(args),
                           train_resolution=args.train_resolution, machine_factor=args.machine_factor)
        cfg.validate()
        run_dir = new_run_dir(args.runs, cfg.method, cfg.space)

    def record(path, table):
        cfg.table = str(path)
        cfg.table_device = (table.meta.get("device") or {}).get("slug")

    table_for = _table_callback(args, cfg.table if args.resume else args.latency_table, record)
    search = build_search(cfg, run_dir, table=table_for, progress=Progress)  # validates all inputs first
    _log_to_file(run_dir / "log.txt")
    log.info("run directory: %s", run_dir)
    summary = search.run()
    _print_summary(search, summary)
    return 0


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


def _print_summary(search, s: dict) -> None:
    print(search.space.derived_arch_summary(s["arch"]))
    if s["predicted_latency_ms"] is not None:
        lo, hi = s["range_ms"]
        tgt = f"target {s['target_ms']:.3f} ms" if s["target_ms"] is not None else "no target"
        if s["target_ms"] is not None and not s["target_binds"]:
            tgt += " (does not bind)"
        print(f"predicted latency: {s['predicted_latency_ms']:.3f} ms ({tgt}; space range {lo:.3f}-{hi:.3f} ms; "
              f"table {search.cfg.table})")
        if s.get("predicted_now_ms"):
            print(f"on this machine now (machine factor {s['machine_factor']:.3f}): {s['predicted_now_ms']:.3f} ms")
    print(f"supernet validation accuracy of the derived path: {s['supernet_val_acc']:.4f} (it ranks candidates; "
          f"the architecture's own accuracy comes from training it: hwnas train)")
    inherited = "child.pt, " if (Path(s["run_dir"]) / "child.pt").exists() else ""
    print(f"run directory: {s['run_dir']} (arch.json, {inherited}metrics.csv, log.txt, alpha_evolution.png); "
          f"next: hwnas train (from scratch, into the run directory), then hwnas export --onnx")


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="latency-aware architecture search")
    p.add_argument("--method", default="proxyless", choices=sorted(STRATEGIES))
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

"""The ``hwnas`` command: thin wrappers over the library. Progress bars and tables live here only.

    hwnas profile   measure every block of a space on a device into a latency table
    hwnas search    search a space on data, latency-aware, and derive an architecture
    hwnas export    child network -> ONNX, checked against torch, latency measured
    hwnas train     train an architecture from scratch, report test accuracy
    hwnas latency   show / validate a table, predict an architecture's latency, compare two profiles
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
log = logging.getLogger("hwnas")


class Progress:
    """tqdm progress bar on stderr (silent when stderr is not a terminal and HWNAS_PROGRESS=0)."""

    def __init__(self, total: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False,
                        disable=os.environ.get("HWNAS_PROGRESS") == "0")

    def update(self, n=1):
        self.bar.update(n)

    def set_postfix(self, **kw):
        self.bar.set_postfix(**kw, refresh=False)

    def close(self):
        self.bar.close()


def _profile_progress(n_hint: str):
    state = {}

    def callback(i, n, signature):
        if "bar" not in state:
            state["bar"] = Progress(n, f"profile {n_hint}")
        state["bar"].update(1)
        state["bar"].set_postfix(block=signature)
        if i == n:
            state["bar"].close()

    return callback


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be replaced, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _setup_logging(verbose: bool) -> list[logging.Handler]:
    logger = logging.getLogger("hwnas")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    h = _StderrHandler()
    h.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(h)
    return [h]


_FILE_HANDLERS: list[logging.Handler] = []


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("hwnas").addHandler(h)
    _FILE_HANDLERS.append(h)


def _config_overrides(args) -> dict:
    out = _parse_opts(getattr(args, "config", None) or [], "--config")
    for key in ("resolution", "width_mult", "num_classes"):
        v = getattr(args, key, None)
        if v is not None:
            out[key] = v
    return out


def _parse_opts(pairs: list[str], flag: str = "--opt") -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"{flag} {p!r} must be KEY=VALUE")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# -- profile -------------------------------------------------------------------------------------
def cmd_profile(args) -> int:
    from hwnas.device import resolve_device
    from hwnas.latency.space_tables import default_table_path, default_threads, profile_space
    from hwnas.spaces import get_space

    device = resolve_device(args.device)
    space, config = _space_and_config(args)
    threads = args.threads or default_threads()
    path = Path(args.table) if args.table else default_table_path(
        space.name, device=device, backend=args.backend, resolution=config["resolution"], batch=args.batch,
        dtype=args.dtype, threads=threads, root=args.out, mode=args.mode, provider=args.provider)
    table = profile_space(space, config, path, device=device, backend=args.backend, batch=args.batch,
                          dtype=args.dtype, threads=threads, warmup=args.warmup, iterations=args.iterations,
                          progress=_profile_progress(space.name), mode=args.mode, provider=args.provider,
                          rounds=args.rounds, statistic=args.statistic, context=args.context,
                          network_sets=args.network_sets)
    _print_range(table, space, config)
    print(f"latency table: {path} ({len(table)} rows)")
    return 0


def _space_and_config(args):
    from hwnas.export import resolve_arch
    from hwnas.spaces import get_space

    if getattr(args, "arch", None):
        arch = resolve_arch(args.arch).arch
        return arch.space_obj, arch.space_obj.resolve_config({**arch.config, **_config_overrides(args)})
    space = get_space(args.space)
    return space, space.resolve_config(_config_overrides(args))


def _print_range(table, space, config) -> None:
    from hwnas.latency.penalty import LatencyModel

    model = LatencyModel(table, space, config)
    (lo, lo_t), (hi, hi_t) = model.extremes()
    print(f"space {space.name!r} at {config['resolution']}x{config['resolution']}: fastest {lo:.3f} ms, "
          f"slowest {hi:.3f} ms (fixed parts {model.fixed_ms:.3f} ms)")


# -- search --------------------------------------------------------------------------------------
def cmd_search(args) -> int:
    from hwnas.device import resolve_device
    from hwnas.search import Search, SearchConfig, load_search_config, new_run_dir

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
    search = Search(cfg, run_dir, table=table_for, progress=Progress)  # validates all inputs first
    _log_to_file(run_dir / "log.txt")
    log.info("run directory: %s", run_dir)
    summary = search.run()
    _print_summary(search, summary)
    return 0


def _table_callback(args, explicit, record=None):
    """The search's ``table(space, deploy_config)`` callback: the table at ``explicit`` (checked against
    the search, with a warning when it was profiled on another device), else this machine's table for
    the space, profiled where rows are missing (unless --no-profile). ``record(path, table)`` is told
    which table was used."""
    from hwnas.device import device_slug, resolve_device
    from hwnas.latency.space_tables import default_threads, ensure_table, load_table_for
    from hwnas.latency.table import device_mismatch_warning

    lat_device = resolve_device(args.latency_device)
    threads = args.threads or default_threads()

    def table_for(space, deploy_config):
        if getattr(args, "no_latency", False):
            return None
        if explicit:
            table, path = load_table_for(space, deploy_config, explicit, batch=args.batch, dtype=args.dtype), explicit
            warn = device_mismatch_warning(table, device_slug(lat_device, threads if lat_device.type == "cpu" else None))
            if warn:
                log.warning(warn)
        else:
            table, path = ensure_table(space, deploy_config, device=lat_device, backend=args.backend, batch=args.batch,
                                       dtype=args.dtype, threads=threads, root=args.tables,
                                       progress=_profile_progress(space.name), profile_missing=not args.no_profile,
                                       mode=args.mode, provider=args.provider)
        if record is not None:
            record(path, table)
        return table

    return table_for


def cmd_compare(args) -> int:
    from hwnas.compare import CompareConfig, compare
    from hwnas.device import resolve_device

    cfg = CompareConfig(methods=args.methods, space=args.space, latency_target=args.latency_target,
                        epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                        train_epochs=args.train_epochs, random_archs=args.random, seed=args.seed, data=args.data,
                        data_root=args.data_root, config=_config_overrides(args),
                        device=str(resolve_device(args.device)), arch_lr_scale=args.arch_lr_scale)
    out = Path(args.out or Path(args.runs) / f"{time.strftime('%Y%m%d-%H%M%S')}-compare-{args.space}")
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
    space = search.space
    if getattr(space, "kind", "chain") == "cell":
        print(f"derived genotype: {space.describe(s['arch'])}")
    else:
        print(f"derived architecture: {search.cfg.space}[{' '.join(s['arch'])}]")
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


# -- export --------------------------------------------------------------------------------------
def _arch_spec(args, verb: str) -> str:
    """``--arch`` as given, or the latest finished search under ``--runs`` (said on stdout)."""
    from hwnas.search import latest_run

    if args.arch is not None:
        return args.arch
    latest = latest_run(args.runs)
    if latest is None:
        raise ValueError(f"no finished search under {args.runs}/ to {verb}; pass --arch RUN_DIR|arch.json|PRESET")
    print(f"{'exporting' if verb == 'export' else 'training'} the latest run: {latest}")
    return str(latest)


def cmd_export(args) -> int:
    from hwnas.export import export, resolve_arch

    if args.list_presets:
        return _list_presets()
    spec = _arch_spec(args, "export")
    src = resolve_arch(spec)
    if args.onnx in (None, ""):
        onnx_path = (src.run_dir / "model.onnx") if src.run_dir else Path(f"{Path(spec).stem}.onnx")
    else:
        onnx_path = Path(args.onnx)
    table = _table_for_arch(src.arch, args)
    rep = export(src, onnx_path, batch=args.batch, threads=args.threads or _table_threads(table), measure=not args.no_measure,
                 table=table, iterations=args.iterations, references=not args.no_references)
    print(f"exported {src.arch} -> {rep.onnx_path}")
    print(f"checked: onnx.checker ok; ONNX Runtime vs torch max abs diff {rep.max_abs_diff:.2e} "
          f"({rep.rel_diff:.2e} relative) on {rep.input_shape}; {rep.params:,} parameters; "
          f"weights: {rep.weights or 'random init'}{_weights_note(src.weights)}")
    if rep.measured_ms:
        m = rep.measured_ms
        line = f"measured latency (ONNX Runtime CPU): p10 {m['p10']:.3f} ms, p50 {m['p50']:.3f} ms, p90 {m['p90']:.3f} ms"
        if rep.predicted_ms is not None:
            stat = table.statistic  # the prediction is of the table's statistic: compare like with like
            err = (rep.predicted_ms - m[stat]) / m[stat] * 100
            line += f"; predicted {rep.predicted_ms:.3f} ms ({err:+.1f}% against the measured {stat})"
        print(line)
        if rep.compensated_ms is not None:
            ratios = " / ".join(f"{r:.2f}" for r in rep.reference_ratios)
            err = (rep.predicted_ms - rep.compensated_ms) / rep.compensated_ms * 100
            print(f"drift: the table's {len(rep.reference_ratios)} reference networks, timed in the same rounds, ran "
                  f"{ratios}x their latency at validation (median {rep.machine_factor:.3f}): on the machine the "
                  f"prediction describes the model takes {rep.compensated_ms:.3f} ms; predicted {rep.predicted_ms:.3f} ms "
                  f"({err:+.1f}%)")
        for note in rep.notes:
            print(f"note: {note}")
    return 0


def _weights_note(weights: Path | None) -> str:
    """What the exported weights are worth: trained.pt's test accuracy (train.json beside it), or that
    child.pt is inherited from the supernet (summary.json's accuracy of the derived path)."""
    if weights is None:
        return " (untrained: for latency only)"
    try:
        if weights.name == "trained.pt" and (weights.parent / "train.json").exists():
            r = json.loads((weights.parent / "train.json").read_text())
            return f" (trained from scratch, {r['epochs']} epochs on {r['data']}: test accuracy {r['test_acc']:.4f})"
        if weights.name == "child.pt" and (weights.parent / "summary.json").exists():
            acc = json.loads((weights.parent / "summary.json").read_text())["supernet_val_acc"]
            return (f" (inherited from the supernet, validation accuracy {acc:.4f}; `hwnas train` trains the "
                    f"architecture from scratch and export then takes those weights)")
    except (OSError, ValueError, KeyError):
        pass
    return ""


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


def _table_threads(table) -> int:
    from hwnas.latency.space_tables import default_threads

    return int(table.meta.get("threads", default_threads())) if table is not None else default_threads()


def _table_for_arch(arch, args):
    """The table that predicts ``arch``: --latency-table, else this machine's default if it exists
    and covers the arch (a preset with a wider skeleton may not be covered: no prediction then)."""
    import torch

    from hwnas.latency.space_tables import default_table_path, load_table_for
    from hwnas.latency.table import LatencyTableError

    path = args.latency_table or default_table_path(arch.space, device=torch.device("cpu"), backend="onnxruntime",
                                                    resolution=arch.config["resolution"], batch=args.batch,
                                                    root=args.tables, threads=args.threads)
    if not Path(path).exists() and not Path(str(path)).with_suffix(".csv").exists():
        if args.latency_table:
            raise ValueError(f"--latency-table {path} does not exist")
        print(f"no latency table for this machine at {path}: no prediction (run `hwnas profile --space {arch.space}`)")
        return None
    try:
        return load_table_for(arch.space_obj, arch.config, path, batch=args.batch)
    except LatencyTableError as e:
        if args.latency_table:
            raise
        print(f"no prediction: {e}")
        return None


def _list_presets() -> int:
    from hwnas.spaces import Arch
    from hwnas.spaces.builder import build_child, count_params
    from hwnas.spaces.presets import PRESETS, PUBLISHED

    print(f"{'preset':<18} {'space':<10} {'params':>11} {'published':>11}  layers")
    for name, d in PRESETS.items():
        arch = Arch.from_dict(d, name)
        pub = PUBLISHED.get(name, {}).get("params")
        print(f"{name:<18} {arch.space:<10} {count_params(build_child(arch)):>11,} "
              f"{(f'{pub:,}' if isinstance(pub, int) else str(pub or '-')):>11}  {' '.join(arch.layers)}")
    from hwnas.spaces.cell_presets import CELL_PRESETS, CELL_PUBLISHED

    for name, d in CELL_PRESETS.items():
        arch = Arch.from_dict(d, name)
        pub = CELL_PUBLISHED[name]["params_m"]
        print(f"{name:<18} {arch.space:<10} {count_params(build_child(arch)):>11,} {f'{pub}M':>11}  "
              f"{arch.space_obj.describe(arch.layers)}")
    print("(darts presets: CIFAR-10 evaluation network C=36, 20 cells; parameters without the auxiliary head)")
    return 0


# -- train ---------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from hwnas.device import resolve_device
    from hwnas.export import resolve_arch
    from hwnas.train import train_child

    device = resolve_device(args.device)
    src = resolve_arch(_arch_spec(args, "train"))
    data, data_root, resolution = args.data, args.data_root, args.resolution
    searched = _run_data(src.run_dir)
    if data is None:  # a run directory trains on what it was searched on; anything else on digits
        data, data_root = searched.get("data") or "digits", data_root or searched.get("data_root")
        resolution = resolution or searched.get("train_resolution")
    out = Path(args.out) if args.out else (src.run_dir or Path(args.runs) / f"{time.strftime('%Y%m%d-%H%M%S')}-train")
    _log_to_file(out / "train_log.txt")
    r = train_child(src.arch, out, data=data, data_root=data_root, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                    seed=args.seed, device=device, resolution=resolution, progress=Progress)
    print(f"trained {src.arch} for {r['epochs']} epochs on {r['data']} at {r['resolution']}x{r['resolution']}: "
          f"test accuracy {r['test_acc']:.4f} (val {r['val_acc']:.4f}), {r['params']:,} parameters; "
          f"weights {out / 'trained.pt'}" + ("; hwnas export uses them" if out == src.run_dir else ""))
    return 0


def _run_data(run_dir: Path | None) -> dict:
    """The data a run directory was searched on (its config.json), or {}."""
    path = run_dir / "config.json" if run_dir is not None else None
    if path is None or not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: cfg.get(k) for k in ("data", "data_root", "train_resolution")}


# -- latency -------------------------------------------------------------------------------------
def cmd_latency(args) -> int:
    from hwnas.latency.calibration import describe as describe_calibration
    from hwnas.latency.penalty import LatencyModel
    from hwnas.latency.table import LatencyTable

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
        cell = getattr(space, "kind", "chain") == "cell"
        name = (lambda t: space.describe(t)) if cell else (lambda t: " ".join(t))  # noqa: E731
        print(f"fastest architecture {lo:.3f} ms: {name(lo_t)}")
        print(f"slowest architecture {hi:.3f} ms: {name(hi_t)}")
        if cell:
            print(f"fixed parts (stem, every cell's preprocessing, classifier): {model.fixed_ms:.3f} ms")
            print(f"{'edge':>14} {'min ms':>8} {'max ms':>8}  fastest / slowest op (summed over the cells of its type)")
            for i, e in enumerate(space.decisions()):
                lat = model.layer(i)[1:]
                print(f"{e.name:>14} {float(lat.min()):>8.3f} {float(lat.max()):>8.3f}  "
                      f"{e.choices[1 + int(lat.argmin())]} / {e.choices[1 + int(lat.argmax())]}")
            return 0
        print(f"fixed parts (stem, first block, head, classifier): {model.fixed_ms:.3f} ms")
        print(f"{'layer':>5} {'stage':>5} {'min ms':>8} {'max ms':>8}  fastest / slowest candidate")
        plan = space.plan(config)
        for i, part in enumerate(plan.layers):
            lat = model.layer(i)
            print(f"{i:>5} {part.stage:>5} {float(lat.min()):>8.3f} {float(lat.max()):>8.3f}  "
                  f"{part.choices[int(lat.argmin())]} / {part.choices[int(lat.argmax())]}")
        return 0
    from hwnas.export import resolve_arch

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
    from hwnas.latency.validate import STATISTIC_CANDIDATES, refit, validate
    from hwnas.spaces import get_space

    space = get_space(table.meta.get("space"))
    config = space.resolve_config({**(table.meta.get("config") or {}), "resolution": table.meta["resolution"]})
    out = Path(args.out or Path(args.runs) / f"{time.strftime('%Y%m%d-%H%M%S')}-validate-{space.name}")
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

            out = Path(args.out or Path(args.runs) / f"{time.strftime('%Y%m%d-%H%M%S')}-refit-{space.name}")
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


# -- parser --------------------------------------------------------------------------------------
def _add_space_opts(p, space_default="proxyless"):
    from hwnas.spaces import SPACES

    help_default = ("the method's: darts for the DARTS family, else proxyless" if space_default is None
                    else space_default)
    p.add_argument("--space", default=space_default, choices=sorted(SPACES), help=f"search space (default {help_default})")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="space config override (repeatable), e.g. search_C=8 search_layers=5 on darts")
    p.add_argument("--resolution", type=int, default=None, help="deploy input resolution (default 224)")
    p.add_argument("--width-mult", dest="width_mult", type=float, default=None, help="width multiplier (default 1.0)")


def _add_table_opts(p):
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"],
                   help="runtime the latency is for (default %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="deploy batch size (default %(default)s)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="deploy dtype (default %(default)s)")
    p.add_argument("--mode", default=None, choices=["eager", "compile", "cudagraph"],
                   help="how --backend torch runs (default eager; cudagraph needs CUDA)")
    p.add_argument("--provider", default=None, choices=["cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider (default: the device's own, cpu or cuda)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for timing (default: torch's, usually the cores)")
    p.add_argument("--tables", default=os.environ.get("HWNAS_TABLES", "latency_tables"),
                   help="root of the cached latency tables (default %(default)s)")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from hwnas.strategies import STRATEGIES

    parser = argparse.ArgumentParser(prog="hwnas", description="Hardware-aware neural architecture search.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="measure every block of a space into a latency table")
    p.add_argument("--device", default="cpu", help="device to profile: cpu or cuda[:N] (default %(default)s)")
    _add_space_opts(p)
    _add_table_opts(p)
    p.add_argument("--num-classes", dest="num_classes", type=int, default=None, help="classifier outputs (default 1000)")
    p.add_argument("--arch", default=None, help="profile the skeleton of this arch/preset instead of the space default")
    p.add_argument("--out", default=os.environ.get("HWNAS_TABLES", "latency_tables"),
                   help="root directory of latency tables (default %(default)s)")
    p.add_argument("--table", default=None, help="exact output path (overrides --out's layout)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before a block's first round (default %(default)s)")
    p.add_argument("--iterations", type=int, default=100, help="timed calls per block, all rounds (default %(default)s)")
    p.add_argument("--statistic", default="p10", choices=["p10", "p50", "mean", "p90"],
                   help="the column predictions read (default %(default)s: latency without interference)")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds the calls are spread over, against slow spells of the machine (default %(default)s)")
    p.add_argument("--context", default=None, choices=["alone", "network"],
                   help="time each block alone, or in place inside whole covering networks (torch eager on a CPU, "
                        "chain spaces: blocks then pay what they pay in a network); a new table gets network where it "
                        "runs, else alone; an existing table keeps its own")
    p.add_argument("--network-sets", dest="network_sets", type=int, default=None,
                   help="with --context network: sets of covering networks, each running every block once (default 9: "
                        "with 3, two profiles' medians of the largest-activation rows differed by ~20%%)")
    p.set_defaults(func=cmd_profile)

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
                        "network costs ~5-8 s a step on a 2-core CPU)")
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

    p = sub.add_parser("compare", help="methods side by side on one setting, against random search")
    p.add_argument("--methods", nargs="+", default=["proxyless", "fbnet", "spnas"], choices=sorted(STRATEGIES))
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

    p = sub.add_parser("export", help="export an architecture as ONNX, checked and measured")
    p.add_argument("--arch", default=None, help="run directory, arch.json or preset (default: the latest run)")
    p.add_argument("--onnx", nargs="?", const="", default="", metavar="PATH",
                   help="output file (default: model.onnx in the run directory)")
    p.add_argument("--list-presets", action="store_true")
    p.add_argument("--latency-table", default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--no-measure", action="store_true")
    p.add_argument("--no-references", action="store_true",
                   help="time the model alone, without the table's reference networks (no drift compensation)")
    p.add_argument("--runs", default="runs")
    p.add_argument("--tables", default=os.environ.get("HWNAS_TABLES", "latency_tables"))
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train an architecture from scratch and report test accuracy")
    p.add_argument("--arch", default=None, help="run directory, arch.json or preset (default: the latest run)")
    p.add_argument("--data", default=None,
                   help="digits, cifar10, cifar100 or an ImageFolder directory (default: a run's own data, else digits)")
    p.add_argument("--resolution", type=int, default=None,
                   help="training resolution (default: a run's train resolution, else the data's own)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="initial learning rate, cosine-annealed (default: 0.05 on chain spaces, 0.025 on darts)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 4e-5 chain spaces, 3e-4 darts")
    p.add_argument("--grad-clip", type=float, default=None,
                   help="clip the gradient norm at this value; 0 turns it off (default: off on chain spaces, 5 on darts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--runs", default="runs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("latency", help="inspect latency tables")
    lsub = p.add_subparsers(dest="latency_cmd", required=True)
    q = lsub.add_parser("show", help="summarize a table: the space's latency range, per-layer spread")
    q.add_argument("--table", required=True)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = _setup_logging(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("hwnas: interrupted; a search resumes with `hwnas search --resume RUN_DIR`, a profile by rerunning it",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if args.verbose:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"hwnas: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        for h in handlers + _FILE_HANDLERS:
            logging.getLogger("hwnas").removeHandler(h)
            h.close()
        _FILE_HANDLERS.clear()


if __name__ == "__main__":
    sys.exit(main())

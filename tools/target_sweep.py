"""Latency-target sweep: short searches at several targets against one latency table, for one or more
methods, printing each derived architecture's predicted latency against its target (the [0.9 T, T]
promise) and, with --measure, the exported ONNX model's measured latency against the prediction.

    python tools/target_sweep.py --table latency_tables/<dev>/onnxruntime/spnas-r224-b1-fp32.csv \\
        --space spnas --methods proxyless fbnet spnas --targets 20% 50% 80% --epochs 1 --warmup-epochs 0 --measure
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from hwnas.exporting import ArchSource, export
from hwnas.latency.tables import load_table_for, profile_space
from hwnas.latency.table import LatencyTable
from hwnas.api import build_search
from hwnas.searching import SearchConfig
from hwnas.spaces import Arch
from hwnas.strategies import get_strategy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", required=True)
    ap.add_argument("--space", default="proxyless")
    ap.add_argument("--methods", nargs="+", default=["proxyless"])
    ap.add_argument("--targets", nargs="+", default=["25%", "50%", "75%"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--measure", action="store_true", help="export each derived model and measure it")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="space config override, e.g. search_C=8 on darts (values parsed as JSON)")
    ap.add_argument("--train-resolution", type=int, default=None)
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="method option for every method, e.g. population=6 (values parsed as JSON)")
    args = ap.parse_args()
    import json

    config = {k: json.loads(v) for k, v in (c.split("=", 1) for c in args.config)}
    options = {k: json.loads(v) for k, v in (c.split("=", 1) for c in args.opt)}
    meta = LatencyTable.load(args.table).meta

    def table_for(sp, deploy_config):
        # The search's deploy shape may need rows the profile did not (e.g. a 10-class classifier):
        # profile those into the same table with its own settings, then load it with every check.
        profile_space(sp, deploy_config, args.table, device=torch.device("cpu"), backend=meta["backend"],
                      batch=int(meta.get("batch", 1)), dtype=meta.get("dtype", "fp32"),
                      threads=int(meta.get("threads", 1)))
        return load_table_for(sp, deploy_config, args.table)

    print(f"{'method':>9} {'target':>7} {'T ms':>7} {'pred ms':>8} {'pred/T':>6} {'meas ms':>8} {'meas/pred':>9}"
          f"{' comp ms comp/pred  drift' if args.measure else ''}  architecture")
    for method in args.methods:
        for t in args.targets:
            cfg = SearchConfig(method=method, space=args.space, latency_target=t, epochs=args.epochs,
                               warmup_epochs=args.warmup_epochs, seed=args.seed, table=args.table, config=config,
                               train_resolution=args.train_resolution,
                               options={k: v for k, v in options.items() if k in get_strategy(method).defaults})
            with tempfile.TemporaryDirectory() as run:
                s = build_search(cfg, run, table=table_for)
                r = s.run()
                measured = "-"
                if args.measure:
                    child = Path(run) / "child.pt"
                    src = ArchSource(Arch.load(Path(run) / "arch.json"), run, Path(run), child if child.exists() else None)
                    table = LatencyTable.load(args.table)
                    rep = export(src, Path(run) / "model.onnx", threads=int(meta.get("threads", 1)), table=table,
                                 iterations=100)
                    m = rep.measured_ms[table.statistic]
                    measured = f"{m:>8.3f} {m / rep.predicted_ms - 1:>+9.1%}"
                    if rep.compensated_ms is not None:  # on the machine the table describes
                        c = rep.compensated_ms
                        measured += f" {c:>8.3f} {c / rep.predicted_ms - 1:>+9.1%} {rep.machine_factor:>6.3f}"
                    else:
                        measured += f" {'-':>8} {'-':>9} {'-':>6}"
            print(f"{method:>9} {t:>7} {r['target_ms']:>7.3f} {r['predicted_latency_ms']:>8.3f} "
                  f"{r['predicted_latency_ms'] / r['target_ms']:>6.3f} {measured}  {_name(s, r['arch'])}", flush=True)


def _name(search, tokens) -> str:
    space = search.space
    return space.describe(tokens)


if __name__ == "__main__":
    main()

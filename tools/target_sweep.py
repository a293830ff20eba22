"""Latency-target sweep: run short searches at several targets against one latency table and print
the derived architectures' predicted latency against each target (the [0.9 T, T] promise).

    python tools/target_sweep.py --table latency_tables/<dev>/onnxruntime/proxyless-r224-b1-fp32.csv \
        --targets 25% 50% 75% --epochs 4 --warmup-epochs 2
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from hwnas.latency.space_tables import load_table_for, profile_space
from hwnas.latency.table import LatencyTable
from hwnas.search import Search, SearchConfig
from hwnas.spaces import get_space


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", required=True)
    ap.add_argument("--space", default="proxyless")
    ap.add_argument("--targets", nargs="+", default=["25%", "50%", "75%"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    space = get_space(args.space)
    meta = LatencyTable.load(args.table).meta

    def table_for(sp, deploy_config):
        # The search's deploy shape may need rows the profile did not (e.g. a 10-class classifier):
        # profile those into the same table with its own settings, then load it with every check.
        profile_space(sp, deploy_config, args.table, device=torch.device("cpu"), backend=meta["backend"],
                      batch=int(meta.get("batch", 1)), dtype=meta.get("dtype", "fp32"),
                      threads=int(meta.get("threads", 1)))
        return load_table_for(sp, deploy_config, args.table)

    print(f"{'target':>8} {'T ms':>8} {'predicted ms':>13} {'ratio':>6}  architecture")
    for t in args.targets:
        cfg = SearchConfig(space=args.space, latency_target=t, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                           seed=args.seed, table=args.table)
        with tempfile.TemporaryDirectory() as run:
            s = Search(cfg, run, table=table_for)
            r = s.run()
        print(f"{t:>8} {r['target_ms']:>8.3f} {r['predicted_latency_ms']:>13.3f} "
              f"{r['predicted_latency_ms'] / r['target_ms']:>6.3f}  {' '.join(r['arch'])}")


if __name__ == "__main__":
    main()

"""Retrain the architectures of a ``hwnas compare`` report from scratch, with the current ``hwnas train``
recipe and several seeds, to separate a method's genotype from one training run's luck.
``--with-report`` counts the report's own training as its seed (compare trains with the same recipe).

    python tools/retrain_compare.py bench/results/cpu-amd-epyc-2t/compare-darts-50 --seeds 0 1 --out DIR

Reads ``report.csv`` (each entry's architecture) and ``compare.json`` (space, config, data, epochs) of the
report directory; trains every entry for the report's ``train_epochs`` per seed (``hwnas.training.train_child``,
the space's default recipe: ``train_settings``); writes ``retrain.csv`` and ``retrain.md`` into ``--out``
(resumable: an entry/seed already in ``retrain.csv`` is not trained again).
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import re
import statistics
from pathlib import Path

from hwnas.spaces import Arch
from hwnas.training import train_child, train_settings

_GENOTYPE = re.compile(r"Genotype\(normal=(\[.*?\]), normal_concat=\[.*?\], reduce=(\[.*?\]), reduce_concat")


def arch_of(row: dict, cfg: dict) -> Arch:
    text = row["arch"]
    config = {**(cfg.get("config") or {})}
    m = _GENOTYPE.search(text)
    if m:
        normal, reduce = (ast.literal_eval(g) for g in m.groups())
        genotype = {"normal": [list(p) for p in normal], "reduce": [list(p) for p in reduce],
                    "normal_concat": [2, 3, 4, 5], "reduce_concat": [2, 3, 4, 5]}
        return Arch.from_dict({"space": cfg["space"], "config": config, "genotype": genotype})
    return Arch(cfg["space"], config, text.split())


def _report_training(src: Path, row: dict, cfg: dict, epochs: int, seed: int) -> dict:
    """The report's own training of ``row`` (its ``train/train.json``), refused unless it is what this tool
    would run: same epochs, seed, batch size and recipe (``train_settings``) -- a report trained before a
    recipe change (e.g. compare-darts-50) must be retrained instead."""
    path = src / row["entry"] / "train" / "train.json"
    if not path.exists():
        raise SystemExit(f"retrain_compare: --with-report needs {path} (the report's own training record)")
    t = json.loads(path.read_text())
    want = {"epochs": epochs, "seed": seed, "batch_size": 64, **train_settings(arch_of(row, cfg))}
    diff = {k: (t.get(k), v) for k, v in want.items() if t.get(k) != v}
    if diff:
        raise SystemExit(f"retrain_compare: {path} was trained otherwise ({diff}: had, would run); "
                         f"retrain without --with-report")
    return t


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="a compare report directory (report.csv, compare.json)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=None, help="default: the report's train_epochs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--with-report", action="store_true",
                    help="count the report's own test accuracy as its seed's (compare trains with train_child, the "
                         "same recipe, at the report's seed): that seed is not trained again")
    args = ap.parse_args()
    src = Path(args.report)
    cfg = json.loads((src / "compare.json").read_text())
    rows = list(csv.DictReader(open(src / "report.csv")))
    epochs = args.epochs or int(cfg["train_epochs"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_path = out / "retrain.csv"
    done = list(csv.DictReader(open(done_path))) if done_path.exists() else []
    if args.with_report:
        seed0 = int(cfg.get("seed", 0))
        if seed0 not in args.seeds:
            args.seeds = [seed0, *args.seeds]
        have0 = {(d["entry"], int(d["seed"])) for d in done}
        for row in rows:
            if (row["entry"], seed0) not in have0:
                t = _report_training(src, row, cfg, epochs, seed0)
                done.append({"entry": row["entry"], "seed": seed0, "test_acc": t["test_acc"], "val_acc": t["val_acc"],
                             "report_test_acc": row["test_acc"], "params": t["params"],
                             "seconds": round(t["seconds"], 1)})
        _write_csv(done_path, done)
    have = {(d["entry"], int(d["seed"])) for d in done}
    for seed in args.seeds:
        for row in rows:
            if (row["entry"], seed) in have:
                continue
            arch = arch_of(row, cfg)
            r = train_child(arch, out / f"{row['entry']}-seed{seed}", data=cfg.get("data", "digits"),
                            data_root=cfg.get("data_root"), epochs=epochs, seed=seed, device="cpu")
            done.append({"entry": row["entry"], "seed": seed, "test_acc": r["test_acc"], "val_acc": r["val_acc"],
                         "report_test_acc": row["test_acc"], "params": r["params"], "seconds": round(r["seconds"], 1)})
            _write_csv(done_path, done)
            print(f"{row['entry']} seed {seed}: test acc {r['test_acc']:.4f} ({r['seconds']:.0f} s)", flush=True)
    recipe = train_settings(arch_of(rows[0], cfg))
    lines = [f"# Retrained: {src}", "",
             f"Every architecture of the report trained from scratch for {epochs} epochs per seed with "
             f"`hwnas train`'s recipe for the space: {recipe}. `tools/retrain_compare.py`.", "",
             "| entry | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | in the report |",
             "|---|" + "---|" * (len(args.seeds) + 2)]
    for row in rows:
        accs = [float(d["test_acc"]) for s in args.seeds for d in done if d["entry"] == row["entry"] and int(d["seed"]) == s]
        if len(accs) < len(args.seeds):
            continue
        lines.append(f"| {row['entry']} | " + " | ".join(f"{a:.4f}" for a in accs)
                     + f" | {statistics.mean(accs):.4f} | {float(row['test_acc']):.4f} |")
    (out / "retrain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

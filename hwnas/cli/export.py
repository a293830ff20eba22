"""``hwnas export``: child network -> ONNX, checked against torch, latency measured."""
from __future__ import annotations

import json
from pathlib import Path

from hwnas.cli._common import _arch_spec


def cmd_export(args) -> int:
    from hwnas import api
    from hwnas.exporting import resolve_arch

    if args.list_presets:
        return _list_presets()
    spec = _arch_spec(args, "export")
    src = resolve_arch(spec)
    rep = api.export(spec, args.onnx or None, latency_table=args.latency_table, tables=args.tables, batch=args.batch,
                     threads=args.threads, iterations=args.iterations, measure=not args.no_measure,
                     references=not args.no_references, runs=args.runs)
    print(f"exported {src.arch} -> {rep.onnx_path}")
    print(f"checked: onnx.checker ok; ONNX Runtime vs torch max abs diff {rep.max_abs_diff:.2e} "
          f"({rep.rel_diff:.2e} relative) on {rep.input_shape}; {rep.params:,} parameters; "
          f"weights: {rep.weights or 'random init'}{_weights_note(src.weights)}")
    if rep.measured_ms:
        m = rep.measured_ms
        line = f"measured latency (ONNX Runtime CPU): p10 {m['p10']:.3f} ms, p50 {m['p50']:.3f} ms, p90 {m['p90']:.3f} ms"
        if rep.predicted_ms is not None:
            stat = rep.statistic or "p50"  # the prediction is of the table's statistic: compare like with like
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
    from hwnas.spaces.dense_presets import DENSE_PRESETS, DENSE_PUBLISHED

    for presets, published in ((CELL_PRESETS, CELL_PUBLISHED), (DENSE_PRESETS, DENSE_PUBLISHED)):
        for name, d in presets.items():
            arch = Arch.from_dict(d, name)
            pub = published[name]["params_m"]
            print(f"{name:<18} {arch.space:<10} {count_params(build_child(arch)):>11,} {f'{pub}M':>11}  "
                  f"{arch.space_obj.describe(arch.layers)}")
    print("(darts presets: CIFAR-10 evaluation network C=36, 20 cells; parameters without the auxiliary head)")
    return 0


def add_parser(sub) -> None:
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
    p.add_argument("--tables", default=None, metavar="DIR",
                   help="table directory (default: the lookup `hwnas latency show` prints)")
    p.set_defaults(func=cmd_export)

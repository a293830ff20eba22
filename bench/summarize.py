"""Turn pytest-benchmark JSON into a markdown summary (one table per benchmark group).

    python bench/summarize.py bench/results/h100/0001_baseline.json [--copy-bw copy_bw.json] [--out SUMMARY.md]

Each table compares the implementations of one op / mode / shape: median and IQR time, the achieved
GB/s (minimum bytes moved / median, from the benchmark's extra_info), its fraction of the device's
measured copy bandwidth when ``--copy-bw`` is given (the JSON bench/gpu_check.sh writes), and the
speed-up over eager PyTorch. The header records the machine (GPU, driver, CUDA, Triton, torch) and commit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMPL_ORDER = {"triton": 0, "compile": 1, "eager": 2}


def _time(seconds: float) -> str:
    if seconds >= 1e-1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-4:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def summarize(data: dict, copy_bw: float | None = None) -> str:
    info = data.get("machine_info", {})
    hw = info.get("hwnas", {})
    commit = data.get("commit_info", {})
    lines = ["# hwnas kernel benchmarks", ""]
    device = hw.get("gpu") or f"CPU ({info.get('cpu', {}).get('brand_raw', '?')}, {hw.get('torch_threads')} threads)"
    if hw.get("gpu"):
        device += f", {hw.get('sm_count')} SMs, capability {hw.get('capability')}, {hw.get('memory_gib')} GiB"
    smoke = "  (CPU smoke run: timings say nothing about GPU speed)" if hw.get("tier") == "cpu-small" else ""
    lines += [
        f"- device: {device}",
        f"- driver {hw.get('driver')}, CUDA runtime {hw.get('cuda_runtime')}, cuDNN {hw.get('cudnn')}, "
        f"triton {hw.get('triton')}, torch {hw.get('torch')}, python {info.get('python_version')}",
        f"- commit {hw.get('commit') or commit.get('id', '?')}, run {data.get('datetime', '?')}",
        f"- tier: {hw.get('tier', '?')}{smoke}",
    ]
    if copy_bw:
        lines.append(f"- device-to-device copy bandwidth: {copy_bw:.0f} GB/s (read + write)")
    lines.append("")

    groups: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(b.get("group") or b["name"], []).append(b)
    for group in sorted(groups):
        rows = sorted(groups[group], key=lambda b: IMPL_ORDER.get(b.get("params", {}).get("impl"), 9))
        eager = next((b for b in rows if b.get("params", {}).get("impl") == "eager"), None)
        lines += [f"## {group}", ""]
        head = "| impl | median | IQR | GB/s |" + (" % of copy |" if copy_bw else "") + " vs eager |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for b in rows:
            st = b["stats"]
            gbs = b.get("extra_info", {}).get("GB/s")
            impl = b.get("params", {}).get("impl", b["name"])
            cells = [impl, _time(st["median"]), _time(st["iqr"]), f"{gbs:.1f}" if gbs else "-"]
            if copy_bw:
                cells.append(f"{100 * gbs / copy_bw:.0f}%" if gbs else "-")
            cells.append(f"{eager['stats']['median'] / st['median']:.2f}x" if eager else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json / --benchmark-save output)")
    p.add_argument("--copy-bw", type=Path, help="copy bandwidth JSON written by bench/gpu_check.sh")
    p.add_argument("--out", type=Path, help="markdown file to write (default: stdout)")
    args = p.parse_args(argv)
    data = json.loads(args.json.read_text())
    copy_bw = json.loads(args.copy_bw.read_text())["GB/s"] if args.copy_bw else None
    text = summarize(data, copy_bw)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)  # atomic: never a half-written summary
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

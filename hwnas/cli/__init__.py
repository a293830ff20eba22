"""The ``hwnas`` command: thin wrappers over the library (``hwnas.api``), one module per verb. Progress
bars and tables live here only.

    hwnas profile   measure every block of a space on a device into a latency table
    hwnas search    search a space on data, latency-aware, and derive an architecture
    hwnas compare   methods side by side on one setting, against random search
    hwnas worker    join a parallel multi-trial search (a shared Optuna storage) as one more worker
    hwnas rank      how well a supernet ranks architectures against their own accuracy
    hwnas export    child network -> ONNX, checked against torch, latency measured
    hwnas train     train an architecture from scratch, report test accuracy
    hwnas latency   show / validate a table, predict an architecture's latency, compare two profiles

Adding a verb: a module here with ``add_parser(sub)`` (its flags; shared groups are in ``_common``) and the
function it sets as ``func``, listed in ``VERBS``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from hwnas.cli import compare, export, latency, profile, rank, search, train, worker
from hwnas.cli._common import _FILE_HANDLERS, EXIT_BAD_INPUT, _setup_logging

VERBS = (profile, search, worker, compare, rank, export, train, latency)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwnas", description="Hardware-aware neural architecture search.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
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

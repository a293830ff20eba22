"""``hwnas worker --study RUN``: one more worker on a parallel multi-trial search (``hwnas search --method
evolution|bo|rl|random --storage URL``), on this machine or any other that reaches the storage."""
from __future__ import annotations

from hwnas.cli._common import _lazy_progress


def cmd_worker(args) -> int:
    from hwnas import api
    from hwnas.cli.search import _print_selection_summary

    result = api.worker(args.study, storage=args.storage, runs=args.runs, trial_progress=_lazy_progress("trials"))
    _print_selection_summary(result)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="join a parallel multi-trial search as one more worker", description=__doc__)
    p.add_argument("--study", required=True, metavar="RUN_DIR|NAME",
                   help="the search's run directory (shared filesystem), or its study name with --storage")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the study's storage, if not the one its run directory recorded (journal:PATH, postgresql://...)")
    p.add_argument("--runs", default="runs",
                   help="with --study NAME: where this machine writes the run's files (runs/NAME)")
    p.set_defaults(func=cmd_worker)

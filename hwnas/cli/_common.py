"""What every ``hwnas`` verb shares: progress bars, logging, the option groups (space, latency table),
``--opt`` / ``--config`` parsing, the search's table callback and finding an architecture to act on."""
from __future__ import annotations

import json
import argparse
import logging
import os
import sys
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


def _lazy_progress(label: str):
    """A ``progress(done, total)`` callback that opens its bar at the first call (a resumed job starts past
    zero) and closes it when ``done`` reaches ``total``; ``done`` is absolute, so a parallel worker may
    report the same count again or several new trials at once."""
    state = {"done": 0}

    def callback(done, total):
        if "bar" not in state:
            state["bar"] = Progress(total, label)
            state["done"] = done - 1 if done > 0 else 0
            if state["done"]:
                state["bar"].update(state["done"])
        if done > state["done"]:
            state["bar"].update(done - state["done"])
            state["done"] = done
        if done >= total and not state.get("closed"):
            state["bar"].close()
            state["closed"] = True

    return callback


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


def _table_callback(args, explicit, record=None):
    """``hwnas.api.table_callback`` with the command's table options."""
    from hwnas.api import table_callback

    return table_callback(explicit, record=record, no_latency=getattr(args, "no_latency", False),
                          latency_device=args.latency_device, tables=args.tables, backend=args.backend,
                          batch=args.batch, dtype=args.dtype, mode=args.mode, provider=args.provider,
                          threads=args.threads, profile_missing=not args.no_profile,
                          progress=_profile_progress("table"))


def _print_range(table, space, config) -> None:
    from hwnas.latency.predictor import LatencyModel

    model = LatencyModel(table, space, config)
    (lo, lo_t), (hi, hi_t) = model.extremes()
    print(f"space {space.name!r} at {config['resolution']}x{config['resolution']}: fastest {lo:.3f} ms, "
          f"slowest {hi:.3f} ms (fixed parts {model.fixed_ms:.3f} ms)")


def _arch_spec(args, verb: str) -> str:
    """``--arch`` as given, or the latest finished search under ``--runs`` (said on stdout)."""
    from hwnas.runs import latest_run

    if args.arch is not None:
        return args.arch
    latest = latest_run(args.runs)
    if latest is None:
        raise ValueError(f"no finished search under {args.runs}/ to {verb}; pass --arch RUN_DIR|arch.json|PRESET")
    print(f"{'exporting' if verb == 'export' else 'training'} the latest run: {latest}")
    return str(latest)


# -- option groups ---------------------------------------------------------------------------------
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
    p.add_argument("--tables", default=None, metavar="DIR",
                   help="the one directory tables are read from and written to (default: $HWNAS_TABLES, else the "
                        "user's table directory over the shipped tables; `hwnas latency show` prints the lookup)")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value

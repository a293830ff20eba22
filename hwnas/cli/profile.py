"""``hwnas profile``: measure every block of a space on a device into a latency table."""
from __future__ import annotations

from hwnas.cli._common import _add_space_opts, _add_table_opts, _config_overrides, _print_range, _profile_progress


def cmd_profile(args) -> int:
    from hwnas import api

    space, config = api.space_and_config(args.space, _config_overrides(args), args.arch)
    table = api.profile(args.space, device=args.device, backend=args.backend, config=_config_overrides(args),
                        arch=args.arch, out=args.out or args.tables, table=args.table, batch=args.batch,
                        dtype=args.dtype, mode=args.mode, provider=args.provider, threads=args.threads,
                        warmup=args.warmup, iterations=args.iterations, statistic=args.statistic, rounds=args.rounds,
                        context=args.context, network_sets=args.network_sets,
                        progress=_profile_progress(space.name))
    _print_range(table, space, config)
    print(f"latency table: {table.path} ({len(table)} rows)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure every block of a space into a latency table")
    p.add_argument("--device", default="cpu", help="device to profile: cpu or cuda[:N] (default %(default)s)")
    _add_space_opts(p)
    _add_table_opts(p)
    p.add_argument("--num-classes", dest="num_classes", type=int, default=None, help="classifier outputs (default 1000)")
    p.add_argument("--arch", default=None, help="profile the skeleton of this arch/preset instead of the space default")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="table directory to write into (default: --tables, else $HWNAS_TABLES, else the user's "
                        "table directory; never the shipped tables unless named here)")
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
                        "with 3, two profiles' medians of the largest-activation rows disagreed; see "
                        "docs/measurements.md, 'In-network network sets')")
    p.set_defaults(func=cmd_profile)

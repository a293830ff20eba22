"""``hwnas train``: train an architecture from scratch, report test accuracy."""
from __future__ import annotations

from hwnas.cli._common import Progress, _arch_spec


def cmd_train(args) -> int:
    from hwnas import api

    r = api.train(_arch_spec(args, "train"), data=args.data, data_root=args.data_root, resolution=args.resolution,
                  epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                  grad_clip=args.grad_clip, seed=args.seed, device=args.device, out=args.out, runs=args.runs,
                  progress=Progress)
    out = r["out"]
    print(f"trained {r['arch']} for {r['epochs']} epochs on {r['data']} at {r['resolution']}x{r['resolution']}: "
          f"test accuracy {r['test_acc']:.4f} (val {r['val_acc']:.4f}), {r['params']:,} parameters; "
          f"weights {out / 'trained.pt'}" + ("; hwnas export uses them" if out == r["run_dir"] else ""))
    return 0


def add_parser(sub) -> None:
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
                   help="clip the gradient norm at this value; 0 turns it off (default: off on chain spaces, 5 on darts and densenas)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--runs", default="runs")
    p.set_defaults(func=cmd_train)

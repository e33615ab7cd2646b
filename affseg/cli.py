"""The `affseg` command line: `affseg info`, `affseg example`, `affseg bench`, `affseg train`, `affseg demo`."""
from __future__ import annotations

import argparse


def _example(args) -> int:
    from affseg.example import run

    run(size=args.size, channels=args.channels, steps=args.steps, seed=args.seed)
    return 0


def _bench(args) -> int:
    from affseg.bench import main

    return main(device=args.device, quick=args.quick, repeats=args.repeats, csv_path=args.csv)


def _demo(args) -> int:
    from affseg.train.demo import main

    return main(steps=args.steps, out=args.out, seed=args.seed, bench=not args.no_bench, quiet=args.quiet)


def _info(args) -> int:
    from affseg.info import report

    print(report())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="affseg", description="Fused kernels for label-efficient segmentation losses.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and which backends can run which op").set_defaults(func=_info)
    ex = sub.add_parser("example", help="a small PDCR + UAFS training run on CPU, fused vs reference")
    ex.add_argument("--size", type=int, default=64, help="image side (pixels)")
    ex.add_argument("--channels", type=int, default=32, help="hidden feature channels")
    ex.add_argument("--steps", type=int, default=20, help="optimisation steps")
    ex.add_argument("--seed", type=int, default=0)
    ex.set_defaults(func=_example)
    bench = sub.add_parser("bench", help="fused kernels vs the reference, side by side: time and peak memory")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--quick", action="store_true", help="smaller sizes (about a minute on 2 cores)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--csv", default=None, help="also write the table to this CSV file")
    bench.set_defaults(func=_bench)
    train = sub.add_parser("train", help="train and evaluate a method on MNI152 or a folder (see --help)",
                           add_help=False)
    train.set_defaults(func=None)
    demo = sub.add_parser("demo", help="supervised vs PDCR+UAFS vs Semi-AGCL on MNI152 slices, then bench --quick")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-bench", action="store_true", help="skip affseg bench --quick")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_demo)
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":  # its own parser (shared with python -m affseg.train and torchrun)
        from affseg.train.runner import main as train_main

        return train_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

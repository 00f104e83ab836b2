"""The `mrl-hf` command."""
from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    from . import demo_digits

    start = time.time()
    rows = demo_digits.run(epochs=args.epochs, seed=args.seed)
    print("\nTop-1 accuracy (%) on held-out digits at each embedding size (first m features):")
    print(demo_digits.format_table(rows))
    print(f"\nMRL keeps accuracy at small sizes; the full-dim model, sliced, does not. ({time.time() - start:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrl-hf", description="Matryoshka Representation Learning for Hugging Face.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="train MRL and a full-dim model offline and compare them per dim",
                               description="Train a small MRL encoder and the same encoder without MRL on "
                                           "scikit-learn's digits; print accuracy per embedding size.")
    demo.add_argument("--epochs", type=int, default=300, help="full-batch training steps per model (default 300)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

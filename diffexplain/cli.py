"""The ``diffexplain`` command: train the default model, or explain one prompt without a browser."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from diffexplain.training.run import main_argv, train

    folder = train(args.preset, args.out, device=args.device, export_to=args.export_to, command=main_argv())
    print(f"model written to {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffexplain`` command."""
    parser = argparse.ArgumentParser(prog="diffexplain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (VAE, then U-Net); run again to resume")
    train.add_argument("--preset", default="default", help="default | classroom | tiny (default: default)")
    train.add_argument("--out", default="runs/default", help="checkpoint folder (default: runs/default)")
    train.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    train.add_argument(
        "--export-to", default=None, help="where to write the model folder (default: OUT/model)"
    )
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffexplain`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

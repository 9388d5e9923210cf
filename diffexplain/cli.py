"""The ``diffexplain`` command: train the default model, or explain one prompt without a browser."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from diffexplain.training.run import main_argv, train

    folder = train(args.preset, args.out, device=args.device, export_to=args.export_to, command=main_argv())
    print(f"model written to {folder}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from diffexplain.training.export import export_model

    folder = export_model(args.out, args.to)
    print(f"model written to {folder}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from diffexplain.report import write_report

    paths = write_report(
        args.prompt,
        args.out,
        model=args.model,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        scheduler=args.scheduler,
        device=args.device,
    )
    for label, path in paths.items():
        print(f"{label:>14}: {path}")
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
    export = sub.add_parser(
        "export", help="write a model folder from a run's latest checkpoints (also mid-run)"
    )
    export.add_argument(
        "--out", default="runs/default", help="the run's checkpoint folder (default: runs/default)"
    )
    export.add_argument("--to", required=True, help="the model folder to write")
    export.set_defaults(func=_export)
    explain = sub.add_parser(
        "explain",
        help="run one prompt and write the image, an x̂0 strip, a CFG on/off comparison and the trace",
    )
    explain.add_argument("prompt", help='e.g. "a red circle on the left and a blue square on the right"')
    explain.add_argument("--out", default="diffexplain-out", help="output folder (default: diffexplain-out)")
    explain.add_argument(
        "--model",
        default=None,
        help="a model folder from `diffexplain train`, or a diffusers "
        "Stable Diffusion folder/id (default: the embedded model)",
    )
    explain.add_argument("--steps", type=int, default=None, help="inference steps (default: the model's)")
    explain.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)"
    )
    explain.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    explain.add_argument("--scheduler", default=None, help="ddim, euler, dpm++2m, ... (default: the model's)")
    explain.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    explain.set_defaults(func=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffexplain`` command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

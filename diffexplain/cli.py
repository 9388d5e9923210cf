"""The ``diffexplain`` command: train the default model, explain one prompt without a browser, or copy out the notebooks."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from diffexplain.checks import SEED_RANGE
from diffexplain.errors import ModelFolderError, TrainConfigError
from diffexplain.models.config import PRESETS, PRESETS_NEEDING_INIT
from diffexplain.scheduler_state import SCHEDULER_NAMES
from diffexplain.training.cascade_config import CASCADE_PRESETS
from diffexplain.training.gan_config import GAN_PRESETS


class UsageError(Exception):
    """A command-line value that cannot work; reported like argparse's own errors (exit code 2)."""


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed_int(text: str) -> int:
    """An argparse type: a seed, a whole number from 0 to 2**64 − 1 (what torch.Generator.manual_seed takes)."""
    low, high = SEED_RANGE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from {low} to 2**64 − 1, got {text!r}"
        ) from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be a whole number from {low} to 2**64 − 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite real number (not nan or inf, which float() would take)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def check_model_arg(model: str) -> None:
    """Fail fast on a ``--model`` that is neither a shipped model's name, a model folder nor (plausibly) a hub id."""
    from diffexplain.models.store import SHIPPED_MODELS

    if model in SHIPPED_MODELS:
        return
    path = Path(model).expanduser()
    if path.is_dir():
        if not ((path / "model.json").is_file() or (path / "model_index.json").is_file()):
            raise UsageError(
                f"--model {model}: the folder has neither model.json (a `diffexplain train` model) "
                "nor model_index.json (a diffusers Stable Diffusion folder)"
            )
    elif path.exists():
        raise UsageError(f"--model {model}: not a folder")
    elif path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise UsageError(f"--model {model}: no such folder")


def _train(args: argparse.Namespace) -> int:
    if args.preset in GAN_PRESETS:
        return _train_gan(args)
    if args.preset in CASCADE_PRESETS:
        return _train_cascade(args)
    if args.stage is not None:
        raise UsageError(
            f"--stage is for the pixel-cascade presets ({', '.join(CASCADE_PRESETS)}), not {args.preset!r}"
        )
    args.out = args.out or "runs/default"
    if args.iterations is not None:
        raise UsageError(
            f"--iterations is for the GAN presets ({', '.join(GAN_PRESETS)}), not {args.preset!r}"
        )
    from diffexplain.training.run import train

    folder = train(
        args.preset,
        args.out,
        device=args.device,
        export_to=args.export_to,
        command=args.command_line,
        unet_init=args.unet_init,
    )
    print(f"model written to {folder}")
    return 0


def _train_cascade(args: argparse.Namespace) -> int:
    from diffexplain.training.cascade_run import train_cascade

    for flag, value in (("--unet-init", args.unet_init), ("--iterations", args.iterations)):
        if value is not None:
            raise UsageError(f"{flag} is not for the pixel-cascade preset {args.preset!r}")
    stages = ("I", "II") if args.stage is None else (args.stage,)
    folder = train_cascade(
        args.preset,
        args.out or f"runs/{args.preset}",
        stages=stages,
        device=args.device,
        export_to=args.export_to,
        command=args.command_line,
    )
    if folder is None:
        print(
            f"stage {args.stage} trained; run the other stage (or both, without --stage) to export the cascade"
        )
    else:
        print(f"pixel cascade written to {folder}")
    return 0


def _train_gan(args: argparse.Namespace) -> int:
    from diffexplain.training.gan import train_gan
    from diffexplain.training.gan_config import gan_preset

    if args.unet_init is not None:
        raise UsageError(f"--unet-init is for the diffusion presets, not the GAN preset {args.preset!r}")
    if args.stage is not None:
        raise UsageError(f"--stage is for the pixel-cascade presets, not the GAN preset {args.preset!r}")
    args.out = args.out or "runs/default"
    overrides = {} if args.iterations is None else {"iterations": args.iterations}
    folder = train_gan(
        gan_preset(args.preset, **overrides),
        args.out,
        device=args.device,
        export_to=args.export_to,
        command=args.command_line,
    )
    print(f"GAN written to {folder}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from diffexplain.training.export import export_model

    folder = export_model(args.out, args.to)
    print(f"model written to {folder}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from diffexplain.report import write_report

    if args.model is not None:
        check_model_arg(args.model)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: a file is in the way (expected a folder)")
    paths = write_report(
        args.prompt,
        args.out,
        model=args.model,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        scheduler=args.scheduler,
        device=args.device,
        html=False if args.no_html else (args.html or True),
    )
    for label, path in paths.items():
        print(f"{label:>14}: {path}")
    return 0


def _notebooks(args: argparse.Namespace) -> int:
    from diffexplain.notebooks import NotebooksChangedError, copy_to

    try:
        result = copy_to(args.dir, force=args.force)
    except (NotebooksChangedError, NotADirectoryError, IsADirectoryError) as err:
        print(f"diffexplain: error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffexplain`` command."""
    parser = argparse.ArgumentParser(prog="diffexplain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a model (VAE, then U-Net; or a GAN with a gan preset); run again to resume"
    )
    train.add_argument(
        "--preset",
        default="default",
        choices=[*PRESETS, *GAN_PRESETS, *CASCADE_PRESETS],
        help="%(choices)s (default: %(default)s); the gan presets train a GAN (see docs/gan.md), the "
        "pixel-cascade presets a two-stage pixel cascade (see docs/pixel-cascade.md)",
    )
    train.add_argument(
        "--out",
        default=None,
        help="checkpoint folder (default: runs/default; runs/PRESET for the pixel-cascade presets)",
    )
    train.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    train.add_argument(
        "--export-to", default=None, help="where to write the model folder (default: OUT/model)"
    )
    train.add_argument(
        "--unet-init",
        default=None,
        metavar="RUN",
        help="start the U-Net from the run folder RUN (its EMA weights, VAE and latents); "
        f"the {', '.join(p for p in PRESETS if p in PRESETS_NEEDING_INIT)} presets need it",
    )
    train.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        help="GAN presets only: train to this many iterations in all (default: the preset's)",
    )
    train.add_argument(
        "--stage",
        choices=["I", "II"],
        default=None,
        help="pixel-cascade presets only: train this stage alone (the two can train at once, in two "
        "processes); the cascade is exported once both have finished",
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
        help="run one prompt and write the image, an x̂0 strip, a CFG on/off comparison, the trace "
        "and a one-file HTML page",
    )
    explain.add_argument("prompt", help='e.g. "a red circle on the left and a blue square on the right"')
    explain.add_argument("--out", default="diffexplain-out", help="output folder (default: diffexplain-out)")
    explain.add_argument(
        "--model",
        default=None,
        help="'flow' (the embedded flow-matching model), a model folder from `diffexplain train`, or a "
        "diffusers Stable Diffusion folder/id (default: the embedded model)",
    )
    explain.add_argument(
        "--steps", type=positive_int, default=None, help="inference steps (default: the model's)"
    )
    explain.add_argument(
        "--guidance-scale", type=finite_float, default=None, help="CFG scale (default: the model's)"
    )
    explain.add_argument("--seed", type=seed_int, default=0, help="random seed, 0 to 2**64 − 1 (default: 0)")
    explain.add_argument(
        "--scheduler",
        default=None,
        choices=list(SCHEDULER_NAMES),
        metavar="NAME",
        help="one of %(choices)s (default: the model's)",
    )
    explain.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    page = explain.add_mutually_exclusive_group()
    page.add_argument(
        "--html",
        default=None,
        metavar="FILE",
        help="where to write the one-file HTML page, which opens in any browser without Python "
        "(default: OUT/trace.html)",
    )
    page.add_argument("--no-html", action="store_true", help="write no HTML page")
    explain.set_defaults(func=_explain)
    notebooks = sub.add_parser(
        "notebooks", help="copy the teaching notebooks into a folder (kept: any you changed, unless --force)"
    )
    notebooks.add_argument("dir", help="the folder to copy them into (created if missing)")
    notebooks.add_argument(
        "--force", action="store_true", help="overwrite notebooks there that differ from the shipped ones"
    )
    notebooks.set_defaults(func=_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffexplain`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the recipe records this command; sys.argv would be the host's when main() is called in-process
    given = sys.argv[1:] if argv is None else argv
    args.command_line = " ".join(shlex.quote(a) for a in ["diffexplain", *given])
    try:
        return args.func(args)
    except UsageError as err:
        parser.error(str(err))  # exits with code 2
    except (ModelFolderError, FileNotFoundError, TrainConfigError) as err:  # a damaged model folder, a run
        # not started, a run to start from that does not fit
        print(f"diffexplain: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

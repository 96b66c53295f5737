"""Pieces shared by the three command-line entry points: flag parsing and clean error exits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from retrieval.config import DEVICES
from retrieval.errors import InputError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def str2bool(text: str) -> bool:
    """Parse ``--flag=true|false`` (SPEC 8)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    """A boolean flag accepting ``--name`` and ``--name=true|false``; default None (unset)."""
    parser.add_argument(
        f"--{name}", type=str2bool, nargs="?", const=True, default=None, help=help_text
    )


def add_workdir_args(parser: argparse.ArgumentParser, *, checkpoint: bool = True) -> None:
    """``--workdir`` (and ``--checkpoint``) as every CLI takes them (SPEC 0, issue 4 item 7)."""
    parser.add_argument(
        "--workdir",
        default=".",
        help="folder holding splits/, class_to_idx.json, checkpoints/, results/, gallery/",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="auto (CUDA if present, else CPU; default), cpu, or cuda",
    )
    if checkpoint:
        parser.add_argument(
            "--checkpoint",
            default=None,
            help="model checkpoint (default: the best model of the workdir's current run)",
        )


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], e.g. 0.95; got {text}")
    return value


def add_target_accuracy(parser: argparse.ArgumentParser) -> None:
    """``--target_accuracy``: the accuracy accepted answers keep (SPEC 5.3)."""
    parser.add_argument(
        "--target_accuracy",
        type=_probability,
        default=None,
        help="accuracy to keep on accepted answers; the reject threshold is chosen on val for "
        "it (default: the stored policy's, 0.95 for a new gallery)",
    )


def add_local_match(parser: argparse.ArgumentParser) -> None:
    """``--local_match``: keypoint matching fused with the global score (issue 36)."""
    parser.add_argument(
        "--local_match",
        choices=["auto", "on", "off"],
        default="auto",
        help="re-score each photo's top hits by verified keypoint matches: auto (default) where "
        "val scores it above the global embedding alone, on, or off",
    )


def default_checkpoint(workdir: str | Path, checkpoint: str | None) -> Path:
    """The checkpoint a CLI uses: the flag's, or the run's best model."""
    from retrieval.run_folder import checkpoints_dir, current_run

    if checkpoint:
        return Path(checkpoint)
    return checkpoints_dir(current_run(Path(workdir))) / "best_model.pt"


def workspace_from_args(args: argparse.Namespace, **extra):
    """The model and gallery that ``evaluate.py`` and ``search.py`` flags name."""
    from retrieval.workspace import open_workspace

    workdir = Path(args.workdir)
    return open_workspace(
        workdir,
        default_checkpoint(workdir, args.checkpoint),
        tta=args.tta,
        batch_size=args.batch_size,
        rebuild=args.rebuild_gallery,
        device=args.device or "auto",
        target_accuracy=getattr(args, "target_accuracy", None),
        **extra,
    )


def cli_main(
    prog: str,
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
) -> int:
    """The whole ``main(argv)`` of a CLI: OpenMP environment first, then flags, then ``run``."""
    from retrieval.device import prepare_environment

    prepare_environment()
    args = build_parser().parse_args(argv)
    return run_cli(prog, lambda: run(args))


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a CLI body; user errors become one line on stderr and exit code 2.

    So does a package missing from the Python that runs it (no venv): a missing module of
    this project itself is a bug and keeps its traceback.
    """
    try:
        return body()
    except (InputError, FileNotFoundError, PermissionError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if not err.name or err.name.partition(".")[0] == "retrieval":
            raise
        print(
            f"{prog}: error: this Python ({sys.executable}) has no module {err.name!r}, which "
            f"{prog} needs; run it with the project's environment (.venv/bin/python {prog} ...) "
            f"or install the requirements into this Python: {sys.executable} -m pip install "
            "-r requirements.txt",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

"""Command line: a thin layer over the public API (no logic beyond parsing and printing)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmtprune._util.progress import say
from rmtprune.cli.criteria import (
    CRITERIA,
    add_criterion_options,
    add_fit_options,
    criterion_of,
    mp_of,
)
from rmtprune.cli.experiments import (
    add_demo_parser,
    add_reproduce_parser,
    cmd_demo,
    cmd_reproduce,
)

if TYPE_CHECKING:
    from rmtprune.ondisk.inputs import InputPlan
    from rmtprune.pruning.report import ModelReport, PruneReport
    from rmtprune.pruning.selection import Select

__all__ = ["CRITERIA", "build_parser", "main"]


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        metavar="PATH",
        help="weights: a Hugging Face model directory (config.json + safetensors, sharded "
        "or not), an rmtprune .safetensors file, a plain .safetensors state dict, a "
        "*.safetensors.index.json, or a PyTorch state dict (.pt/.pth, weights_only=True)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PACKAGE.MODULE:FACTORY",
        help="build the exact model by calling this factory (no arguments), then load FILE into it",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="same as the positional FILE (for use with --model)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the report as JSON to PATH (or to stdout with no PATH)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar over the layers (the walker's tqdm bar, or the bar of a streamed "
        "checkpoint analysis); default: when stderr is a terminal",
    )
    _add_checkpoint_options(p)


def _add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpoints without a model (see docs/pretrained.md)")
    g.add_argument(
        "--no-model",
        action="store_true",
        help="do not build the Hugging Face architecture even if transformers is installed: "
        "weights of unknown type are analysed but not pruned",
    )
    g.add_argument(
        "--assume-linear",
        nargs="+",
        default=(),
        metavar="PATTERN",
        help="without a model, treat the 2-D weights of these layers (names or fnmatch "
        "patterns) as nn.Linear so they can be pruned; never embeddings, norms, positions",
    )
    g.add_argument(
        "--assume-conv2d",
        nargs="+",
        default=(),
        metavar="PATTERN",
        help="without a model, treat the 4-D weights of these layers as nn.Conv2d (groups=1)",
    )


def _add_spectral_commands(sub: Any) -> None:
    """The ``analyze`` and ``prune`` subcommands."""
    a = sub.add_parser(
        "analyze",
        help="fit the Marchenko–Pastur law to every weight layer",
        description="Fit BEMA to every weight layer and print one row per layer.",
    )
    _add_source_options(a)
    add_fit_options(a)

    p = sub.add_parser(
        "prune",
        help="remove the noise part of MP-like layers and save the result",
        description="Truncate every selected layer to the rank its criterion keeps (default: "
        "the paper's rule, docs/method.md section 4: spikes plus --bulk-keep of the bulk of "
        "MP-like layers) and save the model in rmtprune's format (safetensors + structure).",
    )
    _add_source_options(p)
    add_fit_options(p)
    add_criterion_options(p)
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="OUT",
        help="the pruned model: .safetensors, or a directory for a model directory input "
        "(rmtprune.save_pretrained, with copies of the input's tokenizer files); required "
        "unless --dry-run",
    )
    p.add_argument(
        "--split",
        choices=("auto", "always", "never"),
        default="auto",
        help="split a layer into two factors: when it saves parameters (auto), "
        "always, or never (default: auto)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="report what would be done and write nothing"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def build_parser() -> argparse.ArgumentParser:
    """The ``rmtprune`` argument parser (documented in ``rmtprune --help``)."""
    parser = argparse.ArgumentParser(
        prog="rmtprune",
        description="Random-matrix-theory spectral analysis and pruning of PyTorch models.",
    )
    from rmtprune import __version__

    parser.add_argument("--version", action="version", version=f"rmtprune {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, also print the traceback"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_spectral_commands(sub)
    add_reproduce_parser(sub)
    add_demo_parser(sub)
    return parser


def _select(args: argparse.Namespace) -> Select:
    """The one :class:`Select` of the command (checked as ``rmtprune.analyze`` checks it:
    "The 'min_dim' parameter of prune ...")."""
    from rmtprune.pruning.options import resolve_select

    given = {"layers": args.layers, "min_dim": args.min_dim, "min_params": args.min_params}
    select = resolve_select(None, given, args.command)
    return dataclasses.replace(select, exclude=args.exclude or ())


def _emit_json(report: ModelReport | PruneReport, target: str) -> None:
    if target == "-":
        print(report.to_json())
    else:
        report.to_json(target)  # atomic write


def _weights(args: argparse.Namespace) -> str:
    weights = args.weights or args.source
    if weights is None:
        raise ValueError("give the weights PATH (positional or --weights)")
    if args.weights and args.source and args.weights != args.source:
        raise ValueError("give the weights once (positional PATH or --weights)")
    return str(weights)


def _plan(args: argparse.Namespace) -> InputPlan:
    """The input and its route, decided once (:func:`rmtprune.ondisk.inputs.plan_input`)."""
    from rmtprune.ondisk.inputs import plan_input

    return plan_input(
        _weights(args),
        model=args.model,
        no_model=args.no_model,
        assume_linear=args.assume_linear,
        assume_conv2d=args.assume_conv2d,
    )


def _progress(args: argparse.Namespace, message: str) -> None:
    say(message, enabled=not args.quiet and args.json != "-")


def _check_outputs(args: argparse.Namespace, plan: InputPlan | None) -> None:
    """Check every output path before any work starts (see ``rmtprune._util.fileio``);
    ``plan`` (the input's route) says whether ``-o`` is a model directory."""
    from rmtprune._util.apart import check_apart
    from rmtprune._util.fileio import check_output_dir, check_output_file

    output = getattr(args, "output", None)
    if output == "-":
        raise ValueError(
            "-o/--output - (standard output) is not supported: the pruned weights are a "
            "safetensors file or a model directory; give a path (write ./- for a file named '-')"
        )
    if output is not None and not getattr(args, "dry_run", False):
        if plan is not None and plan.writes_directory:
            if Path(output).exists() and not args.overwrite:
                raise FileExistsError(
                    f"-o/--output {output} exists; pass --overwrite to replace it"
                )
            check_output_dir(output, what="-o/--output")
        else:
            check_output_file(
                output,
                what="-o/--output",
                overwrite=args.overwrite,
                overwrite_hint="pass --overwrite",
            )
    json_path = None if args.json in (None, "-") else args.json
    if json_path is not None:
        check_output_file(json_path, what="--json", overwrite=True, overwrite_hint="")
    written = None if getattr(args, "dry_run", False) else output
    in_directory = plan is not None and plan.writes_directory
    check_apart(  # the one check that no output touches a file of the input
        [p for p in (args.source, args.weights) if p is not None],
        files={"-o/--output": None if in_directory else written, "--json": json_path},
        directories={"-o/--output": written if in_directory else None},
    )


def _bar(args: argparse.Namespace) -> bool | None:
    """``--progress``/``--no-progress``; ``--quiet`` or JSON on stdout turn the bar off."""
    return False if args.quiet or args.json == "-" else args.progress


def _cmd_analyze(args: argparse.Namespace) -> int:
    from rmtprune.ondisk.inputs import analyze_input

    _check_outputs(args, None)  # analyze writes no model
    _progress(args, "fitting the spectrum of each layer ...")
    plan = _plan(args)
    report = analyze_input(plan, mp_of(args), _select(args), progress=_bar(args))
    if args.json is not None:
        _emit_json(report, args.json)
    if args.json != "-":
        print(report.to_markdown())
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from rmtprune.ondisk.inputs import open_input, prune_input
    from rmtprune.pruning.criteria import layerwise

    if args.output is None and not args.dry_run:
        raise ValueError("-o/--output is required unless --dry-run")
    plan = _plan(args)
    _check_outputs(args, plan)
    criterion = criterion_of(args)
    # the rank criteria and uniform or N:M sparsity decide one layer at a time (a checkpoint
    # is streamed); global sparsity compares all selected layers: the input is read whole
    whole = not layerwise(criterion)
    with _transformers_bars(args, plan):
        source = open_input(plan, whole=whole)
    split = {"auto": "auto", "always": True, "never": False}[args.split]
    masks = getattr(criterion, "produces_masks", False)
    if split is True and masks:
        raise ValueError(
            "--split always applies to rank criteria: --criterion sparsity zeroes weights "
            "under a mask and never splits a layer"
        )
    each = "scoring and masking each layer" if masks else "fitting and pruning each layer"
    _progress(args, "scoring every layer ..." if whole else f"{each} ...")
    report = prune_input(
        source,
        criterion,
        _select(args),
        split=split,  # type: ignore[arg-type]
        dry_run=args.dry_run,
        output=args.output,
        overwrite=args.overwrite,
        progress=_bar(args),
    )
    if not args.dry_run:  # written before the report: no report is left behind if saving fails
        _progress(args, f"saved {args.output}" + _companions(plan))
    if args.json is not None:
        _emit_json(report, args.json)
    if args.json != "-":
        print(report.to_markdown())
    return 0


@contextlib.contextmanager
def _transformers_bars(args: argparse.Namespace, plan: InputPlan) -> Iterator[None]:
    """transformers' own bars ("Loading weights" of a model directory) follow ours: off with
    --quiet, --no-progress or JSON on stdout, and by default when stderr is not a terminal
    (never turned on where the user turned them off)."""
    show = _bar(args)
    if show is None:
        show = sys.stderr.isatty()
    if show or not plan.writes_directory:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _companions(plan: InputPlan) -> str:
    """For a model directory input: which of its other files the output has copies of, and
    which it has not (say so, never silently)."""
    from rmtprune.hf.pretrained import is_weights_file, tokenizer_files

    if not plan.writes_directory:
        return ""
    copied = [os.path.basename(f) for f in tokenizer_files(plan.path)]
    left = sorted(
        name
        for name in os.listdir(plan.path)
        if name != "config.json" and name not in copied and not is_weights_file(name)
    )
    text = f", with copies of the input's tokenizer files ({', '.join(copied) or 'none found'})"
    return text + (f"; not copied: {', '.join(left)}" if left else "")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but a usage error prints one line (argparse's last)."""
    from rmtprune._util.errors import one_line

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit as exc:
        text = captured.getvalue()
        start = text.rfind("\nrmtprune", 0, text.rfind(": error: ")) + 1  # after the usage
        if exc.code not in (0, None) and text.strip():
            print(f"{one_line(text[start:])} (see rmtprune --help)", file=sys.stderr)
        else:
            sys.stderr.write(captured.getvalue())
        raise


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`rmtprune._util.errors.Terminated` (a
    ``KeyboardInterrupt``), so that temporary files are removed as after Ctrl-C; the earlier
    handler is restored afterwards.  Only the main thread can set a handler."""
    from rmtprune._util.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rmtprune`` command.

    Every expected failure ends with one line on stderr naming the file or parameter and
    exit status 2 (130 after Ctrl-C, 143 after SIGTERM, 1 for an unexpected error);
    ``--debug`` (anywhere on the command line) prints the traceback as well.  After Ctrl-C
    or SIGTERM no temporary file is left and every output is as it was before the run.
    """
    from rmtprune._util.errors import describe_error

    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    args = _parse(build_parser(), [a for a in args_list if a != "--debug"])
    handlers = {
        "analyze": _cmd_analyze,
        "prune": _cmd_prune,
        "reproduce": cmd_reproduce,
        "demo": cmd_demo,
    }
    try:
        with _sigterm_raises():
            return handlers[args.command](args)
    except (Exception, KeyboardInterrupt) as exc:
        if debug:
            traceback.print_exc()
        message, status = describe_error(exc)
        print(f"rmtprune {args.command}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command line: a thin layer over the public API (no logic beyond parsing and printing)."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmtprune.pruning.criteria import Energy
from rmtprune.pruning.selection import DEFAULT_MIN_DIM, DEFAULT_MIN_PARAMS

if TYPE_CHECKING:
    from rmtprune.pruning.criteria import Criterion, MPCriterion
    from rmtprune.pruning.report import ModelReport, PruneReport
    from rmtprune.pruning.selection import Select

__all__ = ["CRITERIA", "build_parser", "main"]

CRITERIA = {
    "mp": "MPCriterion",
    "gavish-donoho": "GavishDonohoCriterion",
    "energy": "Energy",
    "rank": "FixedRank",
    "ratio": "FixedRatio",
}
"""``--criterion`` choices and the :mod:`rmtprune.pruning.criteria` class each stands for."""


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spectral fit")
    g.add_argument(
        "--alpha",
        type=float,
        default=0.25,
        help="BEMA trimming fraction in (0, 0.5) (default: %(default)s)",
    )
    g.add_argument(
        "--beta",
        type=float,
        default=0.1,
        help="BEMA tail level in (0, 1): false-spike rate per layer (default: %(default)s)",
    )
    g.add_argument(
        "--fit-cutoff",
        type=float,
        default=0.05,
        help="largest fit statistic D for a layer to count as MP-like (default: %(default)s)",
    )
    g.add_argument(
        "--conv-fit-cutoff",
        type=float,
        default=None,
        help="separate cutoff for Conv2d layers (the authors used 0.6)",
    )
    g.add_argument(
        "--layers",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these layers (names or fnmatch patterns such as 'encoder.*')",
    )
    g.add_argument(
        "--exclude",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="leave out these layers (names or fnmatch patterns such as 'lm_head' or '*.out_proj')",
    )
    g.add_argument(
        "--min-dim",
        type=int,
        default=DEFAULT_MIN_DIM,
        help="skip layers with min(m, n) below this (default: %(default)s)",
    )
    g.add_argument(
        "--min-params",
        type=int,
        default=DEFAULT_MIN_PARAMS,
        help="skip layers with fewer than this many weight entries (default: %(default)s)",
    )


def _add_criterion_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rank criterion")
    g.add_argument(
        "--criterion",
        choices=tuple(CRITERIA),
        default="mp",
        help="how many singular values each layer keeps: mp (spikes + --bulk-keep of the "
        "bulk, the paper's rule), gavish-donoho (optimal hard threshold), energy (--energy of "
        "sum s^2), rank (--rank values), ratio (--ratio of min(m, n)) (default: %(default)s)",
    )
    g.add_argument(
        "--bulk-keep",
        type=float,
        default=0.0,
        help="mp: fraction of the bulk singular values kept, in [0, 1] (default: %(default)s)",
    )
    g.add_argument(
        "--energy",
        type=float,
        default=None,
        help=f"energy: fraction of sum s^2 kept, in (0, 1] (default: {Energy().energy:g})",
    )
    g.add_argument("--rank", type=int, default=None, help="rank: singular values kept per layer")
    g.add_argument(
        "--ratio", type=float, default=None, help="ratio: fraction of min(m, n) kept, in (0, 1]"
    )
    g.add_argument(
        "--min-rank",
        type=int,
        default=None,
        help="mp, gavish-donoho: never keep fewer singular values than this",
    )


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        metavar="FILE",
        help="weights: an rmtprune .safetensors file, a plain .safetensors state dict, "
        "or a PyTorch state dict (.pt/.pth, loaded with weights_only=True); "
        "without --model the layer types are inferred from tensor shapes",
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
        help="progress bar over the layers (default: when stderr is a terminal; needs tqdm)",
    )


def _add_spectral_commands(sub: Any) -> None:
    """The ``analyze`` and ``prune`` subcommands."""
    a = sub.add_parser(
        "analyze",
        help="fit the Marchenko–Pastur law to every weight layer",
        description="Fit BEMA to every weight layer and print one row per layer.",
    )
    _add_source_options(a)
    _add_fit_options(a)

    p = sub.add_parser(
        "prune",
        help="remove the noise part of MP-like layers and save the result",
        description="Truncate every selected layer to the rank its criterion keeps (default: "
        "the paper's rule, SPEC section 4: spikes plus --bulk-keep of the bulk of MP-like "
        "layers) and save the model in rmtprune's format (safetensors + structure).",
    )
    _add_source_options(p)
    _add_fit_options(p)
    _add_criterion_options(p)
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="OUT",
        help="where to write the pruned model (.safetensors); required unless --dry-run",
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

    r = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments and write its report",
        description="Reproduce an experiment of the paper (SPEC section 6): both arms over "
        "several seeds, baselines, metrics, figures and report.md/report.html in one run "
        "directory. A killed run continues where it stopped when given the same --out.",
    )
    r.add_argument("experiment", metavar="EXPERIMENT", help="experiment id (see --list)", nargs="?")
    r.add_argument("--list", action="store_true", help="list the experiments and exit")
    r.add_argument(
        "--preset",
        choices=("smoke", "small", "paper"),
        default="small",
        help="scale: smoke (seconds), small (minutes here), paper (hours) (default: %(default)s)",
    )
    r.add_argument("--seeds", type=int, default=None, help="number of seeds (default: preset's)")
    r.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/...)")
    _add_data_options(r)
    r.add_argument(
        "--no-resume", action="store_true", help="start over even if --out has checkpoints"
    )
    r.add_argument("--quiet", action="store_true", help="no progress output")

    d = sub.add_parser(
        "demo",
        help="the main job: normal vs pruned training on Fashion-MNIST",
        description="Train a fully connected network on Fashion-MNIST with and without spectral "
        "pruning over a few seeds (a few minutes on a laptop CPU), print the comparison and "
        "write the report. --synthetic runs a data-free spectral demonstration instead.",
    )
    d.add_argument("--seeds", type=int, default=3, help="number of seeds (default: %(default)s)")
    d.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/...)")
    _add_data_options(d)
    d.add_argument(
        "--synthetic",
        action="store_true",
        help="no data needed: BEMA on a signal-plus-noise matrix and pruning of a fresh network",
    )
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic demo")
    d.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="dataset root (default: $RMTPRUNE_DATA, else ~/.cache/rmtprune)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download missing datasets from their official locations (SHA-256 verified)",
    )


def _select(args: argparse.Namespace) -> Select:
    import rmtprune

    return rmtprune.Select(args.layers, args.exclude, args.min_dim, args.min_params)


def _mp(
    args: argparse.Namespace, bulk_keep: float = 0.0, min_rank: int | None = None
) -> MPCriterion:
    from torch import nn

    from rmtprune.pruning.options import resolve_criterion

    fit_cutoff = (
        args.fit_cutoff
        if args.conv_fit_cutoff is None
        else {nn.Conv2d: args.conv_fit_cutoff, object: args.fit_cutoff}
    )
    given = {"bulk_keep": bulk_keep, "min_rank": min_rank, "alpha": args.alpha}
    given.update(beta=args.beta, fit_cutoff=fit_cutoff)
    # the older keywords' check names the command: "The 'alpha' parameter of analyze ..."
    return resolve_criterion(None, given, args.command)  # type: ignore[return-value]


def _criterion(args: argparse.Namespace) -> Criterion:
    import rmtprune

    own = {"energy": "energy", "rank": "rank", "ratio": "ratio"}
    for option, name in own.items():
        if getattr(args, option) is not None and args.criterion != name:
            raise ValueError(f"--{option} applies to --criterion {name} only")
    if args.criterion == "mp":
        return _mp(args, args.bulk_keep, args.min_rank)
    if args.criterion == "gavish-donoho":
        return rmtprune.GavishDonohoCriterion(min_rank=args.min_rank)
    if args.criterion == "energy":
        return Energy() if args.energy is None else Energy(args.energy)
    value = getattr(args, args.criterion)
    if value is None:
        raise ValueError(f"--criterion {args.criterion} needs --{args.criterion}")
    return rmtprune.FixedRank(value) if args.criterion == "rank" else rmtprune.FixedRatio(value)


def _emit_json(report: ModelReport | PruneReport, target: str) -> None:
    if target == "-":
        print(report.to_json())
    else:
        report.to_json(target)  # atomic write


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from rmtprune.sources import load_model

    weights = args.weights or args.source
    if weights is None:
        raise SystemExit("rmtprune: error: give a weights FILE (positional or --weights)")
    if args.weights and args.source and args.weights != args.source:
        raise SystemExit("rmtprune: error: give the weights once (positional FILE or --weights)")
    return load_model(weights, model=args.model)


def _progress(args: argparse.Namespace, message: str) -> None:
    if not args.quiet and not (args.json == "-"):
        print(message, file=sys.stderr, flush=True)


def _check_outputs(args: argparse.Namespace) -> None:
    """Check every output path before any work starts (see ``rmtprune._fileio``)."""
    from rmtprune._fileio import check_output_file

    output = getattr(args, "output", None)
    if output is not None and not getattr(args, "dry_run", False):
        check_output_file(
            output, what="-o/--output", overwrite=args.overwrite, overwrite_hint="pass --overwrite"
        )
    if args.json not in (None, "-"):
        check_output_file(args.json, what="--json", overwrite=True, overwrite_hint="")
    json_path = None if args.json in (None, "-") else Path(args.json).resolve()
    inputs = {Path(p).resolve() for p in (args.source, args.weights) if p is not None}
    if json_path is not None and output is not None and json_path == Path(output).resolve():
        raise ValueError(f"--json and -o/--output both name {output}; give two different files")
    if json_path is not None and json_path in inputs:
        raise ValueError(f"--json {args.json} is the input weights file; give another path")


def _bar(args: argparse.Namespace) -> bool | None:
    """``--progress``/``--no-progress``; ``--quiet`` or JSON on stdout turn the bar off."""
    return False if args.quiet or args.json == "-" else args.progress


def _cmd_analyze(args: argparse.Namespace) -> int:
    import rmtprune

    _check_outputs(args)
    model = _load(args)
    _progress(args, "fitting the spectrum of each layer ...")
    report = rmtprune.analyze(model, criterion=_mp(args), select=_select(args), progress=_bar(args))
    if args.json is not None:
        _emit_json(report, args.json)
    if args.json != "-":
        print(report.to_markdown())
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    import rmtprune

    if args.output is None and not args.dry_run:
        raise SystemExit("rmtprune prune: error: -o/--output is required unless --dry-run")
    _check_outputs(args)
    model = _load(args)
    split = {"auto": "auto", "always": True, "never": False}[args.split]
    _progress(args, "fitting and pruning each layer ...")
    pruned, report = rmtprune.prune(
        model,
        criterion=_criterion(args),
        select=_select(args),
        split=split,  # type: ignore[arg-type]
        dry_run=args.dry_run,
        inplace=True,
        progress=_bar(args),
    )
    if not args.dry_run:  # the model first: no report is left behind if saving fails
        rmtprune.save(pruned, args.output, overwrite=args.overwrite)
        _progress(args, f"saved {args.output}")
    if args.json is not None:
        _emit_json(report, args.json)
    if args.json != "-":
        print(report.to_markdown())
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rmtprune.experiments import reproduce
    from rmtprune.experiments.analysis import all_experiments

    if args.list or args.experiment is None:
        for key, title in all_experiments().items():
            print(f"{key:12s} {title}")
        return 0 if args.list else 2
    if args.out is not None:
        from rmtprune._fileio import check_output_dir

        check_output_dir(args.out, what="--out")
    result = reproduce(
        args.experiment,
        preset=args.preset,
        seeds=args.seeds,
        out=args.out,
        data_dir=args.data_dir,
        download=args.download,
        progress=not args.quiet,
        resume=not args.no_resume,
    )
    print(f"report: {result.run_dir / 'report.md'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.synthetic:
        from rmtprune.demo import run_synthetic_demo

        run_synthetic_demo(seed=args.seed)
        return 0
    from rmtprune._fileio import check_output_dir
    from rmtprune.experiments import run_demo

    if args.out is not None:
        check_output_dir(args.out, what="--out")
    run_demo(  # prints the comparison, the verdicts and where the report is
        data_dir=args.data_dir,
        download=args.download,
        out=args.out,
        seeds=args.seeds,
        progress=not args.quiet,
    )
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but a usage error prints one line (argparse's last)."""
    from rmtprune._errors import one_line

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rmtprune`` command.

    Every expected failure ends with one line on stderr naming the file or parameter and
    exit status 2 (130 after Ctrl-C, 1 for an unexpected error); ``--debug`` (anywhere on
    the command line) prints the traceback as well.
    """
    from rmtprune._errors import describe_error

    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    args = _parse(build_parser(), [a for a in args_list if a != "--debug"])
    handlers = {
        "analyze": _cmd_analyze,
        "prune": _cmd_prune,
        "reproduce": _cmd_reproduce,
        "demo": _cmd_demo,
    }
    try:
        return handlers[args.command](args)
    except (Exception, KeyboardInterrupt) as exc:
        if debug:
            traceback.print_exc()
        message, status = describe_error(exc)
        print(f"rmtprune {args.command}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command line: a thin layer over the public API (no logic beyond parsing and printing)."""

from __future__ import annotations

import argparse
import sys
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


def _source_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {
        "model": args.model,
        "no_model": args.no_model,
        "assume_linear": tuple(args.assume_linear),
        "assume_conv2d": tuple(args.assume_conv2d),
    }


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
        help="the pruned model: .safetensors, or a directory for a model directory input "
        "(rmtprune.save_pretrained); required unless --dry-run",
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_spectral_commands(sub)
    _add_reproduce_parser(sub)
    _add_demo_parser(sub)
    return parser


def _seeds_arg(text: str) -> int | tuple[int, ...]:
    from rmtprune.experiments.seeds import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device_arg(text: str) -> str:
    from rmtprune.training.config import check_device

    try:
        return check_device(text, "--device", "rmtprune")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_run_options(p: argparse.ArgumentParser, seeds_default: str) -> None:
    """``--seeds``, ``--device``, ``--out``, data and output options shared by reproduce/demo."""
    from rmtprune.experiments.seeds import SEEDS_GRAMMAR
    from rmtprune.training.config import DEVICES

    p.add_argument(
        "--seeds",
        type=_seeds_arg,
        default=None,
        metavar="SEEDS",
        help=f"{SEEDS_GRAMMAR}; a run directory that holds seeds keeps them and grows "
        f"(default: {seeds_default})",
    )
    p.add_argument(
        "--device",
        type=_device_arg,
        default="cpu",
        metavar="DEVICE",
        help=f"torch device of training: {', '.join(DEVICES)} (default: %(default)s); "
        "results are reproducible per device, CPU model and thread count",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/...)")
    _add_data_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_reproduce_parser(sub: Any) -> None:
    from rmtprune.experiments.config import PRESETS
    from rmtprune.experiments.registry import get_config, list_experiments

    first = list_experiments()[0]
    preset_seeds = ", ".join(f"{p} {len(get_config(first, p).seeds)}" for p in PRESETS)
    r = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments and write its report",
        description="Reproduce an experiment of the paper (SPEC section 6): both arms over "
        "several seeds, baselines, metrics, figures and report.md/report.html in one run "
        "directory. A killed run continues where it stopped when given the same --out; "
        "a later call with other --seeds adds them to the directory.",
    )
    r.add_argument("experiment", metavar="EXPERIMENT", help="experiment id (see --list)", nargs="?")
    r.add_argument("--list", action="store_true", help="list the experiments and exit")
    r.add_argument(
        "--preset",
        choices=PRESETS,
        default="small",
        help="scale: smoke (seconds), small (minutes here), paper (hours) (default: %(default)s)",
    )
    _add_run_options(r, f"the preset's seeds, for {first}: {preset_seeds}")
    r.add_argument(
        "--import-seeds",
        action="append",
        default=[],
        metavar="METRICS",
        help="add the finished seeds of another run of the same configuration (its "
        "metrics.json or run directory, e.g. an archived docs/results/.../metrics.json); "
        "repeatable",
    )
    r.add_argument(
        "--no-resume", action="store_true", help="start over even if --out has checkpoints"
    )


def _add_demo_parser(sub: Any) -> None:
    from rmtprune.experiments.demo import DEMO_CONFIG

    d = sub.add_parser(
        "demo",
        help="the main job: normal vs pruned training on Fashion-MNIST",
        description="Train a fully connected network on Fashion-MNIST with and without spectral "
        "pruning over a few seeds (a few minutes on a laptop CPU), print the comparison and "
        "write the report. --synthetic runs a data-free spectral demonstration instead.",
    )
    _add_run_options(d, f"{len(DEMO_CONFIG.seeds)}")
    d.add_argument(
        "--synthetic",
        action="store_true",
        help="no data needed: BEMA on a signal-plus-noise matrix and pruning of a fresh network",
    )
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic demo")


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
    from rmtprune.pruning.options import resolve_criterion

    given = {"bulk_keep": bulk_keep, "min_rank": min_rank, "alpha": args.alpha}
    given.update(beta=args.beta, fit_cutoff=_fit_cutoff(args))
    # the older keywords' check names the command: "The 'alpha' parameter of analyze ..."
    return resolve_criterion(None, given, args.command)  # type: ignore[return-value]


def _fit_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The fit and selection keywords of a streamed analysis and of the untyped weights."""
    kw: dict[str, object] = {"alpha": args.alpha, "beta": args.beta, "layers": args.layers}
    kw.update(fit_cutoff=_fit_cutoff(args), exclude=args.exclude, min_dim=args.min_dim)
    return {**kw, "min_params": args.min_params}


def _fit_cutoff(args: argparse.Namespace) -> object:
    from torch import nn

    if args.conv_fit_cutoff is None:
        return args.fit_cutoff
    return {nn.Conv2d: args.conv_fit_cutoff, object: args.fit_cutoff}


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


def _weights(args: argparse.Namespace) -> str:
    weights = args.weights or args.source
    if weights is None:
        raise SystemExit("rmtprune: error: give the weights PATH (positional or --weights)")
    if args.weights and args.source and args.weights != args.source:
        raise SystemExit("rmtprune: error: give the weights once (positional PATH or --weights)")
    return str(weights)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from rmtprune.cli_inputs import open_for_pruning

    return open_for_pruning(_weights(args), **_source_kwargs(args))  # type: ignore[arg-type]


def _progress(args: argparse.Namespace, message: str) -> None:
    if not args.quiet and not (args.json == "-"):
        print(message, file=sys.stderr, flush=True)


def _bar(args: argparse.Namespace) -> bool | None:
    """``--progress``/``--no-progress``; ``--quiet`` or JSON on stdout turn the bar off."""
    return False if args.quiet or args.json == "-" else args.progress


def _cmd_analyze(args: argparse.Namespace) -> int:
    from rmtprune.cli_inputs import analyze_source

    weights = _weights(args)
    _progress(args, "fitting the spectrum of each layer ...")
    report = analyze_source(
        weights,
        progress=_bar(args),
        **{**_source_kwargs(args), **_fit_kwargs(args)},  # type: ignore[arg-type]
    )
    if args.json is not None:
        _emit_json(report, args.json)
    if args.json != "-":
        print(report.to_markdown())
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    import rmtprune

    if args.output is None and not args.dry_run:
        raise SystemExit("rmtprune prune: error: -o/--output is required unless --dry-run")
    if (
        args.output is not None
        and Path(args.output).exists()
        and not args.overwrite
        and not args.dry_run
    ):
        raise SystemExit(
            f"rmtprune prune: error: {args.output} exists; pass --overwrite to replace it"
        )
    source = _load(args)
    split = {"auto": "auto", "always": True, "never": False}[args.split]
    _progress(args, "fitting and pruning each layer ...")
    pruned, report = rmtprune.prune(
        source.model,
        criterion=_criterion(args),
        select=source.walker_select(_select(args)),
        split=split,  # type: ignore[arg-type]
        dry_run=args.dry_run,
        inplace=True,
        progress=_bar(args),
    )
    report = source.complete(report, bulk_keep=args.bulk_keep, **_fit_kwargs(args))
    if args.json is not None:
        _emit_json(report, args.json)
    if args.json != "-":
        print(report.to_markdown())
    if not args.dry_run:
        source.save(pruned, args.output, overwrite=args.overwrite)
        _progress(args, f"saved {args.output}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rmtprune.experiments import reproduce
    from rmtprune.experiments.runner import all_experiments

    if args.list or args.experiment is None:
        for key, title in all_experiments().items():
            print(f"{key:12s} {title}")
        return 0 if args.list else 2
    result = reproduce(
        args.experiment,
        preset=args.preset,
        seeds=args.seeds,
        out=args.out,
        data_dir=args.data_dir,
        download=args.download,
        progress=not args.quiet,
        resume=not args.no_resume,
        device=args.device,
        import_seeds=args.import_seeds,
    )
    print(f"report: {result.run_dir / 'report.md'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.synthetic:
        from rmtprune.experiments.synthetic_demo import run_synthetic_demo

        run_synthetic_demo(seed=args.seed)
        return 0
    from rmtprune.experiments import DEMO_CONFIG, run_demo

    run_demo(  # prints the comparison, the verdicts and where the report is
        data_dir=args.data_dir,
        download=args.download,
        out=args.out,
        seeds=DEMO_CONFIG.seeds if args.seeds is None else args.seeds,
        progress=not args.quiet,
        device=args.device,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rmtprune`` command."""
    args = build_parser().parse_args(argv)
    handlers = {
        "analyze": _cmd_analyze,
        "prune": _cmd_prune,
        "reproduce": _cmd_reproduce,
        "demo": _cmd_demo,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        print(f"rmtprune {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

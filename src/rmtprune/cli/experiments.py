"""Command line: the ``reproduce`` and ``demo`` subcommands (parsers and handlers).

:mod:`rmtprune.cli.app` builds the parser and is the one error boundary; this module only
parses and forwards to :mod:`rmtprune.paper.experiments`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_demo_parser", "add_reproduce_parser", "cmd_demo", "cmd_reproduce"]


def _seeds_arg(text: str) -> int | tuple[int, ...]:
    from rmtprune.paper.experiments.seeds import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device_arg(text: str) -> str:
    from rmtprune.paper.training.config import check_device

    try:
        return check_device(text, "--device", "rmtprune")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_run_options(p: argparse.ArgumentParser, seeds_default: str) -> None:
    """``--seeds``, ``--device``, ``--out``, data and output options shared by reproduce/demo."""
    from rmtprune.paper.experiments.seeds import SEEDS_GRAMMAR
    from rmtprune.paper.training.config import DEVICES

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


def add_reproduce_parser(sub: Any) -> None:
    from rmtprune.paper.experiments.config import PRESETS
    from rmtprune.paper.experiments.registry import EXPERIMENTS, get_config, list_experiments

    first = list_experiments()[0]
    choices = list(dict.fromkeys(p for e in EXPERIMENTS.values() for p in e.presets))
    extra = [p for p in choices if p not in PRESETS]
    preset_seeds = ", ".join(f"{p} {len(get_config(first, p).seeds)}" for p in PRESETS)
    r = sub.add_parser(
        "reproduce",
        help="run one of the paper's experiments and write its report",
        description="Reproduce an experiment of the paper (docs/method.md section 6): both arms "
        "over several seeds, baselines, metrics, figures and report.md/report.html in one run "
        "directory. A killed run continues where it stopped when given the same --out; "
        "a later call with other --seeds adds them to the directory.",
    )
    r.add_argument("experiment", metavar="EXPERIMENT", help="experiment id (see --list)", nargs="?")
    r.add_argument("--list", action="store_true", help="list the experiments and exit")
    r.add_argument(
        "--preset",
        choices=choices,
        default="small",
        help="scale: smoke (seconds), small (minutes here), paper (hours); the ablation also "
        f"has {', '.join(extra)} (the authors' manuscript protocol) (default: %(default)s)",
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
        "--no-resume",
        action="store_true",
        help="refuse an --out that already holds a run instead of continuing it (to start "
        "over, delete that directory or choose another --out)",
    )


def add_demo_parser(sub: Any) -> None:
    from rmtprune.paper.experiments.classification.demo import DEMO_CONFIG

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


def _check_out(args: argparse.Namespace, imports: Sequence[str] = ()) -> None:
    """``--out`` is a writable directory that is not, and does not contain, the data root or a
    run whose seeds are imported (:func:`rmtprune._util.apart.check_apart`)."""
    if args.out is None:
        return
    from rmtprune._util.apart import check_apart
    from rmtprune._util.fileio import check_output_dir
    from rmtprune.paper.data.layout import resolve_data_dir

    check_output_dir(args.out, what="--out")
    inputs = [resolve_data_dir(args.data_dir), *(Path(p) for p in imports)]
    check_apart([p for p in inputs if p.exists()], directories={"--out": args.out})


def cmd_reproduce(args: argparse.Namespace) -> int:
    from rmtprune.paper.experiments import reproduce
    from rmtprune.paper.experiments.runner import all_experiments

    if args.list or args.experiment is None:
        for key, title in all_experiments().items():
            print(f"{key:12s} {title}")
        return 0 if args.list else 2
    _check_out(args, args.import_seeds)
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


def cmd_demo(args: argparse.Namespace) -> int:
    if args.synthetic:
        from rmtprune.paper.experiments.classification.synthetic_demo import run_synthetic_demo

        run_synthetic_demo(seed=args.seed)
        return 0
    from rmtprune.paper.experiments import DEMO_CONFIG, run_demo

    _check_out(args)
    run_demo(  # prints the comparison, the verdicts and where the report is
        data_dir=args.data_dir,
        download=args.download,
        out=args.out,
        seeds=DEMO_CONFIG.seeds if args.seeds is None else args.seeds,
        progress=not args.quiet,
        device=args.device,
    )
    return 0

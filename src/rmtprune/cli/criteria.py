"""The command line's spectral-fit and criterion options, and the criterion they name.

``rmtprune analyze`` takes the fit options, ``rmtprune prune`` both; every criterion built here is
the Python API's own object (tests/cli/test_criteria.py compares their results).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rmtprune.pruning.criteria import Energy
from rmtprune.pruning.selection import DEFAULT_MIN_DIM, DEFAULT_MIN_PARAMS

if TYPE_CHECKING:
    from rmtprune.pruning.criteria import Criterion, MPCriterion

__all__ = ["CRITERIA", "add_criterion_options", "add_fit_options", "criterion_of", "mp_of"]

CRITERIA = {
    "mp": "MPCriterion",
    "gavish-donoho": "GavishDonohoCriterion",
    "energy": "Energy",
    "rank": "FixedRank",
    "ratio": "FixedRatio",
    "sparsity": "Sparsity",
}
"""``--criterion`` choices and the class each stands for (:mod:`rmtprune.pruning.criteria`;
``Sparsity``: :mod:`rmtprune.pruning.sparsity`)."""


def add_fit_options(p: argparse.ArgumentParser) -> None:
    """The spectral fit's and the layer selection's options (``analyze`` and ``prune``)."""
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


def add_criterion_options(p: argparse.ArgumentParser) -> None:
    """``--criterion`` and each criterion's own options (``prune``)."""
    g = p.add_argument_group("criterion (rank or sparsity)")
    g.add_argument(
        "--criterion",
        choices=tuple(CRITERIA),
        default="mp",
        help="how many singular values each layer keeps: mp (spikes + --bulk-keep of the "
        "bulk, the paper's rule), gavish-donoho (optimal hard threshold), energy (--energy of "
        "sum s^2), rank (--rank values), ratio (--ratio of min(m, n)); or sparsity (zero "
        "--sparsity of the weights by magnitude, stored sparse) (default: %(default)s)",
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
    g.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="sparsity: fraction in [0, 1) of the selected weights set to zero, smallest "
        "magnitude first (Wanda's scores need calibration data: rmtprune.Sparsity in Python); "
        "a safetensors checkpoint is masked one layer at a time (read whole with "
        "--allocation global)",
    )
    g.add_argument(
        "--sparsity-pattern",
        default=None,
        metavar="PATTERN",
        help="sparsity: 'unstructured' (default) or 'N:M', N kept in every M consecutive "
        "inputs (2:4 implies --sparsity 0.5)",
    )
    g.add_argument(
        "--allocation",
        choices=("uniform", "global"),
        default=None,
        help="sparsity: the same fraction in every layer (uniform, default) or one magnitude "
        "threshold for all selected layers (global)",
    )


def mp_of(
    args: argparse.Namespace, bulk_keep: float = 0.0, min_rank: int | None = None
) -> MPCriterion:
    """The paper's rule with the fit options of ``args`` (what ``analyze`` fits with)."""
    from rmtprune.pruning.options import resolve_criterion

    given = {"bulk_keep": bulk_keep, "min_rank": min_rank, "alpha": args.alpha}
    given.update(beta=args.beta, fit_cutoff=_fit_cutoff(args))
    # the older keywords' check names the command: "The 'alpha' parameter of analyze ..."
    return resolve_criterion(None, given, args.command)  # type: ignore[return-value]


def _fit_cutoff(args: argparse.Namespace) -> object:
    from torch import nn

    if args.conv_fit_cutoff is None:
        return args.fit_cutoff
    return {nn.Conv2d: args.conv_fit_cutoff, object: args.fit_cutoff}


def criterion_of(args: argparse.Namespace) -> Criterion:
    """The criterion ``--criterion`` and its options name; an option of another criterion is
    refused by name."""
    import rmtprune

    own = {
        "energy": "energy",
        "rank": "rank",
        "ratio": "ratio",
        "sparsity": "sparsity",
        "sparsity_pattern": "sparsity",
        "allocation": "sparsity",
    }  # option (its dest) -> the one criterion it applies to
    for option, name in own.items():
        if getattr(args, option) is not None and args.criterion != name:
            raise ValueError(f"--{option.replace('_', '-')} applies to --criterion {name} only")
    if args.criterion == "sparsity":
        if args.min_rank is not None or args.bulk_keep != 0.0:
            raise ValueError("--min-rank and --bulk-keep apply to rank criteria, not sparsity")
        pattern = args.sparsity_pattern or "unstructured"
        if args.sparsity is None and pattern == "unstructured":
            raise ValueError("--criterion sparsity needs --sparsity (or an N:M --sparsity-pattern)")
        return rmtprune.Sparsity(
            args.sparsity, allocation=args.allocation or "uniform", pattern=pattern
        )
    if args.criterion == "mp":
        return mp_of(args, args.bulk_keep, args.min_rank)
    if args.criterion == "gavish-donoho":
        return rmtprune.GavishDonohoCriterion(min_rank=args.min_rank)
    if args.criterion == "energy":
        return Energy() if args.energy is None else Energy(args.energy)
    value = getattr(args, args.criterion)
    if value is None:
        raise ValueError(f"--criterion {args.criterion} needs --{args.criterion}")
    return rmtprune.FixedRank(value) if args.criterion == "rank" else rmtprune.FixedRatio(value)

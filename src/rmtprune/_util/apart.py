"""The one check that no output of a command can touch a file of its input.

An input is a file or a directory.  The files it consists of are the file itself (for a shard
index ``*.index.json``, every file beside it) or every file directly in the directory, each known
by its resolved path and by its device and inode: a symbolic or hard link to an input file is the
input file.  An output file may not be one of them.  No output (file or directory) may lie inside
an input directory: a file written there changes what the directory is read as (a second
``*.safetensors`` or index in a checkpoint directory, a stray file in a model directory).  An
output directory, which a command replaces as a whole, may not be or contain an input directory,
nor hold a file the input reaches through a link.  Two outputs may not name the same file, nor one
lie in the other's directory.

Example
-------
>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> weights = os.path.join(folder, "model.safetensors")
>>> open(weights, "wb").close()
>>> check_apart([folder], files={"--json": weights})
Traceback (most recent call last):
...
ValueError: --json ... is a file of the input ...; give a path outside the input
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["check_apart", "input_files"]

PathLike = str | os.PathLike[str]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def input_files(path: PathLike) -> list[Path]:
    """The files ``path`` consists of, resolved (links followed): see the module docstring."""
    given = Path(path)
    if given.is_dir():
        files = [p for p in given.iterdir() if p.is_file()]
    elif given.name.endswith(".index.json"):
        files = [p for p in given.parent.iterdir() if p.is_file()]
    else:
        files = [given]
    return sorted({p.resolve() for p in files})


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _outside_inputs(option: str, out: Path, target: Path, roots: Iterable[Path]) -> None:
    for root in roots:
        if target != root and _inside(target, root):
            raise ValueError(
                f"{option} {out} lies inside the input directory {root}, which it would change "
                "(what the directory is read as); give a path outside it"
            )


def check_apart(
    inputs: Iterable[PathLike],
    *,
    files: Mapping[str, PathLike | None] | None = None,
    directories: Mapping[str, PathLike | None] | None = None,
) -> None:
    """Raise a ``ValueError`` naming the option if an output could touch an input file.

    Parameters
    ----------
    inputs : iterable of paths
        The input files and directories (``None`` entries are not allowed; leave them out).
    files : mapping, optional
        ``{option: path}`` of the output files (``None`` values are ignored).
    directories : mapping, optional
        ``{option: path}`` of the output directories, replaced as a whole.
    """
    given = [Path(p) for p in inputs]
    owned = {p: str(root) for root in given for p in input_files(root)}
    idents = {_identity(p): p for p in owned} | {_identity(p): p for p in given}
    idents.pop(None, None)
    roots = [p.resolve() for p in given if p.is_dir()]
    outs = {k: Path(v) for k, v in (files or {}).items() if v is not None}
    dirs = {k: Path(v).resolve() for k, v in (directories or {}).items() if v is not None}
    for option, out in outs.items():
        target = out.resolve()
        linked = idents.get(_identity(out)) if out.exists() else None
        hit = target if target in owned else linked
        if hit is not None or target in {p.resolve() for p in given}:
            raise ValueError(
                f"{option} {out} is a file of the input {owned.get(hit or target, given[0])}; "
                "give a path outside the input"
            )
        _outside_inputs(option, out, target, roots)
        for other, folder in dirs.items():
            if _inside(target, folder):
                raise ValueError(
                    f"{option} {out} lies in the output directory {other} {folder}, which is "
                    "replaced as a whole; give a path outside it"
                )
    for option, folder in dirs.items():
        _outside_inputs(option, folder, folder, roots)
        for root in roots:
            if _inside(root, folder):
                raise ValueError(
                    f"{option} {folder} is or contains the input directory {root}; "
                    "give another directory"
                )
        for path, owner in owned.items():
            if _inside(path, folder):
                raise ValueError(
                    f"{option} {folder} holds {path}, a file of the input {owner} (through a "
                    "link); give another directory"
                )
    seen: dict[Path, str] = {}
    for option, out in outs.items():
        if out.resolve() in seen:
            raise ValueError(
                f"{seen[out.resolve()]} and {option} both name {out}; give two different files"
            )
        seen[out.resolve()] = option

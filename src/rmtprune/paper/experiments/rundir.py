"""The run directory of an experiment: configuration, environment, finished units, imports.

A run directory is owned by :func:`rmtprune.paper.experiments.run_experiment` (classification)
or by the ``run`` function of an analysis experiment; this module holds the rules both
follow.  For a classification run:

* ``config.json`` holds the resolved :class:`ExperimentConfig`.  A later call
  with the same directory must give the same configuration, except for the
  fields in :data:`RUNTIME_FIELDS` (how the run is executed, not what it
  computes) and ``seeds``: a directory **grows by seeds**, and its
  ``config.json`` then lists every seed it holds.
* ``environment.json`` holds the first process's environment; each later call is
  appended under ``"resumed"`` and each import under ``"imported"``.
* ``seed-<s>/result.json`` holds a finished seed's :class:`SeedResult`
  (``seed-<s>/spectra.json`` its spectra).  A seed directory without it (the
  layout of runs made before this file existed, or an interrupted seed) is
  resumed from its checkpoints.
* :func:`import_seeds` brings finished seeds of another run of the same
  configuration (its ``metrics.json``, for example an archived report) into a
  run directory, so that seeds run on different days or machines are reported
  together.

Config files written under older names of a field are read through
:data:`LEGACY_NAMES`.

An analysis run (:func:`prepare_analysis_dir`) follows the same rules with two
differences: ``config.json`` also names the experiment, and ``seeds`` (a number of seeds
there) must match like any other field.  Its finished units (a seed, a network, an
initialisation) are stored by a :class:`UnitStore` under ``units/``, so that a later call
loads them instead of computing them again.

Example
-------
>>> from rmtprune.paper.experiments.rundir import config_differences
>>> config_differences({"epochs": 3, "seeds": [0]}, {"epochs": 3, "seeds": [1]})
[]
>>> config_differences({"epochs": 3}, {"epochs": 4, "num_threads": 2})
['epochs']
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
import scipy
import torch

import rmtprune
from rmtprune._util.fileio import atomic_write_bytes
from rmtprune.paper.experiments import formats
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.formats import to_jsonable
from rmtprune.paper.experiments.results import SeedResult, SpectrumSnapshot

__all__ = [
    "LEGACY_NAMES",
    "RUNTIME_FIELDS",
    "UnitStore",
    "config_differences",
    "environment",
    "import_seeds",
    "load_seed",
    "normalize",
    "prepare_analysis_dir",
    "prepare_run_dir",
    "read_config",
    "read_run_file",
    "run_experiment_name",
    "save_seed",
    "seed_dir",
    "update_environment",
    "write_json",
]

RUNTIME_FIELDS = frozenset({"num_threads", "device"})
"""Fields that may differ between calls on one run directory (they do not change results
beyond floating-point reduction order, recorded in ``environment.json``)."""

LEGACY_NAMES: Mapping[str, str] = {"prune_every": "every"}
"""Older names of configuration fields, read from config files of existing run directories."""

_GROWING = frozenset({"seeds"})

T = TypeVar("T")


def write_json(path: Path, content: Any) -> None:
    """Write ``content`` as strict JSON (NaN → null) atomically to ``path``."""
    formats.write_json(path, content)


def _git(*args: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).resolve().parent
        run = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        return run.stdout.strip() if run.returncode == 0 else None
    return None


def _cpu_model() -> str | None:
    """The CPU model name (determinism of float reductions holds per model and thread count)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions, platform (no host name), git commit of the source tree, threads, device.

    Examples
    --------
    >>> sorted(environment())[:3]
    ['cpu_count', 'git_commit', 'git_dirty']
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    out = {
        "python": platform.python_version(),
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        **{m.__name__: m.__version__ for m in (rmtprune, torch, np, scipy, matplotlib)},
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device is not None:
        out["device"] = device
        if device.startswith("cuda") and torch.cuda.is_available():
            out["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return out


def update_environment(run_dir: Path, key: str, entry: Mapping[str, Any]) -> None:
    """Write this call's environment: the first one, or ``entry`` appended under ``key``."""
    path = run_dir / "environment.json"
    if not path.is_file():
        write_json(path, dict(entry))
        return
    first = json.loads(path.read_text())
    write_json(path, {**first, key: [*first.get(key, []), dict(entry)]})


def normalize(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config dictionary with legacy field names replaced by the current ones."""
    return {LEGACY_NAMES.get(k, k): v for k, v in values.items()}


def config_differences(
    previous: Mapping[str, Any], current: Mapping[str, Any], growing: Iterable[str] = _GROWING
) -> list[str]:
    """Names of the fields in which two config dictionaries differ, apart from
    :data:`RUNTIME_FIELDS` and the ``growing`` fields (``seeds``)."""
    old, new = normalize(previous), normalize(current)
    ignored = RUNTIME_FIELDS | frozenset(growing)
    return sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k))


def read_run_file(run_dir: Path, owner: str = "The 'out' parameter") -> dict[str, Any] | None:
    """The content of ``run_dir/config.json``, or None when there is none.

    A file without a ``config`` entry (the flat format of rmtprune's first archived runs,
    such as ``docs/results/init``) is refused: this version neither reads nor continues
    it.  ``owner`` begins the message (``"The 'run_dir' parameter of render_run"``).
    """
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    content = json.loads(path.read_text())
    if not isinstance(content, dict) or not isinstance(content.get("config"), dict):
        raise ValueError(
            f"{owner} names {str(run_dir)!r}, whose config.json was written in an older "
            "rmtprune format (no 'config' entry); this version cannot continue or render "
            "that run. Choose a new or empty directory."
        )
    return content


def run_experiment_name(content: Mapping[str, Any]) -> str | None:
    """The experiment of a run file: an analysis run names it at the top level, a
    classification run inside its ``config``."""
    found = content.get("experiment", content["config"].get("experiment"))
    return None if found is None else str(found)


def read_config(run_dir: Path, owner: str = "The 'out' parameter") -> dict[str, Any] | None:
    """The ``config`` entry of ``run_dir/config.json`` (current names), or None.

    An older-format file is refused (:func:`read_run_file`).
    """
    content = read_run_file(run_dir, owner)
    return None if content is None else normalize(content["config"])


def _refuse_other_experiment(run_dir: Path, found: str | None, experiment: str) -> None:
    if found != experiment:
        raise ValueError(
            f"The 'out' parameter names {str(run_dir)!r}, which holds a run of {found!r}, "
            f"not of the {experiment!r} experiment. Choose a new or empty directory."
        )


def _default_dir(config: ExperimentConfig) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.experiment}-{config.preset}-{stamp}"


def prepare_run_dir(
    config: ExperimentConfig, out: str | os.PathLike[str] | None, resume: bool
) -> tuple[Path, ExperimentConfig]:
    """Create or check the run directory; return it and the configuration of all its seeds.

    A directory holding a run is continued (``resume``) when its configuration equals
    ``config`` apart from :data:`RUNTIME_FIELDS` and ``seeds``; the returned config
    lists the union of its seeds and ``config``'s, sorted.  A non-empty directory
    holding no run is refused.
    """
    run_dir = _default_dir(config) if out is None else Path(out)
    content = read_run_file(run_dir)
    previous = None
    if content is not None:
        _refuse_other_experiment(run_dir, run_experiment_name(content), config.experiment)
        previous = normalize(content["config"])
    _check_resume(run_dir, previous, config.to_dict(), resume, _GROWING)
    seeds = set(config.seeds) | set(previous["seeds"] if previous is not None else ())
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, config.replace(seeds=tuple(sorted(seeds)))


def _check_resume(
    run_dir: Path,
    previous: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    resume: bool,
    growing: Iterable[str],
) -> None:
    """Refuse a run directory that holds a run of another configuration, or files but no run."""
    if previous is not None:
        if not resume:
            raise ValueError(
                f"The 'out' parameter names {str(run_dir)!r}, which already holds a run. "
                "Run again without --no-resume (resume=True) to continue it; to start over, "
                "delete it or choose a new --out directory."
            )
        differing = config_differences(previous, current, growing)
        if differing:
            raise ValueError(
                f"Cannot resume the run in {str(run_dir)!r}: its configuration differs in "
                f"{differing}. Use a new output directory."
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"The 'out' parameter names {str(run_dir)!r}, which is not empty and holds no run. "
            "Choose a new or empty directory."
        )


def prepare_analysis_dir(
    out: str | os.PathLike[str],
    experiment: str,
    preset: str,
    config: Mapping[str, Any],
    *,
    resume: bool = True,
    **extra: Any,
) -> Path:
    """Create or check the run directory of an analysis experiment and record this call.

    A new directory gets ``config.json`` (experiment, preset, ``config``, the ``extra``
    fields and the environment) and ``environment.json``.  A directory holding a run of
    the same experiment is continued (``resume``) when its preset and configuration equal
    these apart from :data:`RUNTIME_FIELDS`; this call's environment is then appended to
    ``environment.json`` under ``"resumed"``.  A run of another experiment or
    configuration, or a non-empty directory holding no run, is refused.
    """
    run_dir = Path(out)
    current = to_jsonable({"preset": preset, **config})
    path = run_dir / "config.json"
    content = read_run_file(run_dir)
    previous = None
    if content is not None:
        _refuse_other_experiment(run_dir, run_experiment_name(content), experiment)
        previous = {"preset": content.get("preset"), **content["config"]}
    _check_resume(run_dir, previous, current, resume, growing=())
    run_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    if previous is None:
        record = {"experiment": experiment, "preset": preset, "config": current}
        del record["config"]["preset"]
        formats.write_json(path, {**record, **extra, "environment": env}, indent=2, newline=True)
    update_environment(run_dir, "resumed", env)
    return run_dir


_SECONDS = ".seconds.json"


class UnitStore:
    """The finished units of an analysis run: ``<run_dir>/units/<name>.json``, written once.

    :meth:`get` returns a unit's stored value, computing and storing it first when it is
    not there; a value is always returned as read back from its file, so a run that
    computed a unit and a run that loaded it continue from identical values.  Tensors
    (trained weights) go beside it as ``<name>.pt``, and the seconds its computation took as
    ``<name>.seconds.json``, both written before the unit's own file
    (:meth:`compute_seconds` sums them over every call that added units).

    Examples
    --------
    >>> import tempfile
    >>> store = UnitStore(Path(tempfile.mkdtemp()))
    >>> store.get("seed-0", lambda: {"loss": 0.5}, dict, dict)
    {'loss': 0.5}
    >>> store.get("seed-0", lambda: 1 / 0, dict, dict)  # stored: not computed again
    {'loss': 0.5}
    """

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / "units"

    def path(self, name: str, suffix: str = ".json") -> Path:
        """The file of unit ``name``."""
        return self.folder / f"{name}{suffix}"

    def load(self, name: str) -> Any | None:
        """The stored content of unit ``name`` (as read from JSON), or None."""
        path = self.path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def get(
        self,
        name: str,
        compute: Callable[[], T],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> T:
        """Unit ``name``: ``decode`` of its stored content, after ``compute`` when missing."""
        if not self.path(name).is_file():
            start = time.perf_counter()
            content = encode(compute())
            seconds = time.perf_counter() - start
            formats.write_json(self.path(name, _SECONDS), {"seconds": seconds})
            formats.write_json(self.path(name), content)
        return decode(self.load(name))

    def compute_seconds(self) -> tuple[float, int, int]:
        """``(seconds, units, untimed)``: the summed compute time of the stored units, their
        number, and how many of them have no recorded time (stored by an older version)."""
        units = (
            [p for p in self.folder.glob("*.json") if not p.name.endswith(_SECONDS)]
            if self.folder.is_dir()
            else []
        )
        total, untimed = 0.0, 0
        for unit in units:
            timing = self.path(unit.stem, _SECONDS)
            if timing.is_file():
                total += float(json.loads(timing.read_text())["seconds"])
            else:
                untimed += 1
        return total, len(units), untimed

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Store ``tensors`` as ``units/<name>.pt`` (atomically)."""
        atomic_write_bytes(self.path(name, ".pt"), lambda fh: torch.save(dict(tensors), fh))

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors stored by :meth:`save_tensors`."""
        return dict(torch.load(self.path(name, ".pt"), weights_only=True))


def seed_dir(run_dir: Path, seed: int) -> Path:
    """``run_dir/seed-<seed>``."""
    return run_dir / f"seed-{seed}"


def save_seed(run_dir: Path, result: SeedResult) -> None:
    """Store a finished seed: ``seed-<s>/result.json`` (and ``spectra.json`` if any)."""
    folder = seed_dir(run_dir, result.seed)
    if result.spectra:
        write_json(folder / "spectra.json", [s.to_dict() for s in result.spectra])
    write_json(folder / "result.json", result.to_dict())


def load_seed(run_dir: Path, seed: int) -> SeedResult | None:
    """The finished seed stored in ``run_dir``, or None when it has not finished there."""
    folder = seed_dir(run_dir, seed)
    path = folder / "result.json"
    if not path.is_file():
        return None
    spectra: tuple[SpectrumSnapshot, ...] = ()
    if (folder / "spectra.json").is_file():
        raw = json.loads((folder / "spectra.json").read_text())
        spectra = tuple(SpectrumSnapshot.from_dict(v) for v in raw)
    return SeedResult.from_dict(json.loads(path.read_text()), spectra)


def _read_metrics(source: Path) -> tuple[Path, dict[str, Any]]:
    path = source / "metrics.json" if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(
            f"The 'import_seeds' parameter names {str(source)!r}, which is neither a "
            "metrics.json file nor a run directory holding one."
        )
    content = json.loads(path.read_text())
    if not isinstance(content, dict) or not {"config", "seeds"} <= set(content):
        raise ValueError(
            f"The file {str(path)!r} given to 'import_seeds' is not the metrics.json of a "
            "classification run (it needs 'config' and 'seeds' entries)."
        )
    return path, content


def _import_one(run_dir: Path, folder: Path, entry: Mapping[str, Any]) -> bool:
    """Store one seed of a metrics file; False when the identical seed is already here."""
    seed = int(entry["seed"])
    spectra_path = folder / f"seed-{seed}" / "spectra.json"
    spectra: tuple[SpectrumSnapshot, ...] = ()
    if spectra_path.is_file():
        raw = json.loads(spectra_path.read_text())
        spectra = tuple(SpectrumSnapshot.from_dict(v) for v in raw)
    incoming = SeedResult.from_dict(entry, spectra)
    target = seed_dir(run_dir, seed)
    if target.exists():
        present = load_seed(run_dir, seed)
        if present is not None and to_jsonable(present.to_dict()) == to_jsonable(entry):
            return False
        raise ValueError(
            f"Cannot import seed {seed} into {str(run_dir)!r}: {str(target)!r} already "
            "holds a different or unfinished run of that seed."
        )
    save_seed(run_dir, incoming)
    return True


def import_seeds(
    run_dir: Path, config: ExperimentConfig, sources: Iterable[str | os.PathLike[str]]
) -> tuple[ExperimentConfig, list[dict[str, Any]]]:
    """Bring the finished seeds of other runs of ``config`` into ``run_dir``.

    Each source is a ``metrics.json`` (for example an archived report under
    ``docs/results``) or a run directory; its configuration must equal ``config``
    apart from :data:`RUNTIME_FIELDS` and ``seeds``.  Each of its seeds is stored
    as ``seed-<s>/result.json`` (with the source's ``seed-<s>/spectra.json`` when
    present); a seed already present with identical results is skipped, one present
    with other results refused.  Checkpoints are not imported: an imported seed is
    reported, never trained further.

    Returns
    -------
    config : ExperimentConfig
        ``config`` with the imported seeds added to its seeds.
    records : list of dict
        One entry per source for ``environment.json`` (path, seeds, the source's
        environment when its ``environment.json`` is beside it).
    """
    records = []
    seeds = set(config.seeds)
    for source in sources:
        path, content = _read_metrics(Path(source))
        differing = config_differences(content["config"], config.to_dict())
        if differing:
            raise ValueError(
                f"Cannot import the seeds of {str(path)!r}: its configuration differs from the "
                f"run's in {differing}."
            )
        imported = [
            int(e["seed"]) for e in content["seeds"] if _import_one(run_dir, path.parent, e)
        ]
        seeds |= {int(e["seed"]) for e in content["seeds"]}
        env_path = path.parent / "environment.json"
        env = json.loads(env_path.read_text()) if env_path.is_file() else None
        records.append({"source": str(path), "seeds": imported, "environment": env})
    return config.replace(seeds=tuple(sorted(seeds))), records

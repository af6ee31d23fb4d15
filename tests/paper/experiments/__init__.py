"""Helpers of the experiment tests: a data root with real or generated, learnable data.

When ``RMTPRUNE_DATA`` points at a folder holding the three data sets, the tests
use the real data; otherwise they write small generated data sets in the
standard layouts (IDX files, CIFAR pickles) under a temporary folder.  The
generated images are class prototypes (random binary patterns, one per class)
with 10 % of the pixels flipped, so a network learns them in a few steps.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from rmtprune.paper.data import DATA_ENV, expected_files

N_TRAIN = 1200
N_TEST = 600


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _images(rng: np.random.Generator, protos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % len(protos)
    rng.shuffle(labels)
    images = protos[labels].copy()
    flip = rng.random(images.shape) < 0.1
    images[flip] = 255 - images[flip]
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_synthetic_data(root: Path, seed: int = 0) -> Path:
    """Write learnable MNIST / Fashion-MNIST / CIFAR-10 look-alikes under ``root``."""
    rng = np.random.default_rng(seed)
    for folder in ("MNIST/raw", "FashionMNIST/raw"):
        protos = (rng.random((10, 28, 28)) < 0.3).astype(np.uint8) * 255
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
            images, labels = _images(rng, protos, n)
            (target / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
            (target / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    protos = (rng.random((10, 3072)) < 0.3).astype(np.uint8) * 255
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name, n in [(b, N_TRAIN // 5) for b in names] + [("test_batch", N_TEST)]:
        images, labels = _images(rng, protos, n)
        batch = {b"data": images, b"labels": [int(v) for v in labels]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def real_data_root() -> Path | None:
    """``$RMTPRUNE_DATA`` if it holds all three data sets, else None."""
    env = os.environ.get(DATA_ENV)
    if not env:
        return None
    root = Path(env)
    for name in ("mnist", "fashion-mnist", "cifar10"):
        for path in expected_files(name, None, root):
            if not (path.is_file() or path.with_suffix("").is_file()):
                return None
    return root


def strip_times(value: Any) -> Any:
    """``value`` without any ``wall_time`` entry (JSON round trip makes NaN comparable)."""
    if isinstance(value, dict):
        return {k: strip_times(v) for k, v in value.items() if k != "wall_time"}
    if isinstance(value, list):
        return [strip_times(v) for v in value]
    return value


def load_metrics(run_dir: Path) -> Any:
    """``metrics.json`` of a run without wall times."""
    return strip_times(json.loads((run_dir / "metrics.json").read_text()))


def unit_stamps(run_dir: Path) -> dict[str, int]:
    """Name → modification time (ns) of every stored unit of an analysis run."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((run_dir / "units").iterdir())}


def analysis_content(result: Any) -> Any:
    """An analysis result's ``to_dict()`` without wall times, as JSON reads it back."""
    return strip_times(json.loads(json.dumps(result.to_dict(), default=str)))

"""Readers, layout, normalisation, subsets and cache of rmtprune.paper.data."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from rmtprune.paper.data import (
    OFFICIAL_SOURCES,
    DatasetNotFoundError,
    clear_cache,
    expected_files,
    load_arrays,
    load_dataset,
    normalize_pixels,
    read_cifar_batch,
    read_idx,
    resolve_data_dir,
)

from .helpers import (
    cifar_batch_bytes,
    idx_bytes,
    make_idx_split,
    write_cifar_dataset,
    write_idx_dataset,
)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_cache()
    monkeypatch.delenv("RMTPRUNE_MIRROR", raising=False)


def _nearest_float32(q: Fraction) -> np.float32:
    """The float32 nearest to the rational ``q``, decided with exact arithmetic."""
    f = np.float32(float(q))
    for neighbour in (np.nextafter(f, np.float32(-2)), np.nextafter(f, np.float32(2))):
        if abs(Fraction(float(neighbour)) - q) < abs(Fraction(float(f)) - q):
            f = neighbour
    return f


EXACT = np.array([_nearest_float32(Fraction(2 * k - 255, 255)) for k in range(256)], np.float32)


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    data = idx_bytes(images)
    assert int.from_bytes(data[:4], "big") == 2051  # the images magic number
    path = tmp_path / ("x.gz" if compress else "x")
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    assert int.from_bytes(idx_bytes(labels)[:4], "big") == 2049
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    assert read_idx(tmp_path / "l").tolist() == [3, 1, 4, 1, 5]


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x01" + good[4:])  # float type code
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "magic")
    (tmp_path / "gz").write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        read_idx(tmp_path / "gz")


def test_normalisation_is_exact() -> None:
    out = normalize_pixels(np.arange(256, dtype=np.uint8))
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), EXACT)
    assert out[0] == -1.0 and out[255] == 1.0
    with pytest.raises(TypeError, match="'images'"):
        normalize_pixels(np.zeros(3, np.float32))


@pytest.mark.parametrize(
    ("name", "folder", "compress"),
    [("mnist", "MNIST/raw", True), ("fashion-mnist", "FashionMNIST/raw", False)],
)
def test_load_idx_dataset(tmp_path: Path, name: str, folder: str, compress: bool) -> None:
    rng = np.random.default_rng(1)
    splits = {"train": make_idx_split(rng, 50), "test": make_idx_split(rng, 20)}
    write_idx_dataset(tmp_path, folder, splits, compress=compress)
    for split, (images, labels) in splits.items():
        ds = load_dataset(name, split, data_dir=tmp_path)
        x, y = ds.tensors
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy()[:, 0], EXACT[images])
        np.testing.assert_array_equal(y.numpy(), labels)


def test_load_cifar(tmp_path: Path) -> None:
    batches = write_cifar_dataset(tmp_path, np.random.default_rng(2), per_batch=4)
    x, y = load_dataset("cifar10", "train", data_dir=tmp_path).tensors
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    order = [f"data_batch_{i}" for i in range(1, 6)]
    data = np.concatenate([batches[b][0] for b in order])
    labels = [label for b in order for label in batches[b][1]]
    assert y.tolist() == labels
    # Pixel (i, c, h, w) is column c·1024 + h·32 + w of row i (R, G, B planes, row-major).
    for i, c, h, w in [(0, 0, 0, 0), (5, 1, 3, 7), (19, 2, 31, 31), (11, 2, 0, 17)]:
        assert x[i, c, h, w].item() == EXACT[data[i, c * 1024 + h * 32 + w]]
    xt, yt = load_dataset("cifar10", "test", data_dir=tmp_path).tensors
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == batches["test_batch"][1]


def test_cifar_pickle_from_numpy_1_and_python_2_style(tmp_path: Path) -> None:
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    raw = cifar_batch_bytes(data, [7, 2], protocol=2)
    # Pickles written by NumPy 1 (and the official Python 2 release) name numpy.core.multiarray.
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy and b"numpy._core" not in legacy
    (tmp_path / "b").write_bytes(legacy)
    images, labels = read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(images.reshape(2, 3072), data)
    assert labels.tolist() == [7, 2]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "evil").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load the global"):
        read_cifar_batch(tmp_path / "evil")
    assert not marker.exists()
    (tmp_path / "eval").write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        read_cifar_batch(tmp_path / "eval")
    (tmp_path / "codec").write_bytes(b"c_codecs\nencode\n(Vx\nVutf-16\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="latin-1"):
        read_cifar_batch(tmp_path / "codec")


def test_cifar_batch_content_is_checked(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(cifar_batch_bytes(np.zeros((2, 100), np.uint8), [0, 1]))
    with pytest.raises(ValueError, match="3072"):
        read_cifar_batch(tmp_path / "b")
    (tmp_path / "c").write_bytes(pickle.dumps({b"labels": [1]}))
    with pytest.raises(ValueError, match="no 'data' entry"):
        read_cifar_batch(tmp_path / "c")


# ------------------------------------------------------------------ root, subsets, cache


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RMTPRUNE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("RMTPRUNE_DATA")
    assert resolve_data_dir() == tmp_path / "xdg" / "rmtprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "rmtprune"
    with pytest.raises(TypeError, match="'data_dir'"):
        resolve_data_dir(3)  # type: ignore[arg-type]


def test_subset_is_a_deterministic_seeded_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images, labels = make_idx_split(rng, 60)
    images[:, 0, 0] = np.arange(60)  # tag each sample by its index
    write_idx_dataset(tmp_path, "MNIST/raw", {"train": (images, labels)})
    full = load_dataset("mnist", "train", data_dir=tmp_path).tensors[0]
    a = load_dataset("mnist", "train", data_dir=tmp_path, subset=15, seed=4)
    b = load_dataset("mnist", "train", data_dir=tmp_path, subset=15, seed=4)
    c = load_dataset("mnist", "train", data_dir=tmp_path, subset=15, seed=5)
    tags = [int(np.where(EXACT == v)[0][0]) for v in a.tensors[0][:, 0, 0, 0].tolist()]
    assert len(set(tags)) == 15 and tags == sorted(tags)  # distinct, kept in file order
    for tag, row, label in zip(tags, a.tensors[0], a.tensors[1], strict=True):
        assert torch.equal(row, full[tag]) and label.item() == labels[tag]
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert not torch.equal(a.tensors[0], c.tensors[0])
    with pytest.raises(ValueError, match=r"'subset'.*<= 60"):
        load_dataset("mnist", "train", data_dir=tmp_path, subset=61)


def test_cache_follows_file_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    write_idx_dataset(tmp_path, "MNIST/raw", {"test": make_idx_split(rng, 10)})
    first = load_arrays("mnist", "test", data_dir=tmp_path)
    assert load_arrays("mnist", "test", data_dir=tmp_path)[0] is first[0]  # cached
    assert not first[0].flags.writeable
    new = make_idx_split(rng, 12)
    write_idx_dataset(tmp_path, "MNIST/raw", {"test": new})
    again = load_arrays("mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(again[0][:, 0], new[0])


def test_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, "MNIST/raw", {"test": make_idx_split(np.random.default_rng(6), 5)})
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "train", data_dir=tmp_path)
    message = str(info.value)
    for path in expected_files("mnist", None, tmp_path):
        assert str(path) in message
    assert f"{tmp_path / 'MNIST/raw/train-images-idx3-ubyte.gz'}   (missing)" in message
    assert "RMTPRUNE_DATA" in message and "--data-dir" in message and "download=True" in message
    assert "--download" in message
    with pytest.raises(ValueError, match="'name'"):
        load_dataset("svhn", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="'split'"):
        load_dataset("mnist", "valid", data_dir=tmp_path)


def test_labels_out_of_range_are_rejected(tmp_path: Path) -> None:
    images, labels = make_idx_split(np.random.default_rng(7), 4)
    labels[2] = 10
    write_idx_dataset(tmp_path, "MNIST/raw", {"test": (images, labels)})
    with pytest.raises(ValueError, match=r"Labels outside \[0, 10\)"):
        load_dataset("mnist", "test", data_dir=tmp_path)


# ------------------------------------------------------------------------ real data

_REAL = os.environ.get("RMTPRUNE_DATA")
_COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("fashion-mnist", "train"): [6000] * 10,
    ("fashion-mnist", "test"): [1000] * 10,
    ("cifar10", "train"): [5000] * 10,
    ("cifar10", "test"): [1000] * 10,
}


def _real_available(name: str) -> bool:
    return bool(_REAL) and all(p.is_file() for p in expected_files(name, None, _REAL))


@pytest.mark.parametrize(("name", "split"), sorted(_COUNTS))
def test_real_data_counts(name: str, split: str) -> None:
    if not _real_available(name):
        pytest.skip("RMTPRUNE_DATA does not point at the shared data")
    x, y = load_dataset(name, split).tensors
    counts = _COUNTS[(name, split)]
    channels, size = (3, 32) if name == "cifar10" else (1, 28)
    assert x.shape == (sum(counts), channels, size, size)
    assert np.bincount(y.numpy(), minlength=10).tolist() == counts
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    clear_cache()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_files_match_the_official_digest_table(name: str) -> None:
    if not _real_available(name):
        pytest.skip("RMTPRUNE_DATA does not point at the shared data")
    folder = expected_files(name, "train", _REAL)[0].parent
    for remote in OFFICIAL_SOURCES[name].files:
        assert remote.digest_of == "decompressed"
        with gzip.open(folder / remote.filename) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == remote.sha256

"""Verified downloads against a local HTTP server on 127.0.0.1 (no other address is used)."""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from rmtprune.paper.data import (
    DatasetNotFoundError,
    DataSource,
    DownloadError,
    RemoteFile,
    clear_cache,
    download_dataset,
    expected_files,
    load_dataset,
)

from .helpers import IDX_NAMES, cifar_batch_bytes, idx_bytes, make_idx_split


class _Server:
    """Serves ``routes[path] = (body, mode)``; mode "ok", "truncate" or "close"."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, mode = server.routes[self.path]
                self.send_response(200)
                if mode != "close":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("RMTPRUNE_MIRROR", raising=False)
    clear_cache()
    s = _Server()
    yield s
    s.close()


def _idx_fixture(seed: int = 0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """gzipped IDX files (by file name) and the arrays they hold."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", 30), ("test", 10)):
        images, labels = make_idx_split(rng, n)
        for name, array in zip(IDX_NAMES[split], (images, labels), strict=True):
            files[f"{name}.gz"] = gzip.compress(idx_bytes(array))
            arrays[name] = array
    return files, arrays


def _idx_source(base: str, files: dict[str, bytes]) -> DataSource:
    remotes = tuple(
        RemoteFile(name, hashlib.sha256(gzip.decompress(body)).hexdigest(), "decompressed")
        for name, body in files.items()
    )
    return DataSource((base,), remotes)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download_lands_verified(server: _Server, tmp_path: Path) -> None:
    files, arrays = _idx_fixture()
    for name, body in files.items():
        server.routes[f"/mnist/{name}"] = (body, "ok")
    source = _idx_source(f"{server.url}/mnist/", files)
    folder = download_dataset("mnist", tmp_path, source=source)
    assert folder == tmp_path / "MNIST" / "raw"
    assert _leftovers(folder) == sorted(files)  # no temporary file left
    for name, body in files.items():
        assert (folder / name).read_bytes() == body
    x, y = load_dataset("mnist", "train", data_dir=tmp_path).tensors
    np.testing.assert_array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert x.shape == (30, 1, 28, 28)
    # Present files are not fetched again.
    count = len(server.requests)
    download_dataset("mnist", tmp_path, source=source)
    assert len(server.requests) == count


def test_mirror_env_and_load_dataset_download(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, arrays = _idx_fixture(1)
    for name, body in files.items():
        server.routes[f"/fashion-mnist/{name}"] = (body, "ok")
    source = _idx_source("http://127.0.0.1:9/never-used/", files)
    monkeypatch.setenv("RMTPRUNE_MIRROR", server.url + "/")
    download_dataset("fashion-mnist", tmp_path, source=source)
    assert sorted(server.requests) == sorted(f"/fashion-mnist/{n}" for n in files)
    y = load_dataset("fashion-mnist", "test", data_dir=tmp_path).tensors[1]
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))


def _serve_bad(server: _Server, files: dict[str, bytes], bad: str, body: bytes, mode: str) -> None:
    for name, good in files.items():
        server.routes[f"/mnist/{name}"] = (body, mode) if name == bad else (good, "ok")


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("flipped-byte", "corrupted"),
        ("other-content", "SHA-256 of the decompressed content"),
        ("truncated", "truncated"),
        ("truncated-no-length", "truncated"),
    ],
)
def test_bad_downloads_are_rejected_and_leave_nothing(
    server: _Server, tmp_path: Path, kind: str, pattern: str
) -> None:
    files, _ = _idx_fixture(2)
    bad = "train-images-idx3-ubyte.gz"
    good = files[bad]
    if kind == "flipped-byte":
        body = bytearray(good)
        body[len(body) // 2] ^= 0xFF
        body_bytes, mode = bytes(body), "ok"
    elif kind == "other-content":
        body_bytes, mode = gzip.compress(gzip.decompress(good)[:-1] + b"\x01"), "ok"
    elif kind == "truncated":
        body_bytes, mode = good, "truncate"
    else:
        body_bytes, mode = good[: len(good) // 2], "close"
    _serve_bad(server, files, bad, body_bytes, mode)
    source = _idx_source(f"{server.url}/mnist/", files)
    with pytest.raises(DownloadError, match=pattern) as info:
        download_dataset("mnist", tmp_path, source=source)
    assert bad in str(info.value)
    folder = tmp_path / "MNIST" / "raw"
    assert bad not in _leftovers(folder)
    assert not [n for n in _leftovers(folder) if n.endswith(".part")]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_network_says_where_to_put_files(server: _Server, tmp_path: Path) -> None:
    files, _ = _idx_fixture(3)
    source = _idx_source(f"http://127.0.0.1:{_closed_port()}/mnist/", files)
    with pytest.raises(DatasetNotFoundError) as info:
        download_dataset("mnist", tmp_path, source=source, timeout=5)
    message = str(info.value)
    assert "Downloading failed" in message
    assert "RMTPRUNE_DATA" in message and "--data-dir" in message
    for path in expected_files("mnist", None, tmp_path):
        assert str(path) in message
    assert _leftovers(tmp_path / "MNIST" / "raw") == []


def test_load_dataset_download_without_network(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RMTPRUNE_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", "train", data_dir=tmp_path, download=True)


def _cifar_archive(rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {}

    def add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        add(tar, "../escape.txt", b"outside")
        add(tar, "/tmp/absolute-rmtprune-test.txt", b"outside")
        add(tar, "cifar-10-batches-py/../../escape2.txt", b"outside")
        add(tar, "cifar-10-batches-py/batches.meta", b"", tarfile.SYMTYPE)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
            arrays[name] = data
            add(tar, f"cifar-10-batches-py/{name}", cifar_batch_bytes(data, [1, 2]))
    return buffer.getvalue(), arrays


def test_cifar_archive_is_verified_and_extracted_safely(server: _Server, tmp_path: Path) -> None:
    archive, arrays = _cifar_archive(np.random.default_rng(4))
    server.routes["/c/cifar-10-python.tar.gz"] = (archive, "ok")
    remote = RemoteFile("cifar-10-python.tar.gz", hashlib.sha256(archive).hexdigest(), "file")
    root = tmp_path / "root"
    folder = download_dataset(
        "cifar10", root, source=DataSource((f"{server.url}/c/",), (remote,), archive=True)
    )
    assert _leftovers(folder) == sorted(arrays)  # no archive, no link, no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]
    assert not Path("/tmp/absolute-rmtprune-test.txt").exists()
    x = load_dataset("cifar10", "test", data_dir=root).tensors[0]
    expected = arrays["test_batch"].reshape(2, 3, 32, 32).astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-7)


def test_cifar_archive_with_wrong_digest_is_rejected(server: _Server, tmp_path: Path) -> None:
    archive, _ = _cifar_archive(np.random.default_rng(5))
    server.routes["/c/cifar-10-python.tar.gz"] = (archive, "ok")
    remote = RemoteFile("cifar-10-python.tar.gz", "0" * 64, "file")
    with pytest.raises(DownloadError, match="SHA-256 of the file"):
        download_dataset(
            "cifar10", tmp_path, source=DataSource((f"{server.url}/c/",), (remote,), archive=True)
        )
    assert _leftovers(tmp_path / "cifar-10-batches-py") == []


def test_remote_file_validation() -> None:
    with pytest.raises(ValueError, match="'digest_of'"):
        RemoteFile("x", "0" * 64, "compressed")
    with pytest.raises(ValueError, match="'name'"):
        download_dataset("imagenet")

"""Benchmark: peak memory of ``rmtprune prune`` on a safetensors checkpoint, streamed or loaded.

Issue 12, item 5.  The script writes ``--layers`` float32 matrices of ``--shape`` (default
24 × 1024×1024, 100 MB; i.i.d. ``N(0, 1/n)``) into one ``.safetensors`` file in a temporary
folder, then runs, each in its own child process, which prints its own peak resident memory
(``VmHWM`` of ``/proc/self/status``, Linux; ``ru_maxrss`` is not used because a child's starts
at its parent's resident size at the time of the fork):

* ``import rmtprune.cli.app`` only (the interpreter, torch and rmtprune);
* ``rmtprune prune CKPT -o OUT --assume-linear '*' --quiet`` on a checkpoint of ONE such layer;
* the same on the whole checkpoint, streamed (the route ``prune`` takes now);
* the same on the whole checkpoint through the in-memory route it took before
  (``plan_input(..., stream=False)``: every tensor read, the shell model loaded,
  ``rmtprune.prune``, ``rmtprune.save``).

It prints a Markdown table: peak RSS, its growth over the one-layer run and that growth as a
fraction of the checkpoint.  Run once (the machine is shared)::

    PYTHONPATH=src .venv/bin/python bench/bench_stream_prune.py
    PYTHONPATH=src .venv/bin/python bench/bench_stream_prune.py --layers 4 --shape 256 512  # fast

docs/pretrained.md ("Checkpoints on disk") records a run; tests/ondisk/test_stream_prune.py runs
a smaller version of the same comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

CHILD = """
import functools, sys
import rmtprune.cli.app, rmtprune.ondisk.inputs as inputs
route, argv = sys.argv[1], sys.argv[2:]
if route == "loaded":
    inputs.plan_input = functools.partial(inputs.plan_input, stream=False)
status = rmtprune.cli.app.main(argv) if route != "import" else 0
with open("/proc/self/status") as fh:
    print(status, [int(s.split()[1]) * 1024 for s in fh if s.startswith("VmHWM")][0])
"""


def write_checkpoint(path: str, layers: int, shape: tuple[int, int], seed: int = 0) -> int:
    """``layers`` float32 noise matrices of ``shape`` in one safetensors file; its size."""
    generator = torch.Generator().manual_seed(seed)
    m, n = shape
    tensors = {
        f"layers.{i}.weight": torch.randn(m, n, generator=generator) / n**0.5 for i in range(layers)
    }
    save_file(tensors, path)
    del tensors
    return os.path.getsize(path)


def peak(route: str, argv: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one child."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, route, *argv], check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    status, rss = done.stdout.split()[-2:]
    if status != "0":  # pragma: no cover - the command failed
        raise SystemExit(f"{route}: rmtprune prune failed: {done.stderr.strip()}")
    return int(rss), wall


def main(argv: list[str] | None = None) -> None:
    """Generate, measure, print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="matrices (default: 24)")
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 1024), metavar=("M", "N"))
    parser.add_argument("--dir", default=None, help="parent of the temporary folder")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="rmtprune-bench-stream-", dir=args.dir)
    try:
        one = os.path.join(work, "one.safetensors")
        many = os.path.join(work, "many.safetensors")
        write_checkpoint(one, 1, tuple(args.shape))
        size = write_checkpoint(many, args.layers, tuple(args.shape))
        options = ["--assume-linear", "*", "--quiet"]
        runs = {
            "import rmtprune.cli.app only": peak("import", []),
            "prune, 1 layer": peak("streamed", ["prune", one, "-o", f"{one}.out", *options]),
            "prune, streamed (now)": peak(
                "streamed", ["prune", many, "-o", f"{many}.streamed", *options]
            ),
            "prune, loaded whole (before)": peak(
                "loaded", ["prune", many, "-o", f"{many}.loaded", *options]
            ),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = runs["prune, 1 layer"][0]
    m, n = args.shape
    print(f"checkpoint: {args.layers} float32 layers of {m}×{n}, {size / 2**20:.1f} MiB")
    print()
    print("| child | peak RSS | growth over 1 layer | growth / checkpoint | wall |")
    print("|---|---|---|---|---|")
    for name, (rss, wall) in runs.items():
        growth = "–" if name.startswith("import") else f"{(rss - base) / 2**20:+.0f} MiB"
        ratio = "–" if name.startswith("import") else f"{(rss - base) / size:+.2f}"
        print(f"| {name} | {rss / 2**20:.0f} MiB | {growth} | {ratio} | {wall:.1f} s |")


if __name__ == "__main__":
    main()

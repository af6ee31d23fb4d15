"""Benchmark: ``rmtprune analyze`` streaming a multi-GB sharded LLaMA-style bf16 checkpoint.

Issue 12, item 5.  The script writes a Hugging Face model directory in a
temporary folder on local disk (``config.json``, ``model.safetensors.index.json``
and ``model-0000X-of-0000N.safetensors`` shards, LLaMA names and shapes,
bfloat16), then, each in its own child process:

1. ``rmtprune analyze DIR --json OUT --progress`` (progress bar with the time
   left on stderr); its peak resident memory is the child's own high-water
   mark (``VmHWM``, which starts afresh at ``exec``);
2. the *exact eigenvalue floor*: for every layer the analysis fitted, the time
   of :func:`rmtprune.rmt.spectrum.eigenvalues` (Gram matrix in float64 and its
   eigenvalues, the routine the analysis uses) on the float64 matrix already
   in memory; reading and upcasting are not timed.  The time depends only on
   the shape, so each distinct shape is timed on one of its layers (median of
   3) and counted once per layer.

It prints the ratios against the targets: peak memory ≤ 1 GiB + 3 × the
largest weight in float64, wall time ≤ 1.3 × the floor.  Run once (the machine
is shared)::

    PYTHONPATH=src .venv/bin/python bench/bench_checkpoint.py            # 2.2 GB, TinyLlama shapes
    PYTHONPATH=src .venv/bin/python bench/bench_checkpoint.py --small    # seconds

docs/pretrained.md ("Checkpoints on disk") records a run.  The test suite runs a
few-MB version of the same code path (tests/storage/test_reader_bench.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import save_file

ANALYZE_SCRIPT = """
import sys
from rmtprune.cli.app import main
try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as out:
        out.write(peak)
sys.exit(code)
"""

FLOOR_SCRIPT = """
import json, statistics, sys, time
import torch
from rmtprune.storage.reader import open_checkpoint
from rmtprune.rmt.spectrum import eigenvalues
directory, names, repeats = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
checkpoint = open_checkpoint(directory)
by_shape = {}
for name in names:
    by_shape.setdefault(checkpoint.info(name).shape, []).append(name)
total, rows = 0.0, []
for shape, group in by_shape.items():
    matrix = checkpoint.read(group[0]).to(torch.float64).reshape(shape[0], -1)
    array = matrix.numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        eigenvalues(array)
        times.append(time.perf_counter() - start)
    each = statistics.median(times)
    total += each * len(group)
    rows.append({"shape": list(shape), "layers": len(group), "seconds_each": each})
    del matrix, array
print(json.dumps({"floor_s": total, "shapes": rows}))
"""


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a LLaMA-style decoder."""

    hidden: int = 2048
    intermediate: int = 5632
    layers: int = 22
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tensor name and shape, in the order of a Hugging Face checkpoint."""
        h, kv = self.hidden, self.hidden // self.heads * self.kv_heads
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (self.intermediate, h)),
                (p + "mlp.up_proj.weight", (self.intermediate, h)),
                (p + "mlp.down_proj.weight", (h, self.intermediate)),
            ]
        return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def config(self) -> dict[str, object]:
        """A ``config.json`` for ``LlamaForCausalLM``."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "dtype": "bfloat16",
        }


def write_llama_checkpoint(
    directory: str, shape: LlamaShape, *, shards: int, seed: int = 0
) -> dict[str, int]:
    """Write a sharded bf16 checkpoint of ``shape`` into ``directory`` (random weights).

    Matrices are i.i.d. ``N(0, 1/n)`` plus a rank-4 signal of strength 3 (so
    they have spikes); norm weights are ones.  Returns the total size in bytes
    and the number of entries of the largest weight.
    """
    os.makedirs(directory, exist_ok=True)
    specs = shape.tensors()
    sizes = [math.prod(s) * 2 for _, s in specs]
    per_shard = sum(sizes) / shards
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    groups: list[list[int]] = [[]]
    filled = 0.0
    for i, size in enumerate(sizes):
        if filled >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        filled += size
    for k, group in enumerate(groups, start=1):
        filename = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for i in group:
            name, s = specs[i]
            tensors[name] = _random_tensor(s, generator)
            weight_map[name] = filename
        save_file(tensors, os.path.join(directory, filename), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as fh:
        json.dump(index, fh, indent=2)
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(shape.config(), fh, indent=2)
    largest = max(math.prod(s) for _, s in specs if len(s) == 2)
    return {"total_bytes": sum(sizes), "largest_weight_entries": largest, "files": len(groups)}


def _random_tensor(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    m, n = shape
    weight = torch.randn(m, n, generator=generator).mul_(n**-0.5)
    u = torch.randn(m, 4, generator=generator)
    v = torch.randn(4, n, generator=generator)
    weight.addmm_(u, v, alpha=3.0 / (m * n) ** 0.5)  # four spikes above the bulk
    return weight.to(torch.bfloat16)


def run_analyze(directory: str, report: str, *, progress: bool) -> tuple[float, int]:
    """``rmtprune analyze DIR --json REPORT`` in a child; (wall seconds, peak RSS in bytes).

    The peak is the child's own high-water mark (``VmHWM`` of ``/proc/self/status``, read by
    the child as it ends), not ``ru_maxrss`` of the children, which on Linux also counts the
    pages of this parent that the child held between ``fork`` and ``exec``.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak_file:
        command = [sys.executable, "-c", ANALYZE_SCRIPT, peak_file.name, "analyze", directory]
        command += ["--json", report, "--progress" if progress else "--quiet"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        peak_kib = int(peak_file.read().strip())
    return wall, peak_kib * 1024


def run_floor(directory: str, weights: list[str], repeats: int = 3) -> dict[str, object]:
    """The eigenvalue floor of ``weights``, in a child process.

    Its cost depends only on the shape, so each distinct shape is timed on one
    of its layers (median of ``repeats``) and counted once per layer of that
    shape.  Returns ``{"floor_s": seconds, "shapes": [...]}``.
    """
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT, directory, json.dumps(weights), str(repeats)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _fitted_weights(report_path: str) -> list[str]:
    with open(report_path) as fh:
        rows = json.load(fh)["layers"]
    return [f"{r['name']}.weight" for r in rows if r["status"] == "ok"]


def main(argv: list[str] | None = None) -> None:
    """Generate, measure, print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (a few seconds)")
    parser.add_argument("--shards", type=int, default=5, help="number of shards (default: 5)")
    parser.add_argument("--dir", default=None, help="parent of the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    parser.add_argument(
        "--checkpoint", default=None, help="reuse a checkpoint this script wrote (kept)"
    )
    args = parser.parse_args(argv)
    shape = (
        LlamaShape(hidden=256, intermediate=704, layers=2, heads=8, kv_heads=2, vocab=1000)
        if args.small
        else LlamaShape()
    )
    parent = args.dir or tempfile.gettempdir()
    need = sum(math.prod(s) * 2 for _, s in shape.tensors())
    free = shutil.disk_usage(parent).free
    if free < 2 * need:
        raise SystemExit(f"{parent}: {free / 2**30:.1f} GiB free, need {2 * need / 2**30:.1f}")
    work = tempfile.mkdtemp(prefix="rmtprune-bench-ckpt-", dir=parent)
    try:
        _measure(work, shape, args.shards, args.checkpoint)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _measure(work: str, shape: LlamaShape, shards: int, existing: str | None) -> None:
    directory = existing or os.path.join(work, "llama")
    start = time.perf_counter()
    if existing is None:
        written = write_llama_checkpoint(directory, shape, shards=shards)
    else:
        sizes = [math.prod(s) * 2 for _, s in shape.tensors()]
        largest = max(math.prod(s) for _, s in shape.tensors() if len(s) == 2)
        written = {"total_bytes": sum(sizes), "largest_weight_entries": largest, "files": shards}
    print(
        f"{'wrote' if existing is None else 'reusing'} {written['total_bytes'] / 1e9:.2f} GB "
        f"in {written['files']} shards ({time.perf_counter() - start:.0f} s): {asdict(shape)}",
        flush=True,
    )
    report = os.path.join(work, "report.json")
    wall, peak = run_analyze(directory, report, progress=True)
    weights = _fitted_weights(report)
    measured = run_floor(directory, weights)
    floor = float(measured["floor_s"])  # type: ignore[arg-type]
    print(json.dumps(measured), flush=True)
    largest64 = written["largest_weight_entries"] * 8
    mem_target = 2**30 + 3 * largest64
    print()
    print("| quantity | measured | target | ratio to target |")
    print("|---|---|---|---|")
    print(
        f"| peak RSS of `rmtprune analyze` | {peak / 2**30:.2f} GiB | "
        f"{mem_target / 2**30:.2f} GiB (1 GiB + 3 × {largest64 / 2**30:.2f} GiB) | "
        f"{peak / mem_target:.2f} |"
    )
    print(
        f"| wall time of `rmtprune analyze` | {wall:.1f} s | 1.3 × floor = {1.3 * floor:.1f} s "
        f"| {wall / (1.3 * floor):.2f} |"
    )
    print(
        f"| exact eigenvalue floor ({len(weights)} layers) | {floor:.1f} s | – | "
        f"wall / floor = {wall / floor:.2f} |"
    )
    print(
        f"| checkpoint size | {written['total_bytes'] / 2**30:.2f} GiB | – | "
        f"peak / size = {peak / written['total_bytes']:.2f} |"
    )


if __name__ == "__main__":
    main()

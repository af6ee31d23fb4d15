"""Pruned Hugging Face models survive a save/load round trip bit for bit.

``rmtprune.save_pretrained`` / ``rmtprune.from_pretrained`` store the factorized structure in
``config.json``; a plain Hugging Face ``from_pretrained`` of such a directory fails instead of
re-initialising the pruned layers at random (before: no error, max output difference 0.34).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.storage.format import describe_structure
from tests.hf.helpers import FORCE_SPLIT, MODELS, output, transformers


def _pruned(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    build, _ = MODELS[name]
    torch.manual_seed(0)
    pruned, report = rmtprune.prune(build().eval().to(dtype), **FORCE_SPLIT)
    assert sum(row.action == "split" for row in report) >= 8
    return pruned


def _same(a: nn.Module, b: nn.Module, name: str) -> None:
    x = MODELS[name][1]()
    assert torch.equal(output(a, x), output(b, x))
    assert describe_structure(a) == describe_structure(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("name", "cls", "dtype"),
    [
        ("bert", "BertModel", torch.float32),
        ("bert", "AutoModel", torch.bfloat16),
        ("gpt2", "GPT2LMHeadModel", torch.float32),
        ("vit", "AutoModel", torch.float16),
        ("llama", "AutoModelForCausalLM", torch.float32),
    ],
)
def test_round_trip_is_exact(tmp_path: Path, name: str, cls: str, dtype: torch.dtype) -> None:
    pruned = _pruned(name, dtype)
    rmtprune.save_pretrained(pruned, tmp_path)
    loaded = rmtprune.from_pretrained(getattr(transformers, cls), tmp_path)
    assert not loaded.training and next(loaded.parameters()).dtype == dtype
    _same(pruned, loaded, name)
    entry = json.loads((tmp_path / "config.json").read_text())["rmtprune"]
    assert entry["structure"] == describe_structure(pruned)
    assert "rmtprune.from_pretrained" in entry["load_with"]
    assert not hasattr(loaded.config, "rmtprune")  # a later HF save carries no stale record


def test_tied_embeddings_stay_tied_through_the_round_trip(tmp_path: Path) -> None:
    pruned = _pruned("gpt2")
    rmtprune.save_pretrained(pruned, tmp_path)
    loaded = rmtprune.from_pretrained(transformers.GPT2LMHeadModel, tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert (tmp_path / "generation_config.json").is_file()


@pytest.mark.parametrize("cls", ["BertModel", "AutoModel"])
def test_plain_hugging_face_loading_fails_instead_of_reinitialising(
    tmp_path: Path, cls: str
) -> None:
    rmtprune.save_pretrained(_pruned("bert"), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    with pytest.raises(OSError, match=r"model\.safetensors"):
        getattr(transformers, cls).from_pretrained(tmp_path)


def test_hugging_face_own_save_of_a_pruned_model_loads_with_rmtprune(tmp_path: Path) -> None:
    pruned = _pruned("bert")
    pruned.save_pretrained(tmp_path)  # HF's own method: factorized keys, no structure record
    keys = set(transformers.modeling_utils.load_state_dict(str(tmp_path / "model.safetensors")))
    assert "encoder.layer.0.attention.self.query.first.weight" in keys
    _same(pruned, rmtprune.from_pretrained(transformers.BertModel, tmp_path), "bert")
    gpt2 = _pruned("gpt2")  # tied lm_head: HF stores it once
    gpt2.save_pretrained(tmp_path / "gpt2")
    loaded = rmtprune.from_pretrained(transformers.GPT2LMHeadModel, tmp_path / "gpt2")
    _same(gpt2, loaded, "gpt2")


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_plain_loading_of_hugging_face_own_save_fails_instead_of_reinitialising(
    tmp_path: Path, name: str
) -> None:
    """HF's own save of a pruned model is marked, so transformers refuses it loudly."""
    pruned = _pruned(name)
    pruned.save_pretrained(tmp_path, max_shard_size="20KB")  # sharded, as big models are
    assert (tmp_path / "model.safetensors.index.json").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert "rmtprune.from_pretrained" in config["quantization_config"]["rmtprune"]
    cls = type(pruned).__name__
    for loader in (getattr(transformers, cls), transformers.AutoModel):
        with pytest.raises(ValueError, match="quant"):
            loader.from_pretrained(tmp_path)
    loaded = rmtprune.from_pretrained(getattr(transformers, cls), tmp_path)
    _same(pruned, loaded, name)
    assert not hasattr(loaded.config, "quantization_config")
    with pytest.raises(ValueError, match="'push_to_hub' parameter of save_pretrained"):
        pruned.save_pretrained(tmp_path / "hub", push_to_hub=True)  # would upload unmarked
    assert not (tmp_path / "hub").exists()
    loaded.save_pretrained(tmp_path / "again")  # the loaded model is guarded as well
    assert "quantization_config" in json.loads((tmp_path / "again" / "config.json").read_text())


def test_guard_survives_copies_and_leaves_dense_saves_alone(tmp_path: Path) -> None:
    import copy
    import pickle

    build, _ = MODELS["bert"]
    torch.manual_seed(0)
    dense = build().eval()
    dense.save_pretrained(tmp_path / "dense")  # never factorized: HF's file, unmarked
    assert "quantization_config" not in json.loads((tmp_path / "dense/config.json").read_text())
    pruned = _pruned("bert")
    for clone in (copy.deepcopy(pruned), pickle.loads(pickle.dumps(pruned))):
        clone.save_pretrained(tmp_path / "clone")
        with pytest.raises(ValueError, match="quant"):
            transformers.BertModel.from_pretrained(tmp_path / "clone")
        loaded = rmtprune.from_pretrained(transformers.BertModel, tmp_path / "clone")
        _same(pruned, loaded, "bert")
    # a guarded model with every factorized layer made dense again saves unmarked
    again = copy.deepcopy(pruned)
    for name, module in list(again.named_modules()):
        if isinstance(module, rmtprune.factorize.LowRankModule):
            dense_layer = nn.Linear(module.in_features, module.out_features)
            rmtprune.factorize.set_submodule(again, name, dense_layer)
    again.save_pretrained(tmp_path / "undone")
    assert "quantization_config" not in json.loads((tmp_path / "undone/config.json").read_text())
    transformers.BertModel.from_pretrained(tmp_path / "undone")


def test_a_model_containing_the_pruned_one_is_guarded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prune(model.bert)`` then the outer model's own save: marked, refused by a plain load.

    Before, the outer classifier was outside the guarded tree and its checkpoint reloaded with
    the pruned encoder layers re-initialised at random.
    """
    import pickle

    torch.manual_seed(0)
    config = MODELS["bert"][0]().config
    outer = transformers.BertForSequenceClassification(config).eval()
    rmtprune.prune(outer.bert, inplace=True, **FORCE_SPLIT)
    assert "save_pretrained" not in vars(outer)  # not in the tree prune was given
    outer.save_pretrained(tmp_path / "outer")
    with pytest.raises(ValueError, match="quant"):
        transformers.BertForSequenceClassification.from_pretrained(tmp_path / "outer")
    loaded = rmtprune.from_pretrained(
        transformers.BertForSequenceClassification, tmp_path / "outer"
    )
    _same(outer, loaded, "bert")
    dense = transformers.BertForSequenceClassification(config)  # the class wrapper leaves
    dense.save_pretrained(tmp_path / "dense")  # a model without factorized layers alone
    assert "quantization_config" not in json.loads((tmp_path / "dense/config.json").read_text())
    # a process that only unpickles the model (the class wrapper not yet installed there)
    base = transformers.PreTrainedModel
    wrapper = base.save_pretrained
    monkeypatch.setattr(base, "save_pretrained", wrapper.__rmtprune_wrapped__)
    clone = pickle.loads(pickle.dumps(outer))
    assert base.save_pretrained is not wrapper.__rmtprune_wrapped__  # installed again
    clone.save_pretrained(tmp_path / "fresh")
    entry = json.loads((tmp_path / "fresh/config.json").read_text())["quantization_config"]
    assert "rmtprune" in entry


_PEAK_SCRIPT = """
import sys, torch, transformers, rmtprune

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def peak_of(fn):
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak resident set size
    except OSError:
        print("cannot reset the peak")
        sys.exit(0)
    before = rss("VmRSS:")
    kept = fn()
    return rss("VmHWM:") - before, kept

rmtprune.from_pretrained(transformers.BertModel, sys.argv[1])  # imports and warms up
load, model = peak_of(lambda: rmtprune.from_pretrained(transformers.BertModel, sys.argv[2]))
dense, _ = peak_of(lambda: transformers.BertModel(model.config))
print(load, dense)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc needed")
def test_from_pretrained_does_not_allocate_the_dense_model(tmp_path: Path) -> None:
    """Peak memory of loading a pruned model is far below that of building the dense one."""
    import subprocess
    import sys

    from rmtprune.factorize import LowRankLinear, set_submodule

    def pruned(hidden: int, layers: int) -> nn.Module:
        config = transformers.BertConfig(
            vocab_size=96,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=4 * hidden,
            max_position_embeddings=40,
        )
        model = transformers.BertModel(config).eval()
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear):
                small = LowRankLinear(module.in_features, module.out_features, rank=4)
                set_submodule(model, name, small)
        return model

    rmtprune.save_pretrained(pruned(32, 1), tmp_path / "tiny")
    rmtprune.save_pretrained(pruned(768, 3), tmp_path / "big")  # dense: 21 M parameters
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path / "tiny"), str(tmp_path / "big")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if "cannot reset the peak" in done.stdout:
        pytest.skip("/proc/self/clear_refs is not writable here")
    load, dense = map(int, done.stdout.split())
    assert dense > 60e6  # 21 M float32 parameters, measured
    assert load < 0.2 * dense, (load, dense)  # was above ``dense``: the dense model came first


def test_existing_weights_are_not_overwritten_silently(tmp_path: Path) -> None:
    build, _ = MODELS["bert"]
    build().save_pretrained(tmp_path)  # a dense checkpoint a plain loader would pick up
    pruned = _pruned("bert")
    with pytest.raises(FileExistsError, match=r"model\.safetensors"):
        rmtprune.save_pretrained(pruned, tmp_path)
    rmtprune.save_pretrained(pruned, tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "rmtprune.safetensors"]
    with pytest.raises(FileExistsError, match=r"rmtprune\.safetensors"):
        rmtprune.save_pretrained(pruned, tmp_path)
    _same(pruned, rmtprune.from_pretrained(transformers.BertModel, tmp_path), "bert")


def test_errors_name_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'model' parameter of save_pretrained"):
        rmtprune.save_pretrained(nn.Linear(2, 2), tmp_path)
    with pytest.raises(FileNotFoundError, match="'directory' parameter of from_pretrained"):
        rmtprune.from_pretrained(transformers.BertModel, tmp_path)
    rmtprune.save_pretrained(_pruned("bert"), tmp_path)
    with pytest.raises(TypeError, match="'model_class' parameter of from_pretrained"):
        rmtprune.from_pretrained(nn.Linear, tmp_path)


def test_io_save_and_load_handle_embeddings_and_conv1d(tmp_path: Path) -> None:
    pruned = _pruned("gpt2")
    kinds = {entry["type"] for entry in describe_structure(pruned).values()}
    assert kinds == {"LowRankConv1D", "LowRankEmbedding"}
    rmtprune.save(pruned, tmp_path / "gpt2.safetensors")
    fresh = MODELS["gpt2"][0]().eval()
    _same(pruned, rmtprune.load(fresh, tmp_path / "gpt2.safetensors"), "gpt2")


def test_meta_build_leaves_other_threads_alone() -> None:
    """A model built in another thread while one thread loads gets real parameters."""
    import threading

    from rmtprune.hf.pretrained import parameters_on_meta

    original = nn.Module.register_parameter
    inside, built = threading.Event(), threading.Event()
    seen: dict[str, nn.Module] = {}

    def loader() -> None:
        with parameters_on_meta():
            inside.set()
            built.wait(timeout=30)
            seen["loader"] = nn.Linear(3, 2)
            with parameters_on_meta():  # nested use keeps the outer one active
                seen["nested"] = nn.Linear(3, 2)
            seen["after nested"] = nn.Linear(3, 2)

    thread = threading.Thread(target=loader)
    thread.start()
    assert inside.wait(timeout=30)
    seen["other"] = nn.Linear(3, 2)  # this thread never entered the context
    built.set()
    thread.join(timeout=30)
    assert not seen["other"].weight.is_meta and not seen["other"].bias.is_meta
    assert all(seen[k].weight.is_meta for k in ("loader", "nested", "after nested"))
    assert nn.Module.register_parameter is original
    assert not nn.Linear(3, 2).weight.is_meta

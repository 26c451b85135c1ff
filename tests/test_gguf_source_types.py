"""A searched tensor given its source file's own type is the source's bytes, as llama-quantize copies it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("libgguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from levelsearch.adapters.codecs.gguf import types as gt  # noqa: E402
from test_gguf import write_tiny_gguf  # noqa: E402
from test_gguf_moe import write_tiny_moe_gguf  # noqa: E402

pytestmark = pytest.mark.llm


def with_types(src: Path, out: Path, types: dict[str, str]) -> Path:
    """A copy of the GGUF file ``src`` with the tensors of ``types`` quantized to their type with an importance
    matrix of its own (random, seeded), as a published file is: re-quantizing its weights with another one gives
    other bytes."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(str(src))
    w = GGUFWriter(str(out), str(r.fields["general.architecture"].contents()))
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        main = field.types[0]
        w.add_key_value(key, field.contents(), main, sub_type=field.types[-1] if main == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name in types:
            x = np.asarray(t.data, dtype=np.float32)
            im = np.random.default_rng(0).gamma(0.5, 1.0, x.shape[-1]).astype(np.float32)
            q = gt.quantize(x.reshape(-1, x.shape[-1]), types[t.name], im)
            w.add_tensor(t.name, q.reshape(*x.shape[:-1], -1), raw_dtype=GGMLQuantizationType[types[t.name]])
        else:
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


CASES = {
    "llama": ({"blk.0.attn_q.weight": "Q4_K", "blk.1.ffn_down.weight": "Q4_K"}, write_tiny_gguf),
    "qwen3moe": (
        {
            "blk.0.ffn_down_exps.weight": "Q4_K",
            "blk.1.ffn_gate_exps.weight": "Q4_K",
            "blk.1.ffn_up_exps.weight": "Q4_K",
        },
        write_tiny_moe_gguf,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tensor_in_its_source_type_is_written_as_the_source_bytes(case, tmp_path):
    from levelsearch.adapters.codecs.gguf.export import verify_gguf, write_gguf
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem

    types, write = CASES[case]
    src = with_types(write(tmp_path / "f16.gguf"), tmp_path / "src.gguf", types)
    problem = GGUFProblem(
        str(src), target=4.5, types=("Q2_K", "Q3_K", "Q4_K", "Q6_K"), tol=0.02, seq_len=32, calibration_tokens=256,
        heldout_tokens=128, top_k=16, progress=False, estimates="layer", database=str(tmp_path / "db"),
    )  # fmt: skip
    lv = problem.levels_for(["Q4_K"] * len(problem.unit_names))
    assert lv is not None and problem.space.is_feasible(lv)
    members = problem.member_levels(lv)
    sourced = {u for g in types for u, _rows in problem.tensor_parts[g]}
    assert set(problem.source_levels) == sourced
    assert all(problem.source_levels[u] == members[u] for u in sourced)
    errors = problem.layer_errors()
    path = write_gguf(problem, lv, tmp_path / "out" / "model.gguf")
    written = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    source = problem.source.tensors
    requantized = 0
    for g in types:
        assert written[g].tensor_type.name == "Q4_K"
        assert np.array_equal(np.asarray(written[g].data), np.asarray(source[g].data)), g  # copied as it is
        for u, _rows in problem.tensor_parts[g]:  # the database's imatrix-weighted variant is another one
            db = problem.database_bytes(u, int(members[u]))
            requantized += not np.array_equal(db, problem.variant_bytes(u, int(members[u])))
    assert requantized > 0
    tie_of = getattr(problem.space, "tie_of", np.arange(len(problem.unit_names)))
    for group in {int(tie_of[u]) for u in sourced}:  # no error against the reference at the source's type
        assert errors[group, int(lv[group])] == 0.0
    report = verify_gguf(problem, lv, path)  # the searched model at those levels is the source's weights there
    assert report["transformers_max_abs_logit_diff"] <= 1e-3

"""llama.cpp's CPU rounding of activations (``adapters/codecs/gguf/emulate.py``): the rounding itself against
ggml's own quantizer, and the hooks it puts into a gguf problem's model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
libgguf = pytest.importorskip("libgguf")

from levelsearch.adapters.codecs.gguf.emulate import llama_cpu_rounding, round_activations, vec_dot_type  # noqa: E402


def _x(rows: int = 6, cols: int = 512, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.from_numpy((g.standard_normal((rows, cols)) * g.uniform(0.1, 10, (rows, 1))).astype(np.float32))


def test_q8_0_rounding_is_ggml_own_q8_0():
    from gguf import GGMLQuantizationType as T

    x = _x()
    want = np.asarray(libgguf.dequantize_rows(libgguf.quantize_rows(x.numpy(), int(T.Q8_0)), int(T.Q8_0), 512))
    got = round_activations(x, "Q8_0").numpy()
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, x.numpy())
    np.testing.assert_array_equal(round_activations(x, "Q8_1").numpy(), got)  # the same values, with a block sum


def test_q8_k_rounding_keeps_the_signed_largest_value_and_caps_at_127():
    x = _x(cols=256)
    x[0, 7] = -50.0  # the largest magnitude of row 0, negative: its scale maps it to +127 exactly
    x[1, 3] = 40.0  # positive: it maps to -127
    got = round_activations(x, "Q8_K")
    assert got[0, 7] == pytest.approx(-50.0, rel=1e-6) and got[1, 3] == pytest.approx(40.0, rel=1e-6)
    d = x.abs().amax(-1, keepdim=True) / 127.0
    assert bool(((got - x).abs() <= d / 2 + 1e-6).all())
    q = torch.round(got / -(x.gather(-1, x.abs().argmax(-1, keepdim=True)) / 127.0))
    assert int(q.max()) <= 127 and int(q.min()) >= -127


def test_other_roundings_and_bad_input():
    x = _x(cols=64)
    assert torch.equal(round_activations(x, None), x)
    assert torch.equal(round_activations(x, "F16"), x.half().float())
    assert torch.equal(round_activations(x, "BF16"), x.bfloat16().float())
    with pytest.raises(ValueError, match="not whole Q8_K blocks of 256"):
        round_activations(x, "Q8_K")
    with pytest.raises(ValueError, match="unknown activation rounding 'Q4_K'"):
        round_activations(x, "Q4_K")
    assert [vec_dot_type(t) for t in ("Q3_K", "IQ2_XS", "Q4_1", "Q4_0", "IQ4_NL", "F16", "F32")] == [
        "Q8_K", "Q8_K", "Q8_1", "Q8_0", "Q8_0", "F16", None,
    ]  # fmt: skip


@pytest.mark.llm
def test_the_hooks_round_each_linear_as_its_current_type_and_go_away(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from levelsearch.adapters.codecs.gguf.problem import GGUFProblem
    from test_gguf import write_tiny_gguf

    src = write_tiny_gguf(tmp_path / "tiny-f16.gguf")
    problem = GGUFProblem(
        str(src), target=4.0, types=("Q2_K", "Q4_K", "Q6_K"), tol=0.05, seq_len=32,
        calibration_tokens=128, heldout_tokens=128, top_k=260, progress=False, database=str(tmp_path / "db"),
    )  # fmt: skip
    levels = problem.space.repair(np.ones(len(problem.unit_names), dtype=np.int64), np.random.default_rng(0))
    ids = torch.as_tensor(problem.heldout.tokens[:2])
    problem.apply(levels)
    kind = vec_dot_type(problem.unit_types[0][int(problem.member_levels(levels)[0])])
    assert kind == "Q8_K" and problem.live_type(0) != problem.source_type(0)
    raw: list[torch.Tensor] = []
    inside: list[torch.Tensor] = []
    mod = problem.modules[0]
    before = mod.register_forward_pre_hook(lambda m, a: raw.append(a[0].detach().clone()))
    try:
        with torch.inference_mode():
            plain = problem.model(input_ids=ids, use_cache=False).logits
            with llama_cpu_rounding(problem):
                after_rounding = mod.register_forward_pre_hook(lambda m, a: inside.append(a[0].detach().clone()))
                rounded = problem.model(input_ids=ids, use_cache=False).logits
                after_rounding.remove()
            again = problem.model(input_ids=ids, use_cache=False).logits
    finally:
        before.remove()
        problem.apply(None)
    assert not torch.equal(plain, rounded) and torch.equal(plain, again)
    assert torch.equal(inside[0], round_activations(raw[1], kind)) and not torch.equal(inside[0], raw[1])
    assert problem.live_type(0) == problem.source_type(0) == "F16"  # back at the source's values

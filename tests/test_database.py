"""Variant databases on a tiny random Llama: exact levels, resume, identity, memory-mapped swaps."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.model.calibration import linear_units  # noqa: E402
from levelsearch.adapters.weights.database import VariantDatabase, build_database, unit_level_values  # noqa: E402

pytestmark = pytest.mark.llm


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=80,
        intermediate_size=144,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


SPARSE = {"kind": "sparsity", "method": "sparsegpt", "target": 0.5, "step": 400, "max_offset": 3, "block_size": 32}
QUANT = {"kind": "quant", "method": "gptq", "bits": [2, 3, 4, 8], "group_size": 32}


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama()
    tokens = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    return model, tokens


@pytest.fixture(scope="module")
def sparse_db(setup, tmp_path_factory):
    model, tokens = setup
    return build_database(tmp_path_factory.mktemp("s"), model, tokens, SPARSE, progress=False)


@pytest.fixture(scope="module")
def quant_db(setup, tmp_path_factory):
    model, tokens = setup
    return build_database(tmp_path_factory.mktemp("q"), model, tokens, QUANT, progress=False)


def test_sparsity_levels_step_by_the_same_number_of_zeros_in_every_layer():
    small, big = unit_level_values(SPARSE, 80 * 40), unit_level_values(SPARSE, 144 * 80)
    assert np.all(np.diff(small) == 400) and np.all(np.diff(big) == 400)
    assert small[len(small) // 2] == 1600 and big[3] == 144 * 80 // 2


def test_every_sparsity_level_has_exactly_its_stated_number_of_zeros(sparse_db):
    for unit in sparse_db.unit_names:
        for level, zeros in enumerate(sparse_db.values(unit)):
            assert int((sparse_db.weight(unit, level) == 0).sum()) == zeros


def test_every_quant_level_has_at_most_two_to_the_bits_values_per_group(quant_db):
    for unit in quant_db.unit_names:
        for level, bits in enumerate(quant_db.values(unit)):
            w = quant_db.weight(unit, level)
            for g in range(0, w.shape[1], 32):
                counts = [len(torch.unique(w[r, g : g + 32])) for r in range(w.shape[0])]
                assert max(counts) <= 2**bits


def test_quant_database_is_smaller_than_dense_fp16_per_level(quant_db):
    dense = sum(np.prod(quant_db.shape(u)) * 2 * len(quant_db.values(u)) for u in quant_db.unit_names)
    assert quant_db.size_bytes() < 0.6 * dense


def test_errors_grow_with_sparsity_and_shrink_with_bits(sparse_db, quant_db):
    assert np.all(np.diff(sparse_db.errors(), axis=1)[np.isfinite(np.diff(sparse_db.errors(), axis=1))] > 0)
    assert np.all(np.diff(quant_db.errors(), axis=1) < 0)


def test_a_killed_build_resumes_at_the_next_unbuilt_layer(setup, sparse_db, tmp_path, monkeypatch):
    model, tokens = setup

    def crash(layer: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_database(tmp_path, model, tokens, SPARSE, progress=False, on_layer=crash)
    assert list(json.loads((tmp_path / "manifest.json").read_text())["layers"]) == ["0"]
    built = []
    db = build_database(tmp_path, model, tokens, SPARSE, progress=False, on_layer=built.append)
    assert built == [1]
    db.verify()
    for unit in db.unit_names:
        assert torch.equal(db.weight(unit, 2), sparse_db.weight(unit, 2))


def test_a_database_refuses_another_model(setup, sparse_db):
    _, tokens = setup
    other = tiny_llama(seed=1)
    with pytest.raises(ValueError, match="another model"):
        build_database(sparse_db.root, other, tokens, SPARSE, progress=False)
    with pytest.raises(ValueError, match="another model"):
        sparse_db.check_model(other)


def test_a_database_refuses_other_settings(setup, sparse_db):
    model, tokens = setup
    with pytest.raises(ValueError, match="other settings"):
        build_database(sparse_db.root, model, tokens, {**SPARSE, "target": 0.6}, progress=False)


def test_apply_swaps_in_only_the_units_whose_level_changed(setup, sparse_db):
    model = tiny_llama()
    db = VariantDatabase(sparse_db.root)
    n = len(db.unit_names)
    assert db.apply(model, [3] * n) == n
    lv = [3] * n
    lv[0], lv[5] = 4, 2
    assert db.apply(model, lv) == 2
    name = db.unit_names[5]
    assert torch.equal(dict(model.named_modules())[name].weight, db.weight(name, 2))


def test_units_are_every_linear_of_every_decoder_layer(setup, sparse_db):
    model, _ = setup
    assert sparse_db.unit_names == [name for name, _, _ in linear_units(model)]


def test_decoded_weights_are_cached_within_their_bound_and_equal_fresh_decodes(quant_db):
    units = quant_db.unit_names[:4]
    one = quant_db.weight(units[0], 1)
    bound = 2 * one.numel() * one.element_size()
    cached = VariantDatabase(quant_db.root, cache_bytes=bound)
    uncached = VariantDatabase(quant_db.root, cache_bytes=0)
    for _ in range(2):  # the second round reads what the cache kept
        for unit in units:
            for level in range(len(cached.values(unit))):
                assert torch.equal(cached.weight(unit, level), uncached.weight(unit, level))
                assert 0 < cached.cached_bytes <= bound
    assert uncached.cached_bytes == 0


def test_changing_a_returned_weight_does_not_change_the_database(quant_db):
    unit = quant_db.unit_names[0]
    w = quant_db.weight(unit, 1)
    w.zero_()
    assert not torch.equal(quant_db.weight(unit, 1), w)


def test_a_negative_cache_bound_is_refused(quant_db):
    with pytest.raises(ValueError, match="cache_bytes"):
        VariantDatabase(quant_db.root, cache_bytes=-1)


def _probe_codec(statistics: str, units: tuple[str, ...] | None = None):
    """A weight codec whose one level is the weight itself; it records the statistic it gets per unit."""
    from levelsearch.adapters.codecs import WeightCodec

    class Probe(WeightCodec):
        name = "probe"
        seen: list = []

        def units(self, model):
            every = super().units(model)
            return [u for u in every if units is None or u[0].rsplit(".", 1)[-1] in units]

        def check_spec(self, spec):
            pass

        def level_values(self, spec, numel):
            return [0]

        def amount(self, spec, value, numel):
            return numel

        def make_variants(self, spec, w, stats, values):
            self.seen.append(None if stats is None else tuple(stats.shape))
            return [w.clone()]

        def keeps_level(self, spec, value, variant):
            return True

        def encode(self, variant):
            return {"w": variant}

        def decode(self, spec, value, shape, part):
            return part("w")

        def export_entry(self, spec, value, numel):
            return {}

    Probe.statistics = statistics
    return Probe()


@pytest.mark.parametrize(
    "statistics, shape", [("hessian", (80, 80)), ("hessian_diag", (80,)), ("activations", (8 * 16, 80)), ("none", None)]
)
def test_a_codec_gets_the_calibration_statistic_it_declares_for_the_units_it_names(statistics, shape, setup, tmp_path):
    model, tokens = setup
    codec = _probe_codec(statistics, units=("q_proj",))
    spec = {"kind": "probe", "method": "copy"}
    db = build_database(tmp_path, model, tokens, spec, codec=codec, progress=False)
    assert [u.rsplit(".", 1)[-1] for u in db.unit_names] == ["q_proj", "q_proj"]  # the units the codec named
    assert codec.seen == [shape, shape]  # q_proj's input is the hidden state: 80 wide, 8 x 16 tokens

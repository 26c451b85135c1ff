"""Identities from full content: a model changed anywhere in its weights, a cache whose content or metadata
changed, a damaged cached weights file: refused or rebuilt, never reused (tiny Llama models)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.model import integrity  # noqa: E402
from levelsearch.adapters.model import models as models_mod  # noqa: E402
from levelsearch.adapters.model.integrity import file_sha256, weights_fingerprint  # noqa: E402
from levelsearch.adapters.model.models import save_model  # noqa: E402
from levelsearch.adapters.scoring.fitness import Teacher  # noqa: E402
from levelsearch.adapters.weights.database import build_database, default_database_dir, model_fingerprint  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_adapters_drop import byte_tokenizer  # noqa: E402

from levelsearch.cli import main  # noqa: E402

pytestmark = pytest.mark.llm

SMALL = ["--seq-len", "32", "--calibration-tokens", "128", "--heldout-tokens", "64", "--top-k", "16"]
SMALL += ["--offspring", "4", "--quiet"]


def six_layer_llama(seed: int = 0, *, hidden: int = 64, intermediate: int = 256, layers: int = 6):
    """Six layers whose MLP weights (64 × 256 = 16,384 values) are larger than a strided sample of 4,096."""
    cfg = transformers.LlamaConfig(
        vocab_size=257,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def small_llama():
    """Two layers (quick to compress) whose down projections (32 × 160 = 5,120 values) a 4,096-value strided
    sample did not cover."""
    return six_layer_llama(hidden=32, intermediate=160, layers=2)


def change_middle_of_layer_5(model, layer: int = 5) -> int:
    """Add 0.5 to the middle value of layer 5's (or ``layer``'s) down projection; returns its flat index."""
    w = model.model.layers[layer].mlp.down_proj.weight
    mid = w.numel() // 2
    with torch.no_grad():
        w.view(-1)[mid] += 0.5
    return mid


def _strided_sample_covers(n: int, i: int, block: int = 64, blocks: int = 64) -> bool:
    """Whether a strided sample (64 evenly spaced runs of 64 values, what a cheap fingerprint reads) covers ``i``."""
    return any(s <= i < s + block for s in (k * (n - block) // (blocks - 1) for k in range(blocks)))


# ---------------------------------------------------------------------- the weights' identity
def test_a_value_changed_outside_any_strided_sample_changes_the_weights_identity():
    model = six_layer_llama()
    fp, db_fp = weights_fingerprint(model), model_fingerprint(model)
    assert fp == weights_fingerprint(six_layer_llama()) == db_fp
    mid = change_middle_of_layer_5(model)
    assert not _strided_sample_covers(model.model.layers[5].mlp.down_proj.weight.numel(), mid)
    assert weights_fingerprint(model) != fp and model_fingerprint(model) != db_fp


def test_a_bfloat16_value_changed_in_its_last_bit_changes_the_weights_identity():
    model = six_layer_llama().to(torch.bfloat16)
    fp = weights_fingerprint(model)
    w = model.model.layers[5].mlp.down_proj.weight
    with torch.no_grad():
        bits = w.view(-1).view(torch.int16)
        bits[w.numel() // 2] ^= 1
    assert weights_fingerprint(model) != fp


def test_the_weights_identity_hashes_a_tied_tensor_once(monkeypatch):
    model = six_layer_llama()
    hashed = []
    real = integrity.tensor_digest
    monkeypatch.setattr(integrity, "tensor_digest", lambda t: hashed.append(t.data_ptr()) or real(t))
    weights_fingerprint(model)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert hashed.count(model.model.embed_tokens.weight.data_ptr()) == 1


# ---------------------------------------------------------------------- the variant database
def test_a_variant_database_refuses_a_model_changed_outside_layer_0(tmp_path):
    spec = {"kind": "quant", "method": "rtn", "bits": [2, 4], "group_size": 32}
    model = six_layer_llama()
    tokens = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    db = build_database(tmp_path / "db", model, tokens, spec, progress=False)
    change_middle_of_layer_5(model)
    with pytest.raises(ValueError, match="another model"):
        db.check_model(model)
    with pytest.raises(ValueError, match="another model"):
        build_database(tmp_path / "db", model, tokens, spec, progress=False)
    # its default directory is another one: a changed model gets a database of its own
    dirs = {default_database_dir("m", spec, {}, model_fingerprint(m)) for m in (six_layer_llama(), model)}
    assert len(dirs) == 2


# ---------------------------------------------------------------------- a compress run
def _quant(model_dir, out, *extra):
    argv = ["compress", "--model", str(model_dir), "--method", "quant", "--target", "3", "--out", str(out)]
    return main([*argv, *SMALL, "--generations", "1", "--estimates", "layer", "--no-export", *extra])


def test_a_model_changed_in_place_is_never_served_its_old_database_teacher_or_journal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    model = small_llama()
    save_model(model, byte_tokenizer(), model_dir)
    assert _quant(model_dir, tmp_path / "a") == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    w = model.model.layers[1].mlp.down_proj.weight
    assert not _strided_sample_covers(w.numel(), change_middle_of_layer_5(model, layer=1))
    save_model(model, byte_tokenizer(), model_dir)  # the same directory, other weights
    capsys.readouterr()
    # its journal: the run's identity holds every weight's bytes
    assert _quant(model_dir, tmp_path / "a") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another problem" in err[0] and "weights" in err[0], err
    # its teachers, copied into a new run's cache: refused and computed again
    (tmp_path / "b" / "cache").mkdir(parents=True)
    for f in (tmp_path / "a" / "cache").glob("teacher-*.safetensors"):
        (tmp_path / "b" / "cache" / f.name).write_bytes(f.read_bytes())
    assert _quant(model_dir, tmp_path / "b") == 0
    assert "teacher-calibration.safetensors was made for another model" in capsys.readouterr().err
    # its variant database: a new one is built (two under the cache), the old one untouched
    dbs = sorted((tmp_path / "cache" / "databases").iterdir())
    assert len(dbs) == 2
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second["database"]["dir"] != first["database"]["dir"]


def test_a_teacher_whose_nll_was_edited_is_rebuilt_and_the_dense_perplexity_stays_right(tmp_path, capsys):
    model_dir = tmp_path / "model"
    save_model(small_llama(), byte_tokenizer(), model_dir)
    argv = ["compress", "--model", str(model_dir), "--target", "0.5", "--out", str(tmp_path / "run")]
    argv += [*SMALL, "--generations", "1", "--heuristic-tokens", "64", "--no-export"]
    assert main(argv) == 0
    dense = json.loads((tmp_path / "run" / "results.json").read_text())["dense"]["heldout_ppl"]
    f = tmp_path / "run" / "cache" / "teacher-heldout.safetensors"
    with safe_open(str(f), framework="pt") as sf:
        meta = dict(sf.metadata())
        tensors = {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118 - safe_open has no __iter__
    meta["nll"] = repr(float(meta["nll"]) + 1.0)  # e^1 times the dense perplexity, its checksum left as it was
    save_file(tensors, str(f), metadata=meta)
    capsys.readouterr()
    assert main(argv) == 0
    assert "teacher-heldout.safetensors fails its checksum" in capsys.readouterr().err
    again = json.loads((tmp_path / "run" / "results.json").read_text())["dense"]["heldout_ppl"]
    assert again == pytest.approx(dense, rel=1e-6)


def test_teacher_metadata_is_part_of_its_checksum(tmp_path, capsys):
    t = Teacher(torch.zeros(1, 4, 2).half(), torch.zeros(1, 4, 2, dtype=torch.int32), torch.zeros(1, 4), 2.5)
    f = tmp_path / "t.safetensors"
    t.save(f, {"problem": "p"})
    assert Teacher.load(f, {"problem": "p"}).nll == 2.5
    for key, value in (("nll", "3.5"), ("format", "1"), ("extra", "x")):
        t.save(f, {"problem": "p"})
        with safe_open(str(f), framework="pt") as sf:
            meta = dict(sf.metadata())
        save_file(t.tensors(), str(f), metadata={**meta, key: value})
        assert Teacher.load(f, {"problem": "p"}) is None, key
    assert capsys.readouterr().err.count("fails its checksum") == 3


# ---------------------------------------------------------------------- the dequantized model cache
def _fake_smollm2_cache(root, monkeypatch):
    """A SmolLM2 cache directory as a build leaves it, holding a tiny model of a few MiB."""
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(root))
    monkeypatch.setattr(integrity, "_RACY_NS", 0)  # files written a moment ago may be remembered
    out = root / "smollm2-135m-instruct"
    save_model(six_layer_llama(hidden=128, intermediate=1024, layers=2), byte_tokenizer(), out)  # 3.6 MB
    body = {"model.safetensors": file_sha256(out / "model.safetensors")}
    (out / models_mod._WEIGHTS_RECORD).write_text(json.dumps({**body, "checksum": integrity.json_checksum(body)}))
    return out


def _no_rebuild(monkeypatch):
    class Rebuilt(Exception):
        pass

    def gguf():
        raise Rebuilt

    monkeypatch.setattr(models_mod, "smollm2_gguf", gguf)
    return Rebuilt


def test_a_zeroed_mib_in_the_middle_of_the_cached_model_is_detected_and_rebuilt(tmp_path, monkeypatch, capsys):
    out = _fake_smollm2_cache(tmp_path, monkeypatch)
    rebuilt = _no_rebuild(monkeypatch)
    assert models_mod._cached_smollm2() == out  # whole: used
    f = out / "model.safetensors"
    size = f.stat().st_size
    assert size > 3 << 20
    with open(f, "r+b") as fh:  # same size, same header: only the full hash sees it
        fh.seek(size // 2 - (1 << 19))
        fh.write(bytes(1 << 20))
    integrity.check_safetensors(f)
    with pytest.raises(rebuilt):
        models_mod._cached_smollm2()
    assert "fails its sha256" in capsys.readouterr().err


def test_the_cached_model_is_hashed_once_while_it_does_not_change(tmp_path, monkeypatch):
    out = _fake_smollm2_cache(tmp_path, monkeypatch)
    _no_rebuild(monkeypatch)
    reads = []

    class CountingHashlib:  # a file is hashed through sha256() fed in chunks; other hashes take their bytes
        def sha256(self, *data):
            if not data:
                reads.append(1)
            return hashlib.sha256(*data)

        def __getattr__(self, name):
            return getattr(hashlib, name)

    monkeypatch.setattr(integrity, "hashlib", CountingHashlib())
    for _ in range(3):
        assert models_mod._cached_smollm2() == out
    assert reads == []  # hashed when the cache was made, answered from the memo since
    os.utime(out / "model.safetensors")  # touched: hashed again (and found whole)
    assert models_mod._cached_smollm2() == out and len(reads) == 1


def test_a_cached_model_without_a_record_of_its_hash_is_rebuilt(tmp_path, monkeypatch, capsys):
    out = _fake_smollm2_cache(tmp_path, monkeypatch)
    rebuilt = _no_rebuild(monkeypatch)
    (out / models_mod._WEIGHTS_RECORD).unlink()
    with pytest.raises(rebuilt):
        models_mod._cached_smollm2()
    assert "no valid record of its sha256" in capsys.readouterr().err


def test_file_hashes_are_remembered_only_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity, "_RACY_NS", 0)
    f = tmp_path / "x.bin"
    f.write_bytes(np.arange(1000, dtype=np.int64).tobytes())
    digest = file_sha256(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "x.bin"]
    assert json.loads(integrity.memo_path().read_text())["files"][str(f.absolute())]["sha256"] == digest


@pytest.mark.slow
def test_the_real_smollm2_cache_is_hashed_once_and_a_zeroed_mib_in_it_is_caught(tmp_path, monkeypatch, capsys):
    import shutil

    real = models_mod._cached_smollm2()  # the user's cache: built, or checked against its record
    monkeypatch.setenv("LEVELSEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr(integrity, "_RACY_NS", 0)
    copy = shutil.copytree(real, tmp_path / real.name)  # a copy: the user's cache is never written to
    assert models_mod._cached_smollm2() == copy  # another inode: hashed in full, and whole
    hashed = []

    class CountingHashlib:
        def sha256(self, *data):
            hashed.extend([] if data else [1])
            return hashlib.sha256(*data)

        def __getattr__(self, name):
            return getattr(hashlib, name)

    monkeypatch.setattr(integrity, "hashlib", CountingHashlib())
    assert models_mod._cached_smollm2() == copy and hashed == []
    f = copy / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.seek(f.stat().st_size // 2)
        fh.write(bytes(1 << 20))
    with pytest.raises(_no_rebuild(monkeypatch)):
        models_mod._cached_smollm2()
    assert "fails its sha256" in capsys.readouterr().err and hashed == [1]

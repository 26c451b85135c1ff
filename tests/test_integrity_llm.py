"""Integrity on a tiny model: every cache is checked when it is read back, and a bad one is rebuilt (said in
one line) or refused (one line, exit 2), never used. Each case compares against an untouched run: no result
may change.

| case                                   | tests                                                              |
|----------------------------------------|--------------------------------------------------------------------|
| corrupt teacher (zeroed / truncated)   | test_a_corrupted_teacher_cache_is_rebuilt_and_changes_nothing      |
| edited heuristics                      | test_an_edited_heuristics_cache_is_rebuilt_and_changes_nothing     |
| corrupted database file                | test_a_corrupted_database_layer_file_is_refused_then_rebuilt       |
| edited database manifest               | test_an_edited_database_manifest_is_refused_then_rebuilt           |
| changed data file at the same path     | test_a_changed_data_file_*                                         |
| truncated safetensors (model)          | test_a_truncated_model_safetensors_*                               |
| existing file as --out                 | test_an_existing_file_as_out_is_reported_before_the_model_loads    |
| 0-byte journal in a compress run       | test_a_zero_byte_journal_in_a_compress_directory_is_one_line       |
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.codecs.drop.problem import DropProblem  # noqa: E402
from levelsearch.adapters.model.integrity import check_safetensors, weights_fingerprint  # noqa: E402
from levelsearch.adapters.model.models import load_model, save_model  # noqa: E402
from levelsearch.adapters.scoring.fitness import Teacher  # noqa: E402
from levelsearch.adapters.weights.database import VariantDatabase, build_database  # noqa: E402
from test_adapters_compress import SMALL  # noqa: E402
from test_adapters_drop import byte_tokenizer, tiny_llama  # noqa: E402
from test_database import SPARSE  # noqa: E402
from test_database import tiny_llama as db_llama  # noqa: E402

from levelsearch.cli import main  # noqa: E402

pytestmark = pytest.mark.llm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    save_model(tiny_llama(), byte_tokenizer(), path)
    return path


def _compress(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compress",
        "--model",
        str(model_dir),
        "--target",
        "0.5",
        "--out",
        str(out),
        "--no-export",
        "--generations",
        "2",
        *SMALL,
        *extra,
    ]


def _outcome(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    return {
        "dense": res["dense"],
        "methods": {
            n: {k: m[k] for k in ("heldout_ppl", "heldout_kl", "calibration_kl", "levels")}
            for n, m in res["methods"].items()
        },
    }


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """A clean run, and its results (which every damaged rerun must reproduce)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(_compress(model_dir, out)) == 0
    return out, _outcome(out)


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rebuild_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("levelsearch: ") and "rebuilding it" in ln]


@pytest.mark.parametrize("damage", ["zero-bytes", "truncate"])
def test_a_corrupted_teacher_cache_is_rebuilt_and_changes_nothing(reference, model_dir, tmp_path, capsys, damage):
    out = _copy_run(reference[0], tmp_path / "run")
    f = out / "cache" / "teacher-heldout.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "zero-bytes":
        start = len(data) // 2
        data[start : start + 2000] = bytes(2000)  # a damaged held-out teacher: 2,000 bytes zeroed
    else:
        data = data[: len(data) // 2]
    f.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(_compress(model_dir, out)) == 0
    lines = _rebuild_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "teacher-heldout.safetensors" in lines[0], lines
    assert _outcome(out) == reference[1]
    assert Teacher.load(f, None) is not None  # rebuilt, and it checks out


def test_an_edited_heuristics_cache_is_rebuilt_and_changes_nothing(reference, model_dir, tmp_path, capsys):
    out = _copy_run(reference[0], tmp_path / "run")
    (out / "journal.db").unlink()  # a fresh search: the start is chosen from the cached calibration KLs
    for p in out.glob("journal.db-*"):
        p.unlink()
    f = out / "cache" / "heuristics.json"
    data = json.loads(f.read_text())
    data["heuristics"]["random"]["calibration_kl"] = 0.0001  # a hand edit that would make random the start
    f.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(_compress(model_dir, out)) == 0
    lines = _rebuild_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "heuristics.json" in lines[0] and "checksum" in lines[0], lines
    got = _outcome(out)
    assert got == reference[1]
    assert got["methods"]["random"]["calibration_kl"] != 0.0001


def test_a_teacher_of_another_problem_is_not_used(tmp_path, capsys):
    t = Teacher(torch.zeros(2, 4, 3, dtype=torch.float16), torch.zeros(2, 4, 3, dtype=torch.int32), torch.zeros(2, 4))
    t.save(tmp_path / "t.safetensors", {"problem": "aaaa"})
    assert Teacher.load(tmp_path / "t.safetensors", {"problem": "aaaa"}) is not None
    assert Teacher.load(tmp_path / "t.safetensors", {"problem": "bbbb"}) is None
    assert "another model, data or settings" in capsys.readouterr().err


# ------------------------------------------------------------------ variant database
@pytest.fixture()
def db_setup(tmp_path):
    model = db_llama()
    tokens = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    db = build_database(tmp_path / "db", model, tokens, SPARSE, progress=False)
    weights = {u: db.weight(u, 1) for u in db.unit_names}
    return model, tokens, db, weights


def test_a_corrupted_database_layer_file_is_refused_then_rebuilt(db_setup, capsys):
    model, tokens, db, weights = db_setup
    f = db.root / "layer_001.safetensors"
    data = bytearray(f.read_bytes())
    data[-5000:-4000] = bytes(1000)
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):  # opened the way compress would: never used
        VariantDatabase(db.root)
    capsys.readouterr()
    again = build_database(db.root, model, tokens, SPARSE, progress=False)
    lines = _rebuild_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "layer_001.safetensors" in lines[0]
    assert all(torch.equal(again.weight(u, 1), weights[u]) for u in again.unit_names)
    VariantDatabase(db.root).verify()


def test_an_edited_database_manifest_is_refused_then_rebuilt(db_setup, capsys):
    model, tokens, db, weights = db_setup
    errors = db.errors()
    m = json.loads((db.root / "manifest.json").read_text())
    layer = m["layers"]["0"]
    unit = next(iter(layer["errors"]))
    layer["errors"][unit][1] = 0.0  # an edited error value: DP would trust it
    (db.root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="fails its checksum"):
        VariantDatabase(db.root)
    capsys.readouterr()
    again = build_database(db.root, model, tokens, SPARSE, progress=False)
    lines = _rebuild_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "manifest.json" in lines[0]
    np.testing.assert_array_equal(again.errors(), errors)
    assert all(torch.equal(again.weight(u, 1), weights[u]) for u in again.unit_names)


def test_a_manifest_without_checksum_is_not_used(db_setup):
    _, _, db, _ = db_setup
    m = json.loads((db.root / "manifest.json").read_text())
    del m["checksum"]
    (db.root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="no checksum"):
        VariantDatabase(db.root)


# ------------------------------------------------------------------ run identity: content, not paths
def _docs(seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    return "\n\n\n".join(" ".join(rng.choice(words, size=120)) for _ in range(12))


def test_a_changed_data_file_at_the_same_path_changes_the_problem_identity(tmp_path):
    data = tmp_path / "docs.txt"
    kw = {"seq_len": 32, "calibration_tokens": 128, "heldout_tokens": 64, "top_k": 8, "data": str(data)}
    loaded = (tiny_llama(), byte_tokenizer())
    data.write_text(_docs(0))
    a = DropProblem("tiny", target=0.5, loaded=loaded, **kw)
    b = DropProblem("tiny", target=0.5, loaded=loaded, **kw)
    data.write_text(_docs(1))
    c = DropProblem("tiny", target=0.5, loaded=loaded, **kw)
    assert a.identity_hash() == b.identity_hash() != c.identity_hash()
    assert a.describe()["content"]["weights"] == c.describe()["content"]["weights"]
    other = DropProblem("tiny", target=0.5, loaded=(tiny_llama(seed=1), byte_tokenizer()), **kw)
    assert other.describe()["content"]["weights"] != c.describe()["content"]["weights"]


def test_a_changed_data_file_at_the_same_path_is_refused_before_any_cache_is_used(model_dir, tmp_path, capsys):
    data = tmp_path / "docs.txt"
    data.write_text(_docs(0))
    out = tmp_path / "run"
    argv = _compress(model_dir, out, "--data", str(data))
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in (out / "cache").iterdir()}
    data.write_text(_docs(1))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another problem" in err[0] and "weights or data" in err[0], err
    assert {p.name: p.read_bytes() for p in (out / "cache").iterdir()} == before
    assert main(_compress(model_dir, tmp_path / "new", "--data", str(data))) == 0  # a new --out runs


# ------------------------------------------------------------------ one-line errors before the model loads
def test_a_truncated_model_safetensors_is_one_line_exit_2(model_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        check_safetensors(f)
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_model(str(bad))
    assert main(_compress(bad, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("levelsearch: error: ") and "model.safetensors" in err[0]
    f.write_bytes(b"")
    assert main(_compress(bad, tmp_path / "run")) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_an_existing_file_as_out_is_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import levelsearch.adapters.model.models as models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    (tmp_path / "taken").write_text("keep")
    for method in ("drop", "sparsity"):
        argv = ["compress", "--model", "whatever", "--method", method, "--out", str(tmp_path / "taken"), "--quiet"]
        if method == "sparsity":
            argv += ["--target", "0.5"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is an existing file" in err[0], err
    assert (tmp_path / "taken").read_text() == "keep"


def test_a_zero_byte_journal_in_a_compress_directory_is_one_line(reference, model_dir, tmp_path, capsys):
    out = _copy_run(reference[0], tmp_path / "run")
    (out / "journal.db").write_bytes(b"")
    for p in out.glob("journal.db-*"):
        p.unlink()
    capsys.readouterr()
    assert main(_compress(model_dir, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty (0 bytes)" in err[0], err
    assert (out / "journal.db").read_bytes() == b""


def test_weights_fingerprint_sees_a_changed_value_in_a_sampled_position():
    m = tiny_llama()
    fp = weights_fingerprint(m)
    assert fp == weights_fingerprint(tiny_llama())
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0  # the first value is always sampled
    assert weights_fingerprint(m) != fp


def test_a_compress_directory_in_use_is_refused_before_anything_is_written(model_dir, tmp_path, capsys):
    import fcntl
    import os

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # another compress holding it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(_compress(model_dir, out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another levelsearch process" in err[0], err
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    assert main(_compress(model_dir, out)) == 0


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--search-minutes", "nan", "search_minutes"),
        ("--search-minutes", "inf", "search_minutes"),
        ("--generations", "100000000000", "generations"),
        ("--calibration-tokens", "0", "calibration_tokens"),
    ],
)
@pytest.mark.parametrize("method", ["drop", "sparsity"])
def test_non_finite_or_absurd_compress_settings_are_one_line_before_the_model_loads(
    tmp_path, capsys, monkeypatch, method, option, value, words
):
    import levelsearch.adapters.model.models as models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(models, "load_model", no_load)
    argv = ["compress", "--model", "whatever", "--method", method, "--target", "0.5", "--out", str(tmp_path / "r")]
    assert main([*argv, option, value, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "r").exists()

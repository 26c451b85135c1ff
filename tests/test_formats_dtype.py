"""Half-precision exports: the check applies the stated bf16 / fp16 tolerance (``1e-2 · max(1, max |logit|)``,
not fp32's ``1e-4``), and a reload beyond it fails: the directory is renamed ``NAME.FAILED`` and ``levelsearch
compress`` exits 2."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from levelsearch.adapters.formats.drop import export_drop  # noqa: E402
from levelsearch.adapters.formats.verify import check_export, reference_logits  # noqa: E402
from levelsearch.adapters.model.models import save_model  # noqa: E402
from test_adapters_compress import SMALL  # noqa: E402
from test_adapters_drop import byte_tokenizer, tiny_llama  # noqa: E402
from test_formats_drop import levels_of, tiny_problem  # noqa: E402

from levelsearch.cli import main  # noqa: E402

pytestmark = pytest.mark.llm


def scale_final_norm(path, factor: float) -> None:
    """Multiply the final norm's weight in the exported file by ``factor`` (every logit scales with it)."""
    from safetensors.torch import load_file, save_file

    f = path / "model.safetensors"
    sd = load_file(str(f))
    sd["model.norm.weight"] = sd["model.norm.weight"] * factor
    save_file(sd, str(f), metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("dtype", "factor"),
    [
        (torch.bfloat16, 1.0),  # the export as written: the reload gives the searched logits
        (torch.float16, 1 - 2**-8),  # logits 0.4% off (0.027 at max |logit| 6.4): beyond 1e-4, within 1e-2 · 6.4
    ],
)
def test_a_half_precision_export_is_checked_with_the_half_precision_tolerance(dtype, factor, tmp_path):
    prob = tiny_problem("llama", dtype)
    lv = levels_of([0, 1], [0, 2])
    path = export_drop(prob, lv, tmp_path / "model")
    scale_final_norm(path, factor)
    res = check_export(prob, lv, path)
    scale = float(reference_logits(prob, lv, prob.heldout.tokens[:2]).abs().max())
    assert res["tolerance"] == pytest.approx(1e-2 * max(1.0, scale)) and res["tolerance"] > 1e-4
    assert res["max_abs_logit_diff"] <= res["tolerance"]
    assert (res["max_abs_logit_diff"] > 1e-4) == (factor != 1.0)  # fp32's tolerance would refuse the tampered one


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_export_beyond_its_tolerance_fails_the_run(dtype, tmp_path, monkeypatch, capsys):
    from levelsearch.adapters.formats import drop

    real = drop.write_drop

    def bad_writer(*args, **kwargs):  # a writer that gets the final norm 12.5% wrong: logits 12.5% off
        path = real(*args, **kwargs)
        scale_final_norm(path, 0.875)
        return path

    monkeypatch.setattr(drop, "write_drop", bad_writer)
    model = tmp_path / "llama"
    save_model(tiny_llama(n_layers=2), byte_tokenizer(), model)
    out = tmp_path / "run"
    args = ["compress", "--model", str(model), "--method", "drop", "--target", "0.5", "--out", str(out)]
    assert main([*args, "--dtype", dtype, "--generations", "1", *SMALL]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: transformers' own loading bar
    assert last.startswith("levelsearch: error: export check failed") and "is not the searched model" in last
    assert not (out / "model").exists() and "tolerance" in (out / "model.FAILED" / "FAILED").read_text()
    failed = json.loads((out / "results.json").read_text())["export"]["failed"]
    tol = float(failed.split("(tolerance ")[1].split(")")[0])
    assert tol >= 1e-2  # the half-precision tolerance, 1e-2 · max(1, max |logit|), was the one applied

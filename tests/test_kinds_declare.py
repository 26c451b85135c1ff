"""A compression kind declares its own settings, CLI options and export formats: the shared CLI, settings and
formats modules name no kind, and a kind registered through the registry brings its options with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("torch")  # the built-in codecs are loaded to list their settings

from levelsearch.adapters import formats  # noqa: E402
from levelsearch.adapters.cli.compress import check_method_settings, run_compress  # noqa: E402
from levelsearch.adapters.codecs import CODECS, Codec, Setting, register_codec  # noqa: E402
from levelsearch.adapters.formats import check_format, export, formats_for  # noqa: E402
from levelsearch.adapters.run.settings import (  # noqa: E402
    CompressSettings,
    compress_schema,
    declared_settings,
    with_default_target,
)

from levelsearch.cli import main  # noqa: E402
from levelsearch.schema import Field, validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the shared modules that must reach every kind through its declarations
SHARED = (
    "adapters/cli/compress.py",
    "adapters/cli/settings.py",
    "adapters/cli/export.py",
    "adapters/formats/__init__.py",
)
BUILT_IN = ("drop", "sparsity", "quant", "joint", "gguf")


class ToyCodec(Codec):
    """A kind that exists only here: a setting of its own, a strict one, a format of its own."""

    name = "toy"
    target_help = "toy units kept (0.5)"
    compress_settings: ClassVar[tuple[Setting, ...]] = (
        Setting("toy_rank", 4, Field("int", min=1, max=64), "rank of each toy unit"),
        Setting("toy_budget", None, Field("str", nullable=True), "a toy budget", strict=True),
    )
    formats: ClassVar[tuple[str, ...]] = ("toy-pack", "dense")

    def make_problem(self, settings: dict[str, Any]) -> Any:
        raise NotImplementedError

    def run_baselines(self, problem: Any, settings: dict[str, Any], cache: Any, tag: dict[str, str]) -> dict[str, Any]:
        return {}

    def results_fields(self, problem: Any, settings: dict[str, Any]) -> dict[str, Any]:
        return {}

    def write_format(self, format: str, problem: Any, levels: np.ndarray, out: Any, info: Any = None) -> Path:
        path = Path(out)
        path.mkdir(parents=True)
        (path / "toy.txt").write_text(f"{format} {[int(x) for x in levels]} {info['format']}")
        return path


@pytest.fixture
def toy():
    register_codec("toy", ToyCodec)
    yield ToyCodec
    CODECS.unregister("toy")


def test_the_shared_cli_settings_and_formats_modules_name_no_kind():
    for rel in SHARED:
        text = (ROOT / rel).read_text()
        named = sorted({k for k in BUILT_IN if re.search(rf"(?<![\w-]){k}(?![\w])", text, re.IGNORECASE)})
        assert not named, f"{rel} names the kinds {named}: a kind declares its own settings and formats"


def test_the_shared_modules_name_no_kind_specific_option():
    own = {s.name for k in BUILT_IN for s in CODECS.get(k).compress_settings}
    assert {"tol", "target_bytes", "whole_blocks", "estimates"} <= own  # the check checks something
    for rel in SHARED:
        text = (ROOT / rel).read_text()
        for key in sorted(own):  # as code or docs name an option: "key", 'key', ``key``, --key-with-dashes
            for form in (f'"{key}"', f"'{key}'", f"``{key}``", "--" + key.replace("_", "-")):
                assert not re.search(rf"{re.escape(form)}(?![\w-])", text), f"{rel} names {form}"


def test_a_registered_kind_has_its_option_target_and_formats_in_compress_help(toy, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no hyphenated name broken by the wrap
    with pytest.raises(SystemExit) as stop:
        main(["compress", "--help"])
    assert stop.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--toy-rank TOY_RANK toy: rank of each toy unit" in shown
    assert "toy: toy units kept (0.5)" in shown and "toy: toy-pack (default), dense" in shown
    assert "toy: a toy budget; other methods refuse it" in shown


def test_a_registered_kind_has_its_settings_in_the_schema_and_the_typed_settings(toy):
    assert compress_schema().fields["toy_rank"] == Field("int", min=1, max=64)
    s = CompressSettings(method="toy", toy_rank=8)
    assert s.toy_rank == 8 and s.to_dict()["toy_rank"] == 8 and CompressSettings().toy_rank == 4
    assert "toy_rank" in list(CompressSettings.keys()) and CompressSettings.from_mapping({"toy-rank": 2}).toy_rank == 2
    with pytest.raises(ValueError, match="toy_rank"):
        validate(CompressSettings(toy_rank=0).to_dict(), compress_schema(), where="settings")


def test_a_kind_is_parsed_from_the_cli_with_its_option(toy):
    import argparse

    from levelsearch.adapters.cli.compress import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compress", "--method", "toy", "--toy-rank", "16"])
    assert args.toy_rank == 16 and isinstance(args.toy_rank, int)


def test_a_kinds_settings_are_gone_once_it_is_unregistered(toy):
    assert "toy_rank" in declared_settings()
    CODECS.unregister("toy")
    assert "toy_rank" not in declared_settings()
    with pytest.raises(ValueError, match="unknown key 'toy_rank'"):
        CompressSettings(toy_rank=3)
    register_codec("toy", ToyCodec)


def test_a_strict_setting_of_one_kind_is_refused_by_the_others(toy, tmp_path):
    with pytest.raises(
        ValueError, match=r"--method drop does not take --toy-budget \(it is a setting of --method toy\)"
    ):
        run_compress({"method": "drop", "toy_budget": "x", "out": str(tmp_path / "run")})
    check_method_settings("toy", {"toy_budget": "x"})  # its own kind takes it
    assert not (tmp_path / "run").exists()


def test_a_byte_budget_and_a_target_together_stay_refused():
    with pytest.raises(ValueError, match="give one budget: --target .* not both"):
        check_method_settings("gguf", {"target": 4.0, "target_bytes": 10**6}, {"target": 4.0, "target_bytes": 10**6})
    check_method_settings("gguf", {"target": 0.25, "target_bytes": 10**6}, {"target_bytes": 10**6})


def test_two_kinds_declaring_one_key_differently_are_refused(toy):
    class Clash(ToyCodec):
        name = "toy2"
        compress_settings: ClassVar[tuple[Setting, ...]] = (Setting("toy_rank", 5, Field("int"), "another rank"),)

    register_codec("toy2", Clash)
    try:
        with pytest.raises(ValueError, match="codec 'toy2' declares the setting 'toy_rank' differently"):
            declared_settings()
    finally:
        CODECS.unregister("toy2")


def test_a_kinds_formats_are_its_declared_ones_written_by_its_own_writer(toy, tmp_path):
    assert formats_for("toy") == ("toy-pack", "dense") and formats.FORMATS["toy"] == ("toy-pack", "dense")
    assert formats.FORMATS["drop"] == ("drop", "zeroed", "drop-lean") and check_format("toy", None) == "toy-pack"
    with pytest.raises(ValueError, match="--format gptq does not fit --method toy; use one of toy-pack, dense"):
        check_format("toy", "gptq")
    path = export(None, np.array([1, 0]), tmp_path / "m", method="toy")
    assert (path / "toy.txt").read_text() == "toy-pack [1, 0] toy-pack"


@pytest.mark.parametrize(
    ("kind", "want"), [("drop", 0.25), ("sparsity", 0.5), ("quant", 3.0), ("joint", 3.0), ("gguf", 4.6)]
)
def test_a_run_without_a_target_takes_its_kinds_own_default(kind, want):
    cfg = CompressSettings(method=kind).to_dict()
    assert cfg["target"] is None
    assert with_default_target(CODECS.get(kind)(), cfg)["target"] == want
    assert with_default_target(CODECS.get(kind)(), {**cfg, "target": 2.5})["target"] == 2.5  # given wins


def test_a_byte_budget_stands_in_for_the_default_target():
    cfg = {**CompressSettings(method="gguf").to_dict(), "target_bytes": 10**6}
    assert with_default_target(CODECS.get("gguf")(), cfg)["target"] is None


def test_a_kind_without_a_default_target_asks_for_one(toy, tmp_path):
    with pytest.raises(ValueError, match=r"--method toy needs a --target \(toy units kept \(0.5\)\)"):
        run_compress({"method": "toy", "out": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()

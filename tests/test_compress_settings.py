"""``levelsearch compress`` settings: one typed dataclass behind the CLI, the YAML config and Python."""

from __future__ import annotations

import argparse

import pytest
from levelsearch.adapters.cli.compress import DEFAULTS, add_parser, run_compress
from levelsearch.adapters.cli.settings import CompressSettings


def test_the_defaults_are_the_dataclass_defaults():
    assert CompressSettings().to_dict() == DEFAULTS
    assert list(DEFAULTS) == CompressSettings.keys()


def test_a_mapping_with_dashed_keys_gives_typed_settings():
    s = CompressSettings.from_mapping({"method": "quant", "search-minutes": 2.5, "calibration_tokens": 512})
    assert (s.method, s.search_minutes, s.calibration_tokens, s.seq_len) == ("quant", 2.5, 512, 256)


def test_an_unknown_key_is_one_sentence_naming_its_source():
    with pytest.raises(ValueError, match="config run.yaml has unknown key 'generation'; keys are: model"):
        CompressSettings.from_mapping({"generation": 3}, source="config run.yaml")
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        run_compress({"bogus": 1})


def test_every_setting_is_a_cli_option():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["compress"]  # type: ignore[union-attr]
    sub.format_help()  # the settings' options are added when the parser is used (the codecs load then)
    dests = {a.dest for a in sub._actions}
    assert set(CompressSettings.keys()) - {"export", "progress"} <= dests
    assert {"no_export", "quiet"} <= dests  # export and progress are switched off by these

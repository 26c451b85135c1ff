"""compress's stopping rule as settings: ``patience`` (0: off) and ``min_improvement``, from YAML or the CLI."""

from __future__ import annotations

import pytest
from levelsearch.adapters.run.pipeline import COMPRESS_MIN_IMPROVEMENT, COMPRESS_PATIENCE, stopping_rule
from levelsearch.adapters.run.settings import CompressSettings


def test_compress_runs_with_its_documented_stopping_rule_by_default() -> None:
    cfg = CompressSettings.from_mapping({"method": "gguf"}).to_dict()
    assert stopping_rule(cfg) == {"patience": COMPRESS_PATIENCE, "min_improvement": COMPRESS_MIN_IMPROVEMENT}


def test_patience_zero_turns_the_stopping_rule_off() -> None:
    cfg = CompressSettings.from_mapping({"method": "gguf", "patience": 0}).to_dict()
    assert stopping_rule(cfg) == {}


def test_the_stopping_rule_takes_its_values_from_the_settings() -> None:
    cfg = CompressSettings.from_mapping({"method": "drop", "patience": 5, "min-improvement": 0.01}).to_dict()
    assert stopping_rule(cfg) == {"patience": 5, "min_improvement": 0.01}


@pytest.mark.parametrize("bad", [{"patience": -1}, {"min_improvement": 1.5}, {"patience": "soon"}])
def test_a_bad_stopping_rule_is_refused_naming_its_key(bad) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        CompressSettings.from_mapping({"method": "drop", **bad}).check()

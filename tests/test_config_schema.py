"""The declared schema of run and bench configs, and the bounded YAML loader: one line naming the key, or a value."""

from __future__ import annotations

import contextlib
import copy
import math
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from levelsearch.config import (
    BENCH_SCHEMA,
    MAX_YAML_ALIASES,
    RUN_SCHEMA,
    ConfigError,
    Field,
    Schema,
    check_name,
    parse_config,
    safe_load,
    validate,
)

GOOD_RUN = {
    "problem": {"kind": "linear", "n_units": 8},
    "optimizer": {"name": "evopress", "offspring": 4},
    "budget": {"max_evaluations": 50},
}

# ------------------------------------------------------------------ the declarations


def test_defaults_are_filled_and_the_input_is_not_changed():
    given_ = copy.deepcopy(GOOD_RUN)
    cfg = validate(given_, RUN_SCHEMA)
    assert given_ == GOOD_RUN
    assert cfg["seed"] == 0 and cfg["evaluator"] == {"kind": "serial", "retries": 0}
    assert cfg["max_consecutive_failures"] == 100


def test_a_string_stands_for_its_shorthand_mapping():
    cfg = validate({"problem": "linear", "optimizer": "random", "budget": {"max_cost": 5}}, RUN_SCHEMA)
    assert cfg["problem"] == {"kind": "linear"} and cfg["optimizer"] == {"name": "random"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": -1}, "config: seed: must be an integer in 0..9223372036854775807, got -1"),
        ({"seed": True}, "config: seed: must be an integer"),
        ({"seed": 1.0}, "config: seed: must be an integer"),
        ({"budget": {"max_evaluations": 0}}, "config: budget.max_evaluations: must be an integer in 1..1000000000"),
        ({"budget": {"max_cost": 0}}, "config: budget.max_cost: must be a finite number > 0 and <= 1e+15, got 0"),
        ({"budget": {"max_cost": math.inf}}, "config: budget.max_cost: must be a finite number"),
        (
            {"optimizer": {"name": "evopress", "offspring": 10**9}},
            "optimizer.offspring: must be an integer in 1..100000",
        ),
        ({"optimizer": {"name": "evopress", "steps": [[1, math.nan]]}}, "optimizer.steps[0][1]: must be a finite"),
        ({"optimizer": {"offspring": 3}}, "config: optimizer.name: missing"),
        ({"evaluator": {"kind": "serial", "address": "auto"}}, "key 'address' is for kind ray"),
        ({"evaluator": {"kind": "ray", "resources_per_worker": {"GPU": -1}}}, "resources_per_worker.GPU"),
        ({"name": ["a"]}, "config: name: must be a string, got a list"),
        ({"problem": {"n_units": 3}}, "config: problem.kind: missing (e.g. kind: linear)"),
        ({"problem": {"kind": "linear", 3: 4}}, "config: problem[3]: keys must be strings"),
        ({"extra key": 1}, "config: ['extra key']: unknown key (allowed: budget, evaluator,"),
    ],
)
def test_each_bad_setting_is_one_line_naming_its_key(change, message):
    with pytest.raises(ConfigError) as info:
        validate({**GOOD_RUN, **change}, RUN_SCHEMA)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_error_is_a_value_error_so_the_cli_prints_one_line():
    assert issubclass(ConfigError, ValueError)


def test_list_fields_bound_their_length_and_refuse_repeats():
    f = Field("list", items=Field("int"), min_items=1, max_items=2, unique=True)
    assert validate([1, 2], f) == [1, 2]
    for bad, words in (([], "at least 1 and at most 2"), ([1, 2, 3], "got 3"), ([4, 4], "[1]: repeats 4")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            validate(bad, f, where="x")


def test_choices_nullable_and_one_of():
    schema = Schema(
        {"mode": Field("str", choices=("a", "b")), "cap": Field("number", nullable=True), "x": Field("int")},
        one_of=("mode", "x"),
    )
    assert validate({"mode": "a", "cap": None}, schema) == {"mode": "a", "cap": None}
    with pytest.raises(ConfigError, match="mode: must be one of a, b; got 'c'"):
        validate({"mode": "c"}, schema)
    with pytest.raises(ConfigError, match="config: needs mode and/or x"):
        validate({"cap": 1.0}, schema)


@pytest.mark.parametrize("bad", ["../x", "/abs", ".", "..", "a/b", "a\\b", "", "x" * 129, "a b", "é", 3, None])
def test_names_that_could_leave_a_directory_are_refused(bad):
    with pytest.raises(ConfigError, match="plain name"):
        check_name(bad, "label")


@pytest.mark.parametrize("good", ["evopress", "dp-ls", "v1.2", "a_b-c.d", "..x", "x" * 128])
def test_plain_names_pass(good):
    assert check_name(good) == good


def test_a_bench_config_validates_with_its_defaults():
    cfg = validate({"optimizers": ["evopress"], "problems": ["linear"], "budget": {"max_evaluations": 9}}, BENCH_SCHEMA)
    assert cfg["seeds"] == [0, 1, 2] and cfg["checkpoints"] == [0.1, 0.25, 0.5, 1.0]
    assert cfg["optimizers"] == [{"name": "evopress"}] and cfg["problems"] == [{"kind": "linear"}]


# ------------------------------------------------------------------ the YAML loader


def test_duplicate_keys_are_refused_at_any_depth_naming_key_and_line():
    with pytest.raises(ValueError, match="run.yaml: duplicate key 'n_units' at line 3"):
        safe_load("problem:\n  n_units: 4\n  n_units: 8\n", "run.yaml")
    with pytest.raises(ValueError, match="duplicate key 1 at line 1"):
        safe_load("{1: a, 1: b}")


def test_merge_keys_may_be_overridden_as_yaml_says():
    assert safe_load("base: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}\n")["d"] == {"x": 3, "y": 2}


def test_a_few_aliases_are_fine_and_too_many_are_refused():
    assert safe_load("a: &a 1\nb: [*a, *a]\n") == {"a": 1, "b": [1, 1]}
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]\n"
    with pytest.raises(ValueError, match=f"more than {MAX_YAML_ALIASES} aliases"):
        safe_load(text)


def test_an_alias_bomb_fails_at_once():
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i + 1}: &a{i + 1} [{', '.join([f'*a{i}'] * 10)}]\n" for i in range(9)
    )
    with pytest.raises(ValueError, match="aliases expand to more than 100000 values"):
        safe_load(text)


def test_deep_nesting_and_huge_text_are_one_line_errors():
    with pytest.raises(ValueError, match="nested too deeply"):
        safe_load("[" * 50_000)
    with pytest.raises(ValueError, match="larger than 1048576 bytes"):
        safe_load("a: 1\n" + "#" * (1 << 20))


def test_numbers_with_exponents_are_numbers():
    assert safe_load("a: 1e6\nb: 2.5e-3\nc: .nan\n")["a"] == 1e6


# ------------------------------------------------------------------ properties

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_key = st.one_of(st.sampled_from(sorted(RUN_SCHEMA.fields) + ["kind", "name", "offspring"]), st.text(max_size=8))
_value = st.recursive(
    _leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_key, kids, max_size=4), max_leaves=12
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_key, _value, max_size=8))
def test_any_mapping_validates_or_is_one_value_error_line(data):
    try:
        cfg = parse_config(data, "cfg.yaml")
    except ValueError as exc:
        text = str(exc)
        assert text.startswith("cfg.yaml: ") and "\n" not in text
        return
    assert cfg.max_evaluations is not None or cfg.max_cost is not None


_paths = [
    ("seed",),
    ("budget", "max_evaluations"),
    ("optimizer", "offspring"),
    ("problem", "kind"),
    ("optimizer", "name"),
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_paths), _value)
def test_a_changed_setting_is_accepted_or_named_in_the_error(path, value):
    data = copy.deepcopy(GOOD_RUN)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        validate(data, RUN_SCHEMA, where="cfg")
    except ConfigError as exc:
        assert f"cfg: {'.'.join(path)}" in str(exc), str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab:&*[]{}, -\n<1.e", max_size=80))
def test_any_text_loads_or_is_a_yaml_or_value_error(text):
    with contextlib.suppress(yaml.YAMLError, ValueError):  # anything else (or a hang) fails the test
        safe_load(text)


_bench_key = st.one_of(st.sampled_from(sorted(BENCH_SCHEMA.fields) + ["kind", "name", "label", "options"]), _key)
_bench_value = st.recursive(
    _leaf | st.sampled_from(["linear", "random", "evopress", "../x"]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_bench_key, kids, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_bench_key, _bench_value, max_size=8))
def test_any_bench_mapping_validates_or_is_one_value_error_line(data):
    from levelsearch.bench import parse_bench_config

    try:
        cfg = parse_bench_config(data, "bench.yaml")
    except ValueError as exc:
        assert str(exc).startswith("bench.yaml: ") and "\n" not in str(exc), str(exc)
        return
    for item in cfg["optimizers"] + cfg["problems"]:
        assert check_name(item["label"]) == item["label"]


def test_the_python_api_bounds_the_same_common_options():
    import numpy as np

    from levelsearch import make_problem, minimize

    problem = make_problem({"kind": "linear", "n_units": 8})
    with pytest.raises(ValueError, match="optimizer 'evopress' options: offspring: must be an integer in 1..100000"):
        minimize(problem, optimizer="evopress", options={"offspring": 10**9}, max_evaluations=10)
    res = minimize(problem, optimizer="evopress", options={"offspring": np.int64(4)}, max_evaluations=10)
    assert res.n_evaluations == 10

"""One Registry for optimizers, problems, commands and codecs: names taken once, targets imported on use."""

from __future__ import annotations

from importlib import metadata

import pytest

from levelsearch.registry import Registry


def test_a_string_target_is_imported_on_first_use_and_kept():
    reg: Registry[object] = Registry("widget", "levelsearch.no-such-group")
    reg.register("json-dumps", "json:dumps")
    import json

    assert reg.get("json-dumps") is json.dumps
    assert reg._entries["json-dumps"] is json.dumps


def test_registering_a_taken_name_with_another_target_is_refused_unless_replace():
    reg: Registry[object] = Registry("widget", "levelsearch.no-such-group")
    reg.register("a", "json:dumps")
    reg.register("a", "json:dumps")  # the same target again is harmless
    with pytest.raises(ValueError, match="a widget named 'a' is already registered"):
        reg.register("a", "json:loads")
    reg.register("a", "json:loads", replace=True)
    import json

    assert reg.get("a") is json.loads


def test_an_unknown_name_lists_the_known_ones():
    reg: Registry[object] = Registry("widget", "levelsearch.no-such-group", unknown="no widget {name!r}; have: {known}")
    reg.register("b", "json:dumps")
    reg.register("a", "json:loads")
    with pytest.raises(ValueError, match=r"no widget 'c'; have: a, b"):
        reg.get("c")


def test_a_missing_module_is_one_line_naming_the_extra():
    reg: Registry[object] = Registry("widget", "levelsearch.no-such-group", extra="llm")
    reg.register("x", "no_such_module_levelsearch:thing")
    with pytest.raises(ValueError, match=r"widget 'x' needs a package .*levelsearch\[llm\]"):
        reg.get("x")
    with pytest.raises(ImportError):
        reg.load("x")


def test_a_check_refuses_a_target_of_the_wrong_kind():
    def check(name: str, target: object) -> None:
        if not isinstance(target, type):
            raise ValueError(f"{name} is not a class")

    reg: Registry[object] = Registry("widget", "levelsearch.no-such-group", check=check)
    reg.register("f", "json:dumps")
    with pytest.raises(ValueError, match="f is not a class"):
        reg.get("f")


def test_an_entry_point_colliding_with_a_registered_name_is_an_error():
    group = "levelsearch.optimizers"
    eps = list(metadata.entry_points(group=group))
    if not eps:
        pytest.skip("no installed entry point in the group")
    reg: Registry[object] = Registry("optimizer", group)
    reg.register(eps[0].name, "json:dumps")
    with pytest.raises(ValueError, match="collides with the registered optimizer"):
        reg.names()


def test_optimizers_problems_commands_and_codecs_share_the_one_registry_class():
    from levelsearch.cli import COMMANDS
    from levelsearch.optimizer import OPTIMIZERS
    from levelsearch.problem import PROBLEMS

    assert all(isinstance(r, Registry) for r in (OPTIMIZERS, PROBLEMS, COMMANDS))
    assert {"evopress", "evopress-ref"} <= set(OPTIMIZERS.names())
    assert {"linear", "llm-drop"} <= set(PROBLEMS.names())
    assert {"bench", "report", "compress"} <= set(COMMANDS.names())
    pytest.importorskip("torch")
    from levelsearch.adapters.codecs.base import CODECS

    assert isinstance(CODECS, Registry) and {"drop", "sparsity", "quant", "joint"} <= set(CODECS.names())


@pytest.mark.parametrize("name", ["../x", "/abs/path", "a/b", "..", "", "two words"])
def test_a_name_that_could_leave_a_directory_is_refused(name):
    reg: Registry[object] = Registry("widget", "levelsearch.no-such-group")
    with pytest.raises(ValueError, match="a widget name must be a plain name"):
        reg.register(name, "json:dumps")
    assert reg.names() == []


def test_an_entry_point_with_a_name_that_is_not_plain_is_an_error(monkeypatch):
    bad = metadata.EntryPoint(name="../../x", value="json:dumps", group="levelsearch.test-group")

    def entry_points(group: str) -> list[metadata.EntryPoint]:
        return [bad] if group == "levelsearch.test-group" else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    reg: Registry[object] = Registry("widget", "levelsearch.test-group")
    with pytest.raises(ValueError, match=r"entry point 'json:dumps' \(levelsearch.test-group\): a widget name must be"):
        reg.names()

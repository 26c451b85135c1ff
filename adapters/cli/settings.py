"""The ``compress`` settings as CLI options: one ``--key-with-dashes`` per declared setting.

The settings themselves (shared and each kind's, their schema and :class:`CompressSettings`) are declared
in :mod:`levelsearch.adapters.run.settings`; this module turns the declarations into ``argparse`` options
(:func:`add_setting_options`) and the help that lists what each registered codec says of them.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..codecs.base import Setting
from ..codecs.registry import CODECS, available_codecs
from ..run.settings import CompressSettings, compress_schema, declared_settings, takers

__all__ = [
    "COMPRESS_SCHEMA",  # noqa: F822 (built on use by __getattr__)
    "CompressSettings",
    "add_setting_options",
    "format_help",
    "method_help",
]


def comma_list(text: str) -> list[str]:
    """``"a,b,,c"`` → ``["a", "b", "c"]`` (a CLI list option)."""
    return [x for x in text.split(",") if x]


#: the ``argparse`` type of a setting's schema kind (others are taken as given, a string)
_TYPES: dict[str, Any] = {"int": int, "number": float, "list": comma_list}


def _each_codec(what: str) -> list[tuple[str, Any]]:
    """``(codec name, its attribute what)`` of every registered codec that loads."""
    out = []
    for name in available_codecs():
        try:
            out.append((name, getattr(CODECS.get(name), what)))
        except (ImportError, ValueError):
            continue
    return out


def method_help() -> str:
    """``--method``'s help: the registered codecs, the default first."""
    default = CompressSettings().method
    others = [n for n in available_codecs() if n != default]
    return f"a registered codec: {default} (default), {', '.join(others)}"


def format_help() -> str:
    """``--format``'s help: each codec's formats, its default first."""
    each = _each_codec("formats")
    return "; ".join(f"{name}: {fits[0]} (default)" + "".join(f", {f}" for f in fits[1:]) for name, fits in each)


def _help(s: Setting) -> str:
    """A setting's help; a kind's is prefixed with the codecs that take it."""
    if s.name == "target":
        return "; ".join(f"{name}: {text}" for name, text in _each_codec("target_help")) + f" ({s.help})"
    if s.name == "method":
        return method_help()
    if s.name == "format":
        return f"{s.help}: {format_help()}"
    who = takers(s.name)
    if not who:
        return s.help
    return f"{'/'.join(who)}: {s.help}" + ("; other methods refuse it" if s.strict else "")


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """An option for every declared setting (:func:`~levelsearch.adapters.run.settings.declared_settings`) not on
    ``parser`` yet: ``--key-with-dashes``, typed by its schema kind, ``None`` when not given."""
    have = {a.dest for a in parser._actions}
    for s in declared_settings().values():
        if not s.option or s.name in have:
            continue
        flag = "--" + s.name.replace("_", "-")
        if s.field.kind == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=_help(s))
            continue
        kwargs: dict[str, Any] = {"help": _help(s), **(s.cli or {})}
        if s.field.kind in _TYPES:
            kwargs.setdefault("type", _TYPES[s.field.kind])
        parser.add_argument(flag, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "COMPRESS_SCHEMA":  # built on use: a codec registered later adds its settings
        return compress_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

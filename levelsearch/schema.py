"""A small declarative schema for settings read from YAML: run, bench and compress configs.

A :class:`Schema` lists the keys of a mapping, each a :class:`Field` with a type, a range, choices,
whether it is required, and a default; :func:`validate` checks a value against it and returns a copy
with the defaults filled in, or raises :class:`ConfigError` (a ``ValueError``) with one line that
names the key: ``config: optimizers[1].options.offspring: must be an integer in 1..100000, got 1e+09``.

Why our own and not pydantic or msgspec: the settings are plain YAML mappings of numbers, strings,
lists and a few nested mappings; what users need from the check is the exact path of the bad key in
their file and one sentence, never a multi-line report. Forty lines of declarations and one
recursive function do that without adding a compiled dependency to the core (``import levelsearch``
stays numpy/scipy only), and the same declarations serve the CLI, the bench and the adapters.

Rules every field follows: numbers are finite (NaN and infinities are refused everywhere, also inside
free-form values), ``True``/``False`` are not integers, unknown keys are refused unless the schema
declares what its extra keys hold, and a :data:`NAME` field holds a plain name that is safe as one
part of a file path.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError", "Field", "Schema", "validate", "check_name", "NAME_PATTERN"]

#: what a name that becomes part of a file path may hold
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")

_KINDS = ("any", "int", "number", "str", "name", "bool", "mapping", "list")


class ConfigError(ValueError):
    """A setting that does not fit its schema; the message is one line naming the key."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Field:
    """One key of a :class:`Schema` (or the items of a list, or the extra keys of an open mapping).

    Args:
        kind: ``"int"``, ``"number"`` (int or float), ``"str"``, ``"name"`` (a plain name, see
            :func:`check_name`), ``"bool"``, ``"mapping"``, ``"list"`` or ``"any"`` (any YAML value
            with finite numbers).
        required: the key must be given.
        default: the value when the key is absent (validated like a given value).
        min, max: inclusive bounds of a number, or of a string's length; ``exclusive_min`` makes the
            lower bound strict (``max_cost > 0``).
        choices: the allowed values.
        nullable: ``null`` is allowed (and kept).
        schema: the keys of a ``"mapping"``.
        items: the field of every item of a ``"list"``; ``min_items``/``max_items`` bound its length and
            ``unique`` refuses repeated items.
        shorthand: a string given instead of a mapping stands for ``{shorthand: string}``
            (``optimizer: evopress`` is ``optimizer: {name: evopress}``).
        example: a short example said in the error when the key is missing or malformed.
    """

    kind: str = "any"
    required: bool = False
    default: Any = MISSING
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    schema: Schema | None = None
    items: Field | None = None
    min_items: int = 0
    max_items: int | None = None
    unique: bool = False
    shorthand: str | None = None
    example: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise TypeError(f"Field kind must be one of {_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Schema:
    """The keys of a mapping.

    Args:
        fields: the declared keys.
        extra: the field of any other key (e.g. a problem's own parameters); ``None`` refuses other keys.
        one_of: at least one of these keys must be given.
        check: a rule across keys, called with the validated mapping; returns an error sentence or ``None``.
    """

    fields: Mapping[str, Field] = field(default_factory=dict)
    extra: Field | None = None
    one_of: tuple[str, ...] = ()
    check: Callable[[dict[str, Any]], str | None] | None = None


def check_name(value: Any, what: str = "name") -> str:
    """``value`` if it is a plain name that is safe as one file-name part, else a ``ConfigError``.

    A plain name is 1 to 128 of ``A-Z a-z 0-9 . _ -``, and not ``.`` or ``..``: no separators, no
    absolute paths, nothing that leaves the directory it is joined to.
    """
    if not _is_name(value):
        raise ConfigError(f"{what} {_NAME_RULE}, got {_show(value)}")
    return value


_NAME_RULE = "must be a plain name (letters, digits, '.', '_', '-'; not '.' or '..'; at most 128 characters)"


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None and value not in (".", "..")


def validate(value: Any, schema: Schema | Field, where: str = "config") -> Any:
    """``value`` checked against ``schema``, with defaults filled in (a new object; ``value`` is not changed).

    Raises:
        ConfigError: one line, ``"{where}: {path}: {what is wrong}"``.
    """
    top = schema if isinstance(schema, Field) else Field("mapping", schema=schema)
    try:
        return _check(value, top, "")
    except _Bad as bad:
        path = f"{bad.path}: " if bad.path else ""
        raise ConfigError(f"{where}: {path}{bad.message}") from None


class _Bad(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


def _show(x: Any) -> str:
    """A value as it would read in an error: short, on one line."""
    if isinstance(x, float):
        text = f"{x:g}"
    elif isinstance(x, Mapping):
        text = "a mapping"
    elif isinstance(x, (list, tuple)):
        text = "a list"
    else:
        text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(path: str, key: Any) -> str:
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_show(key)}]"


def _range(f: Field, what: str) -> str:
    lo, hi = f.min, f.max
    if lo is not None and hi is not None and not f.exclusive_min:
        return f"{what} in {_num(lo)}..{_num(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if f.exclusive_min else '>='} {_num(lo)}")
    if hi is not None:
        parts.append(f"<= {_num(hi)}")
    return f"{what} {' and '.join(parts)}" if parts else what


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _in_range(x: Any, f: Field) -> bool:
    if f.min is not None and (x <= f.min if f.exclusive_min else x < f.min):
        return False
    return f.max is None or x <= f.max


def _check(x: Any, f: Field, path: str) -> Any:
    if x is None:
        if f.nullable:
            return None
        raise _Bad(path, f"must not be null{_eg(f)}")
    if f.shorthand is not None and isinstance(x, str):
        x = {f.shorthand: x}
    kind = f.kind
    out: Any
    if kind == "mapping":
        out = _mapping(x, f, path)
    elif kind == "list":
        out = _list(x, f, path)
    elif kind == "any":
        out = _any(x, path)
    elif kind == "bool":
        if not isinstance(x, bool):
            raise _Bad(path, f"must be true or false, got {_show(x)}")
        out = x
    elif kind == "int":  # numpy integers too (numbers.Integral), never bools
        if isinstance(x, bool) or not isinstance(x, numbers.Integral) or not _in_range(x, f):
            raise _Bad(path, f"must be {_range(f, 'an integer')}, got {_show(x)}")
        out = x
    elif kind == "number":
        ok = isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
        if not ok or not _in_range(x, f):
            raise _Bad(path, f"must be {_range(f, 'a finite number')}, got {_show(x)}")
        out = x
    else:  # str, name
        if not isinstance(x, str):
            raise _Bad(path, f"must be a string{_eg(f)}, got {_show(x)}")
        if kind == "name" and not _is_name(x):
            raise _Bad(path, f"{_NAME_RULE}, got {_show(x)}")
        if not _in_range(len(x), f):
            raise _Bad(path, f"must be a string of {_range(f, 'length')}, got {len(x)} characters")
        out = x
    if f.choices is not None and out not in f.choices:
        raise _Bad(path, f"must be one of {', '.join(map(str, f.choices))}; got {_show(out)}")
    return out


def _eg(f: Field) -> str:
    return f" (e.g. {f.example})" if f.example else ""


def _mapping(x: Any, f: Field, path: str) -> dict[str, Any]:
    if not isinstance(x, Mapping):
        raise _Bad(path, f"must be a mapping{_eg(f)}, got {_show(x)}")
    schema = f.schema or Schema(extra=Field())
    out: dict[str, Any] = {}
    for k, v in x.items():
        if not isinstance(k, str):
            raise _Bad(_key(path, k), "keys must be strings")
        sub = schema.fields.get(k, schema.extra)
        if sub is None:
            allowed = ", ".join(sorted(schema.fields)) or "none"
            raise _Bad(_key(path, k), f"unknown key (allowed: {allowed})")
        out[k] = _check(v, sub, _key(path, k))
    for k, sub in schema.fields.items():
        if k in out:
            continue
        if sub.required:
            raise _Bad(_key(path, k), f"missing{_eg(sub)}")
        if sub.default is not MISSING:
            out[k] = _check(_copy(sub.default), sub, _key(path, k))
    if schema.one_of and not any(k in out for k in schema.one_of):
        raise _Bad(path, f"needs {' and/or '.join(schema.one_of)}{_eg(f)}")
    if schema.check is not None:
        problem = schema.check(out)
        if problem:
            raise _Bad(path, problem)
    return out


def _list(x: Any, f: Field, path: str) -> list[Any]:
    if not isinstance(x, (list, tuple)):
        raise _Bad(path, f"must be a list{_eg(f)}, got {_show(x)}")
    if len(x) < f.min_items or (f.max_items is not None and len(x) > f.max_items):
        hi = "" if f.max_items is None else f" and at most {f.max_items}"
        raise _Bad(path, f"must list at least {f.min_items}{hi} items{_eg(f)}, got {len(x)}")
    item = f.items or Field()
    out = [_check(v, item, f"{path}[{i}]") for i, v in enumerate(x)]
    if f.unique:
        seen: list[Any] = []
        for i, v in enumerate(out):
            if v in seen:
                raise _Bad(f"{path}[{i}]", f"repeats {_show(v)}; every item must be different")
            seen.append(v)
    return out


def _any(x: Any, path: str) -> Any:
    """Free-form values: plain YAML types only, numbers finite."""
    if isinstance(x, Mapping):
        return {k: _any(v, _key(path, k)) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_any(v, f"{path}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, float) and not math.isfinite(x):
        raise _Bad(path, f"must be a finite number, got {_show(x)}")
    return x


def _copy(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_copy(v) for v in x]
    return x

"""The codec registry: ``--method NAME`` and a database spec's ``"kind"`` to a codec class.

The built-in kinds, then every entry point of the group ``levelsearch.codecs``
(``name = "package.module:CodecClass"``); a name taken twice is an error, never a silent shadow. The
contract itself (:class:`~levelsearch.adapters.codecs.base.Codec`) is in :mod:`.base`; this module does not
import it, so the shared problems that resolve a codec by name import no codec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from levelsearch.registry import Registry

if TYPE_CHECKING:
    from .base import Codec, WeightCodec

__all__ = ["CODECS", "ENTRY_POINT_GROUP", "available_codecs", "get_codec", "get_weight_codec", "register_codec"]

ENTRY_POINT_GROUP = "levelsearch.codecs"
#: the module of the contract (its classes are told apart by name, see :func:`_is_a`)
CONTRACT = "levelsearch.adapters.codecs.base"


def _is_a(target: Any, base: str) -> bool:
    """Whether the class ``target`` derives from the contract's class ``base`` (``Codec``, ``WeightCodec``),
    told by its bases' names: the registry needs no import of the contract, which imports the problems."""
    return isinstance(target, type) and any(c.__module__ == CONTRACT and c.__qualname__ == base for c in target.__mro__)


def _check_codec(name: str, target: Any) -> None:
    if not _is_a(target, "Codec"):
        raise ValueError(f"codec {name!r} is {target!r}, not a subclass of levelsearch.adapters.codecs.Codec")


#: the codecs: the built-in ones, then the entry-point group ``levelsearch.codecs``
CODECS: Registry[type[Codec]] = Registry(
    "codec",
    ENTRY_POINT_GROUP,
    unknown="unknown compression method {name!r}; available: {known}",
    extra="llm",
    check=_check_codec,
)
for _name, _target in {
    "drop": "levelsearch.adapters.codecs.drop.codec:DropCodec",
    "sparsity": "levelsearch.adapters.codecs.sparsity.codec:SparsityCodec",
    "quant": "levelsearch.adapters.codecs.quant.codec:QuantCodec",
    "joint": "levelsearch.adapters.codecs.joint.codec:JointCodec",
}.items():
    CODECS.register(_name, _target)


def register_codec(name: str, codec: type[Codec] | str, *, replace: bool = False) -> None:
    """Register a codec class (or ``"module:Class"``, imported on first use) under ``name``.

    Raises:
        ValueError: ``name`` is taken by another codec and ``replace`` is false.
    """
    CODECS.register(name, codec, replace=replace)


def available_codecs() -> list[str]:
    """Names of every registered codec (built in and from entry points), sorted."""
    return CODECS.names()


def get_codec(name: str) -> Codec:
    """A fresh instance of the codec registered under ``name``.

    Raises:
        ValueError: an unknown name (the known ones are listed) or an entry point that is not a codec.
    """
    target = CODECS.get(name)
    _check_codec(name, target)
    return target()


def get_weight_codec(kind: Any) -> WeightCodec:
    """The codec of a variant database's ``kind``.

    Raises:
        ValueError: ``kind`` names no registered codec with a variant database (those are listed).
    """
    codec = get_codec(str(kind)) if str(kind) in CODECS else None
    if not _is_a(type(codec), "WeightCodec"):
        names = [n for n in available_codecs() if _is_a(type(get_codec(n)), "WeightCodec")]
        raise ValueError(f"database kind must be one of {', '.join(names)}, got {kind!r}")
    return cast("WeightCodec", codec)

"""One name → object registry, filled by ``register`` calls and by an entry-point group.

Optimizers (``levelsearch.optimizers``), problem kinds (``levelsearch.problems``), CLI commands
(``levelsearch.commands``) and compression codecs (``levelsearch.codecs``, in the adapters) are each a
:class:`Registry`. A target is an object or a ``"module:attr"`` string imported on first use, so
registering costs nothing and ``import levelsearch`` stays light. A name is taken once: registering
it again with another target, or an installed entry point that collides with a registered name, is a
``ValueError`` (a third-party package never silently shadows a name), unless ``replace=True``.
Names are plain names (``A-Z a-z 0-9 . _ -``, see :func:`levelsearch.schema.check_name`): they become
parts of file names (bench folders, default labels), so a name that could leave a directory is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from .schema import check_name

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of plug-in (see the module docstring).

    Args:
        what: what a target is, in the user's words (``"optimizer"``, ``"codec"``): error messages use it.
        group: the entry-point group read once, on the first lookup.
        unknown: how an unknown name is reported: a format of ``name`` and ``known`` (default
            ``"unknown {what} {name!r}; known: {known}"``).
        extra: the extra to suggest when a target's module cannot be imported (``pip install 'levelsearch[EXTRA]'``).
        preload: called once before the entry points are read (e.g. to import the built-in registrations).
        check: called with ``(name, target)`` once a target is imported; raises ``ValueError`` if it is not
            what this registry holds.
    """

    def __init__(
        self,
        what: str,
        group: str,
        *,
        unknown: str | None = None,
        extra: str = "all",
        preload: Callable[[], None] | None = None,
        check: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.what, self.group = what, group
        self._unknown = unknown or f"unknown {what} {{name!r}}; known: {{known}}"
        self._extra, self._preload, self._check = extra, preload, check
        self._entries: dict[str, T | str] = {}
        self._loaded = False

    def register(self, name: str, target: T | str, *, replace: bool = False) -> None:
        """Register ``target`` (or ``"module:attr"``, imported on first use) under ``name``.

        Raises:
            ValueError: ``name`` is not a plain name, or is taken by another target and ``replace`` is false.
        """
        check_name(name, f"a {self.what} name")
        if not replace and name in self._entries and self._entries[name] != target:
            raise ValueError(f"a {self.what} named {name!r} is already registered; pick another name or replace=True")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a no-op when it is not registered)."""
        self._entries.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._preload is not None:
            self._preload()
        for ep in metadata.entry_points(group=self.group):
            check_name(ep.name, f"entry point {ep.value!r} ({self.group}): a {self.what} name")
            if ep.name in self._entries and self._entries[ep.name] != ep.value:
                raise ValueError(
                    f"entry point {ep.name!r} = {ep.value!r} ({self.group}) collides with the registered "
                    f"{self.what} of that name"
                )
            self._entries[ep.name] = ep.value

    def names(self) -> list[str]:
        """Every registered name (built in, registered, from entry points), sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def load(self, name: str) -> T:
        """The target of ``name``, imported if needed; an ``ImportError`` of its module propagates.

        Raises:
            ValueError: an unknown name (the known ones are listed), or a target the ``check`` refuses.
        """
        self._load()
        if name not in self._entries:
            raise ValueError(self._unknown.format(name=name, known=", ".join(self.names())))
        target = self._entries[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            target = getattr(__import__(module_name, fromlist=[attr]), attr)
            if self._check is not None:
                self._check(name, target)
            self._entries[name] = target
        return target  # type: ignore[return-value]

    def get(self, name: str) -> T:
        """:meth:`load`, with a missing dependency said as one line naming the extra to install.

        Raises:
            ValueError: an unknown name, a refused target, or a module that cannot be imported.
        """
        try:
            return self.load(name)
        except ImportError as exc:
            raise ValueError(
                f"{self.what} {name!r} needs a package that is not installed ({exc.name or exc}); "
                f"install the extra, e.g. pip install 'levelsearch[{self._extra}]'"
            ) from None

"""Fallbacks that change what a run does are said once and recorded, never taken silently.

An optimizer or evaluator that falls back (EvoPress's model jumps turned off because the
knapsack over its surrogate cannot be solved, a batch oracle that failed and was replaced by
one call per request, ...) calls :meth:`NoteTaker._note`: the sentence is issued once as a
``RuntimeWarning`` (the ``warnings`` module, as elsewhere in the core: it reaches a script's
user without configuring logging, and callers can filter it or turn it into an error) and is
kept, so that :func:`levelsearch.minimize` copies it into ``Result.notes`` and ``levelsearch
run`` into ``summary.json``.
"""

from __future__ import annotations

import warnings

__all__ = ["NoteTaker"]


class NoteTaker:
    """Mixin: :meth:`notes` lists the fallbacks recorded with :meth:`_note`, each sentence once."""

    def notes(self) -> list[str]:
        """Fallbacks taken so far that changed what the run does, one sentence each, in order."""
        return list(self.__dict__.get("_notes", ()))

    def _note(self, message: str) -> None:
        """Record a fallback: listed by :meth:`notes` and warned about (``RuntimeWarning``) the first time."""
        notes: list[str] = self.__dict__.setdefault("_notes", [])
        if message not in notes:
            notes.append(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

"""The run journal: every evaluation appended to SQLite before the optimizer sees it.

One file per run (stdlib ``sqlite3`` in WAL mode, one transaction per result),
holding the run's identity (config, seed, package version) and every
evaluation: levels, fidelity, sample, value or failure, wall time, worker.

Because optimizers are deterministic given their seed and told values, resume
is replay: a fresh optimizer's requests are answered from the journal, and the
oracle is called only past its end.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Journal", "JournalRecord", "JournalMismatch"]

_SCHEMA_VERSION = 1
_MAGIC = "levelsearch-journal"


class JournalMismatch(ValueError):
    """The journal was written by a different run (config, problem or space)."""


@dataclass(frozen=True)
class JournalRecord:
    index: int
    levels: np.ndarray
    fidelity: int | None
    sample: int | None
    value: float
    error: str | None
    seconds: float
    worker: str
    time: float

    def key(self) -> tuple[bytes, int | None, int | None]:
        return (self.levels.astype(np.int64).tobytes(), self.fidelity, self.sample)


class Journal:
    """An append-only SQLite log of one run.

    Args:
        path: the journal file; created when missing.
        identity: JSON-able description of the run (problem, optimizer, seed...).
            For an existing journal it must equal the stored one, else
            :class:`JournalMismatch` is raised.
        readonly: open for reading only (reports); ``identity`` is not checked.

    Raises:
        ValueError: if the file is not a levelsearch journal or is corrupt.
        FileNotFoundError: with ``readonly`` when the file does not exist.
    """

    def __init__(self, path: str | Path, identity: dict[str, Any] | None = None, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"no journal at {self.path}")
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            if readonly:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            else:
                self.conn = sqlite3.connect(self.path, timeout=30)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
            if existed:
                self._check_format()
            else:
                self._create()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is not a readable levelsearch journal ({exc})") from None
        if identity is not None and not readonly:
            stored = self.meta("identity")
            canon = json.loads(json.dumps(identity, sort_keys=True, default=str))
            if stored is None:
                self.set_meta("identity", canon)
            elif stored != canon:
                diff = _first_difference(stored, canon)
                raise JournalMismatch(
                    f"journal {self.path} belongs to a different run ({diff}); "
                    "use a new output directory or the same config"
                )

    def _create(self) -> None:
        with self.conn:
            self.conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.conn.execute(
                "CREATE TABLE evals (id INTEGER PRIMARY KEY, levels BLOB NOT NULL, fidelity INTEGER, "
                "sample INTEGER, value REAL, error TEXT, seconds REAL, worker TEXT, time REAL)"
            )
            self.conn.execute("INSERT INTO meta VALUES ('format', ?)", (json.dumps([_MAGIC, _SCHEMA_VERSION]),))

    def _check_format(self) -> None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None or json.loads(row[0])[0] != _MAGIC:
            raise ValueError(f"{self.path} is not a levelsearch journal")
        if json.loads(row[0])[1] > _SCHEMA_VERSION:
            raise ValueError(f"{self.path} was written by a newer levelsearch; upgrade to read it")
        self.conn.execute("SELECT count(*) FROM evals").fetchone()

    # ---------------------------------------------------------------- meta
    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True, default=str))
            )

    # ------------------------------------------------------------- records
    def append(
        self,
        levels: np.ndarray,
        fidelity: int | None,
        sample: int | None,
        value: float,
        error: str | None,
        seconds: float,
        worker: str,
    ) -> None:
        """Durably append one evaluation (one transaction)."""
        v = None if not np.isfinite(value) else float(value)
        with self.conn:
            self.conn.execute(
                "INSERT INTO evals (levels, fidelity, sample, value, error, seconds, worker, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    np.ascontiguousarray(levels, dtype=np.int64).tobytes(),
                    fidelity,
                    sample,
                    v,
                    error,
                    float(seconds),
                    worker,
                    time.time(),
                ),
            )

    def records(self) -> Iterator[JournalRecord]:
        """Every evaluation in the order it was journaled."""
        cur = self.conn.execute(
            "SELECT id, levels, fidelity, sample, value, error, seconds, worker, time FROM evals ORDER BY id"
        )
        for row in cur:
            value = float("inf") if row[4] is None else float(row[4])
            yield JournalRecord(
                index=int(row[0]),
                levels=np.frombuffer(row[1], dtype=np.int64).copy(),
                fidelity=row[2],
                sample=row[3],
                value=value,
                error=row[5],
                seconds=float(row[6] or 0.0),
                worker=str(row[7]),
                time=float(row[8] or 0.0),
            )

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM evals").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                return f"{path}{k} is new"
            if k not in b:
                return f"{path}{k} is missing"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{path}{k}.")
    return f"{path.rstrip('.') or 'value'} differs"

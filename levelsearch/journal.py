"""The run journal: every evaluation appended to SQLite before the optimizer sees it.

One file per run (stdlib ``sqlite3`` in WAL mode, one transaction per result),
holding the run's identity (config, seed, package version) and every
evaluation: levels, fidelity, sample, value or failure, wall time, worker.

Because optimizers are deterministic given their seed and told values, resume
is replay: a fresh optimizer's requests are answered from the journal, and the
oracle is called only past its end.

Durability: a result is committed before the optimizer is told, so a killed
process (SIGKILL, OOM, preemption) loses only the evaluations in flight. The
WAL is synced at checkpoints (``synchronous=NORMAL``): after a power loss the
file stays consistent and at most the last few results are run again.

A file that is not a levelsearch journal (another SQLite database, a text
file, a damaged journal, an empty file) is refused with a ``ValueError`` before
anything is written to it. A new journal is built under a temporary name and
linked into place, so a journal file is never seen half-made.
"""

from __future__ import annotations

import json
import os
import secrets
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
    """One journaled evaluation (``value`` is ``inf`` and ``error`` set when it failed)."""

    index: int
    levels: np.ndarray
    fidelity: int | None
    sample: int | None
    value: float
    error: str | None
    seconds: float
    worker: str
    time: float

    @property
    def ok(self) -> bool:
        return self.error is None

    def key(self) -> tuple[bytes, int | None, int | None]:
        return (self.levels.astype(np.int64).tobytes(), self.fidelity, self.sample)


class Journal:
    """An append-only SQLite log of one run.

    Args:
        path: the journal file; created when missing (its directory must exist).
        identity: JSON-able description of the run (problem, optimizer, seed...).
            For an existing journal it must equal the stored one, else
            :class:`JournalMismatch` is raised and nothing is written.
        readonly: open for reading only (reports, also while a run is writing);
            ``identity`` is not checked.

    Raises:
        ValueError: the file is not a levelsearch journal or is damaged.
        JournalMismatch: the journal belongs to a different run.
        FileNotFoundError: with ``readonly`` when the file does not exist, or
            when the directory of ``path`` does not exist.
    """

    def __init__(self, path: str | Path, identity: dict[str, Any] | None = None, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"no journal at {self.path}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"directory {self.path.parent} does not exist; create it first")
        if self.path.exists() and not self.path.is_file():
            raise ValueError(f"{self.path} is not a file; give the path of a journal file")
        self.conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        try:
            self._open(identity)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ValueError(f"{self.path} is not a readable levelsearch journal ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _open(self, identity: dict[str, Any] | None) -> None:
        # A journal file appears complete (schema and identity) or not at all: it is built
        # under a temporary name and linked into place, so an empty file or an SQLite file
        # without tables was never written by levelsearch and is refused like any foreign file.
        if self.path.exists():
            if self.path.stat().st_size == 0:
                raise ValueError(
                    f"{self.path} is empty (0 bytes), not a levelsearch journal; delete it or give another path"
                )
        elif not self.readonly:
            self._create_file(identity)
        if not self.readonly:
            self._lock()
        if self.readonly:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=30)
        else:
            self.conn = sqlite3.connect(self.path, timeout=30)
        # Read and check before writing anything: a foreign file must stay untouched.
        if self._is_empty_database():
            raise ValueError(
                f"{self.path} holds no levelsearch journal (a database without tables); delete it or give another path"
            )
        self._check_format()
        self._check_identity(identity)
        if self.readonly:
            return
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def _create_file(self, identity: dict[str, Any] | None) -> None:
        """Write a new journal under a temporary name, then link it to ``path`` (never half-made).

        When another process links its journal first, ours is discarded and theirs is
        checked like any existing journal (identity, then the writer lock).
        """
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            conn = sqlite3.connect(tmp)
            try:
                self._create(conn, identity)
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def _lock(self) -> None:
        """One writer per journal: a second run (or resume) of it is refused while the first is alive.

        An advisory ``flock`` on the file, separate from SQLite's own locks and
        released by the OS when the process ends, also when it is killed.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(
                f"journal {self.path} is in use by another levelsearch process; wait for it to finish or stop it"
            ) from None
        self._lock_fd = fd

    def _is_empty_database(self) -> bool:
        # a new SQLite file (or a 0-byte one SQLite opens) holds no tables: not written by levelsearch
        assert self.conn is not None
        return self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0

    @staticmethod
    def _create(conn: sqlite3.Connection, identity: dict[str, Any] | None) -> None:
        from . import __version__

        with conn:  # one transaction: a journal either has its schema and identity or is empty
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(
                "CREATE TABLE evals (id INTEGER PRIMARY KEY, levels BLOB NOT NULL, fidelity INTEGER, "
                "sample INTEGER, value REAL, error TEXT, seconds REAL, worker TEXT, time REAL)"
            )
            rows = [
                ("format", [_MAGIC, _SCHEMA_VERSION]),
                ("levelsearch_version", __version__),
                ("created", time.time()),
            ]
            if identity is not None:
                rows.append(("identity", _canon(identity)))
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v, sort_keys=True)) for k, v in rows])

    def _check_format(self) -> None:
        assert self.conn is not None
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            fmt = None if row is None else json.loads(row[0])
        except (sqlite3.OperationalError, ValueError):
            fmt = None
        if not isinstance(fmt, list) or len(fmt) != 2 or fmt[0] != _MAGIC:
            raise ValueError(f"{self.path} is not a levelsearch journal; give a journal.db written by levelsearch")
        if not isinstance(fmt[1], int) or fmt[1] > _SCHEMA_VERSION:
            raise ValueError(f"{self.path} was written by a newer levelsearch; upgrade to read it")
        check = self.conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise ValueError(f"{self.path} is damaged ({check[0] if check else 'no answer'}); start a new run")

    def _check_identity(self, identity: dict[str, Any] | None) -> None:
        if identity is None or self.readonly:
            return
        stored = self.meta("identity")
        canon = _canon(identity)
        if stored is None:
            self.set_meta("identity", canon)
        elif stored != canon:
            diff = _first_difference(stored, canon)
            raise JournalMismatch(
                f"journal {self.path} belongs to a different run ({diff}); "
                "use a new output directory or the config that wrote it"
            )

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise ValueError(f"journal {self.path} is closed")
        return self.conn

    # ---------------------------------------------------------------- meta
    def meta(self, key: str) -> Any:
        """A stored fact (``identity``, ``config``, ``levelsearch_version``...), ``None`` when absent."""
        row = self._db().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-able fact (one transaction)."""
        db = self._db()
        with db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(_canon(value), sort_keys=True)))

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
        """Durably append one evaluation (one transaction); a non-finite value is stored as a failure.

        Raises:
            ValueError: the journal was opened read-only.
            OSError: the write failed (disk full, file removed); the run can be resumed afterwards.
        """
        if self.readonly:
            raise ValueError(f"journal {self.path} was opened read-only")
        v = float(value)
        if not np.isfinite(v):
            v_db = None
            error = error or f"fitness returned {v}"
        else:
            v_db = v
        row = (
            np.ascontiguousarray(levels, dtype=np.int64).tobytes(),
            None if fidelity is None else int(fidelity),
            None if sample is None else int(sample),
            v_db,
            error,
            float(seconds),
            str(worker),
            time.time(),
        )
        db = self._db()
        try:
            with db:
                db.execute(
                    "INSERT INTO evals (levels, fidelity, sample, value, error, seconds, worker, time) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
        except sqlite3.OperationalError as exc:  # disk full, file removed, read-only mount...
            raise OSError(f"cannot write to journal {self.path} ({exc}); fix that, then resume the run") from None

    def records(self) -> Iterator[JournalRecord]:
        """Every evaluation in the order it was journaled.

        Raises:
            ValueError: the file is damaged.
        """
        try:
            rows = (
                self._db()
                .execute(
                    "SELECT id, levels, fidelity, sample, value, error, seconds, worker, time FROM evals ORDER BY id"
                )
                .fetchall()
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is damaged ({exc}); start a new run") from None
        for row in rows:
            value = float("inf") if row[4] is None else float(row[4])
            yield JournalRecord(
                index=int(row[0]),
                levels=np.frombuffer(row[1], dtype=np.int64).copy(),
                fidelity=row[2],
                sample=row[3],
                value=value,
                error=row[5] if row[5] is not None or row[4] is not None else "failed",
                seconds=float(row[6] or 0.0),
                worker=str(row[7]),
                time=float(row[8] or 0.0),
            )

    def __len__(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM evals").fetchone()[0])

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _canon(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(value, sort_keys=True, default=default))


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where ``a`` (stored) and ``b`` (given) first differ, in words; the run's main facts first."""
    if isinstance(a, dict) and isinstance(b, dict):
        order = {"problem": 0, "name": 1, "optimizer": 2, "options": 3, "seed": 4}
        for k in sorted(set(a) | set(b), key=lambda k: (order.get(k, 9), k)):
            if k not in a:
                return f"{path}{k} is not in the journal"
            if k not in b:
                return f"{path}{k} is only in the journal"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{path}{k}.")
    where = path.rstrip(".") or "value"
    sa, sb = json.dumps(a), json.dumps(b)
    if len(sa) + len(sb) <= 80:
        return f"{where}: journal has {sa}, this run has {sb}"
    return f"{where} differs"

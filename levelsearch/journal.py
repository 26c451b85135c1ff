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

Integrity: every evaluation row carries ``chain = sha256(previous chain ||
canonical bytes of the row)`` (its number, levels, fidelity, sample, value,
error, seconds, worker and time); the first row chains from a genesis hash
drawn at creation. Every meta value (identity, oracle, config, cost model and
any key stored with :meth:`Journal.set_meta`) carries a checksum of its key,
its value and the chain head when it was written. Reading rows
(:meth:`Journal.records`) or a meta value (:meth:`Journal.meta`) verifies them
and raises a one-line ``ValueError`` naming the first altered row or key: an
edited, deleted, inserted or reordered evaluation, an edited meta value, a meta
value copied from another journal. Deleting the *last* rows is not detectable
(it looks like a run killed earlier, whose resume evaluates them again) unless
a meta value was written after them. A journal of the older format (schema 1,
no chain) has no integrity record: it is refused for writing and resuming (its
run must be done again) and read-only opening (reports, analyses) reads it
unchecked with a warning.

Threat model: accidents and stale state (a hand edit, a script that rewrote a
value, a file copied between runs, a damaged disk), not a hostile local user
with write access, who can recompute the hashes: the chain is a checksum, not a
signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Journal", "JournalRecord", "JournalMismatch"]

_SCHEMA_VERSION = 2
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
        # a read-only look must leave the directory as it found it: SQLite makes the WAL's two side files to
        # read a WAL journal and, read-only, cannot remove them (see close)
        self._sidecars = [self.path.with_name(self.path.name + s) for s in ("-wal", "-shm")]
        self._tidy = readonly and not any(p.exists() for p in self._sidecars)
        # the verified chain: rows checked so far, the last id and head, and the heads meta values cite
        self._genesis_head = b""
        self._n_rows, self._last_id, self._head = 0, 0, b""
        self._heads: dict[int, bytes] = {}
        self._wanted: set[int] = set()
        self._legacy = False  # an older journal without integrity record, opened read-only
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
            self.conn = self._connect_readonly()
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

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection, also on a read-only file system (a mount, a snapshot).

        SQLite reads a WAL journal through an index file next to it, which it cannot make in a
        read-only directory; when no WAL file holds results (the writer closed it, or it was
        checkpointed) every row is in the main file, which is then read as immutable.
        """
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0 and not os.access(self.path.parent, os.W_OK):
            raise ValueError(
                f"journal {self.path} cannot be read here: its latest results are in {wal.name}, which SQLite reads "
                "only where it may write; copy the run directory to a writable place and read the copy"
            )
        return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, timeout=30)

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
            conn.execute(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, at INTEGER NOT NULL, "
                "checksum TEXT NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE evals (id INTEGER PRIMARY KEY, levels BLOB NOT NULL, fidelity INTEGER, "
                "sample INTEGER, value REAL, error TEXT, seconds REAL, worker TEXT, time REAL, chain TEXT NOT NULL)"
            )
            token = secrets.token_hex(32)
            genesis = _genesis(token)
            rows: list[tuple[str, Any]] = [
                ("format", [_MAGIC, _SCHEMA_VERSION]),
                ("levelsearch_version", __version__),
                ("created", time.time()),
            ]
            if identity is not None:
                rows.append(("identity", _canon(identity)))
            table = [("genesis", json.dumps(token), 0, _genesis_checksum(json.dumps(token)))]
            for k, v in rows:
                text = json.dumps(v, sort_keys=True)
                table.append((k, text, 0, _meta_checksum(genesis, 0, k, text)))
            conn.executemany("INSERT INTO meta VALUES (?, ?, ?, ?)", table)

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
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(meta)").fetchall()}
        if fmt[1] < _SCHEMA_VERSION and "checksum" not in columns:
            if not self.readonly:
                raise ValueError(
                    f"journal {self.path} was written by an older levelsearch and has no integrity record, so its "
                    "values cannot be trusted; run it again in a new output directory"
                )
            warnings.warn(
                f"journal {self.path} was written by an older levelsearch and has no integrity record: "
                "its values are read unchecked",
                stacklevel=4,
            )
            self._legacy = True
        elif fmt[1] != _SCHEMA_VERSION or "checksum" not in columns:
            raise self._altered("meta value 'format'")
        check = self.conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise ValueError(f"{self.path} is damaged ({check[0] if check else 'no answer'}); start a new run")
        if not self._legacy:
            self._verify_all()

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

    # ----------------------------------------------------------- integrity
    def _altered(self, where: str) -> ValueError:
        return ValueError(
            f"journal {self.path} was altered at {where} (its integrity chain does not match); "
            "its values cannot be trusted: start a new run"
        )

    def _verify_all(self) -> None:
        """Check the genesis, every evaluation row and every meta value (on open)."""
        db = self._db()
        try:
            row = db.execute("SELECT value, checksum FROM meta WHERE key='genesis'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None or row[1] != _genesis_checksum(row[0]):
            raise self._altered("meta value 'genesis'")
        try:
            token = json.loads(row[0])
        except ValueError:
            raise self._altered("meta value 'genesis'") from None
        self._genesis_head = _genesis(str(token))
        self._heads = {0: self._genesis_head}
        self._n_rows, self._last_id, self._head = 0, 0, self._genesis_head
        metas = db.execute("SELECT key, value, at, checksum FROM meta").fetchall()
        self._wanted = {at for _, _, at, _ in metas if isinstance(at, int)}
        for _ in self._verified_rows(from_start=True):
            pass
        for key, value, at, checksum in metas:
            if key != "genesis":
                self._check_meta_row(key, value, at, checksum)

    def _head_at(self, at: int) -> bytes | None:
        """The chain head after ``at`` evaluation rows (``None`` past the end)."""
        if at > self._n_rows:
            for _ in self._verified_rows(from_start=False):
                pass
        if at == self._n_rows:
            return self._head
        return self._heads.get(at)

    def _check_meta_row(self, key: str, value: str, at: Any, checksum: Any) -> None:
        if not isinstance(at, int) or at < 0:
            raise self._altered(f"meta value {key!r}")
        head = self._head_at(at)
        if head is None and at < self._n_rows:
            # a head not kept in memory: read the chain again, keeping this one
            self._wanted.add(at)
            for _ in self._verified_rows(from_start=True):
                pass
            head = self._heads.get(at)
        if head is None or checksum != _meta_checksum(head, at, key, value):
            raise self._altered(f"meta value {key!r}")

    def _verified_rows(self, *, from_start: bool) -> Iterator[tuple[Any, ...]]:
        """Evaluation rows in order, each checked against the chain (from the start, or after the last checked).

        Raises:
            ValueError: a row was edited, deleted, inserted or reordered; or the file is damaged.
        """
        if self._legacy:
            yield from self._legacy_rows()
            return
        if from_start:
            n, last_id, head = 0, 0, self._genesis_head
        else:
            n, last_id, head = self._n_rows, self._last_id, self._head
        try:
            rows = (
                self._db()
                .execute(
                    "SELECT id, levels, fidelity, sample, value, error, seconds, worker, time, chain FROM evals "
                    "WHERE id > ? ORDER BY id",
                    (last_id,),
                )
                .fetchall()
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is damaged ({exc}); start a new run") from None
        wanted = self._wanted
        checked: list[tuple[Any, ...]] = []
        for row in rows:
            n += 1
            if row[0] != last_id + 1 or not isinstance(row[1], bytes):
                raise self._altered(f"row {n}")
            head = _chain_next(head, row[:9])
            if row[9] != head.hex():
                raise self._altered(f"row {n}")
            last_id = row[0]
            if n in wanted:
                self._heads[n] = head
            checked.append(row)
        self._n_rows, self._last_id, self._head = n, last_id, head
        yield from checked

    def _legacy_rows(self) -> list[tuple[Any, ...]]:
        try:
            return (
                self._db()
                .execute(
                    "SELECT id, levels, fidelity, sample, value, error, seconds, worker, time FROM evals ORDER BY id"
                )
                .fetchall()
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is damaged ({exc}); start a new run") from None

    # ---------------------------------------------------------------- meta
    def meta(self, key: str) -> Any:
        """A stored fact (``identity``, ``config``, ``levelsearch_version``...), ``None`` when absent.

        Raises:
            ValueError: the value was altered since it was written (its checksum does not match).
        """
        try:
            if self._legacy:
                row = self._db().execute("SELECT value, 0, '' FROM meta WHERE key=?", (key,)).fetchone()
            else:
                row = self._db().execute("SELECT value, at, checksum FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is damaged ({exc}); start a new run") from None
        if row is None:
            return None
        if not self._legacy:
            self._check_meta_row(key, row[0], row[1], row[2])
        return json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-able fact (one transaction), with a checksum tied to the chain head.

        Raises:
            ValueError: the journal was opened read-only, or ``key`` is ``"genesis"`` (reserved).
            OSError: the write failed (disk full, file removed).
        """
        if self.readonly:
            raise ValueError(f"journal {self.path} was opened read-only")
        if key == "genesis":
            raise ValueError("the meta key 'genesis' is reserved")
        db = self._db()
        for _ in self._verified_rows(from_start=False):  # rows written since (there are none for a lone writer)
            pass
        text = json.dumps(_canon(value), sort_keys=True)
        at = self._n_rows
        self._wanted.add(at)
        self._heads[at] = self._head
        try:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?)",
                    (key, text, at, _meta_checksum(self._head, at, key, text)),
                )
        except sqlite3.OperationalError as exc:  # disk full, file removed, read-only mount...
            raise OSError(f"cannot write to journal {self.path} ({exc}); fix that, then resume the run") from None

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
            ValueError: the journal was opened read-only, or rows were altered since it was opened.
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
        fields = (
            np.ascontiguousarray(levels, dtype=np.int64).tobytes(),
            None if fidelity is None else int(fidelity),
            None if sample is None else int(sample),
            v_db,
            None if error is None else str(error),
            float(seconds),
            str(worker),
            time.time(),
        )
        db = self._db()
        for attempt in range(2):
            row = (self._last_id + 1, *fields)
            head = _chain_next(self._head, row)
            try:
                with db:
                    db.execute(
                        "INSERT INTO evals (id, levels, fidelity, sample, value, error, seconds, worker, time, chain) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*row, head.hex()),
                    )
                break
            except sqlite3.IntegrityError:
                # the row id exists: an earlier append committed but was interrupted before it moved
                # the in-memory head; catch up with the file (checking those rows) and chain from there
                if attempt:
                    raise self._altered(f"row {row[0]}") from None
                for _ in self._verified_rows(from_start=False):
                    pass
            except sqlite3.OperationalError as exc:  # disk full, file removed, read-only mount...
                raise OSError(f"cannot write to journal {self.path} ({exc}); fix that, then resume the run") from None
        self._n_rows, self._last_id, self._head = self._n_rows + 1, row[0], head

    def records(self) -> Iterator[JournalRecord]:
        """Every evaluation in the order it was journaled, each checked against the chain.

        Raises:
            ValueError: the file is damaged, or a row was edited, deleted, inserted or reordered
                (raised before the first record is returned).
        """
        rows = list(self._verified_rows(from_start=True))
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
        """Close the file (idempotent). A read-only journal removes the WAL side files its reading made, when
        they hold nothing (an empty ``-wal``) and no writer has the journal open."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if self._tidy:
            self._tidy = False
            self._remove_empty_sidecars()

    def _remove_empty_sidecars(self) -> None:
        wal, shm = self._sidecars
        try:
            if not wal.exists() or wal.stat().st_size > 0:
                return
            import fcntl
        except (OSError, ImportError):  # Windows: no advisory lock, leave them
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a writer holds it while alive (see _lock)
        except OSError:
            os.close(fd)
            return
        try:
            for p in (wal, shm):
                p.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _genesis(token: str) -> bytes:
    """The chain head before the first row: derived from a random token drawn when the journal was made."""
    return hashlib.sha256(b"levelsearch-journal-genesis\0" + token.encode()).digest()


def _genesis_checksum(text: Any) -> str:
    return hashlib.sha256(b"levelsearch-journal-genesis-row\0" + str(text).encode()).hexdigest()


def _meta_checksum(head: bytes, at: int, key: str, text: str) -> str:
    """Checksum of one meta value: its key, its JSON text and the chain head (after ``at`` rows) it was written at."""
    h = hashlib.sha256(b"levelsearch-journal-meta\0")
    h.update(head)
    h.update(json.dumps([at, key, text]).encode())
    return h.hexdigest()


def _float_text(x: Any) -> Any:
    return None if x is None else float(x).hex()


def _chain_next(head: bytes, row: tuple[Any, ...]) -> bytes:
    """``sha256(head || canonical bytes of the row)``; ``row`` is (id, levels, fidelity, sample, value,
    error, seconds, worker, time) as stored."""
    rid, levels, fidelity, sample, value, error, seconds, worker, t = row
    fields = [rid, fidelity, sample, _float_text(value), error, _float_text(seconds), worker, _float_text(t)]
    h = hashlib.sha256(head)
    h.update(json.dumps(fields, separators=(",", ":")).encode())
    h.update(b"\0")
    h.update(bytes(levels))
    return h.digest()


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

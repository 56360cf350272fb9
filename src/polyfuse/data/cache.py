"""The decode cache: every input cell decoded once, stored compactly on disk, read by every later
epoch and run (train, evaluate, embed, pretrain; `polyfuse cache build|info|clear`).

One SQLite file, `data.cache_dir/decoded.sqlite` (the standard library's; crash-safe transactions,
any number of reading processes beside one writer):

    files(path, size, mtime_ns, digest)   each file's content digest; re-hashed only when its size
                                          or modification time changes (the fast path git's index uses)
    items(key, proc, value)               key = blake2b(processor fingerprint, content digest);
                                          value = the processor's packed arrays as safetensors bytes
                                          (uint8 pixels, fp16 log-mel, int32 token ids; never pickle)

Keys are content, not paths: a file that changes is a miss, a file copied elsewhere is a hit, and
runs with the same processor settings share entries. Values are read with plain reads (no mmap),
so a large cache costs the reading process page cache, not resident memory. Only one process
writes (the one building); DataLoader workers read, each through a connection of its own.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ..config import DataConfig
from ..errors import InputError

FILE_NAME = "decoded.sqlite"
KEY_BYTES = 16
QUERY_KEYS = 500        # keys per SELECT ... IN (...): under SQLite's oldest limit on bound values (999)
SCHEMA = ("CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest BLOB)",
          "CREATE TABLE IF NOT EXISTS items(key BLOB PRIMARY KEY, proc TEXT, value BLOB)")


def digest_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_BYTES).digest()


def proc_id(modality: str, fingerprint: str) -> str:
    """A short readable name of one processor setting: `image 3f2a9c10` (shown by `polyfuse cache info`)."""
    return f"{modality} {hashlib.blake2b(fingerprint.encode(), digest_size=4).hexdigest()}"


def item_key(fingerprint: str, content: bytes) -> bytes:
    """The key of one decoded cell: the processor's whole fingerprint and the cell's content digest."""
    return digest_bytes(digest_bytes(fingerprint.encode()) + content)


def _retry_locked(run, seconds: float = 60.0):
    """run() again while SQLite says the database is locked, for up to `seconds`."""
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            return run()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(0.5, delay * 2)


class DecodeCache:
    """The cache in one folder. Safe to hand to forked DataLoader workers: each process opens its own
    connection on first use (a SQLite connection must not cross a fork)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.path = self.folder / FILE_NAME
        self._db, self._pid = None, None

    @classmethod
    def of(cls, cfg: DataConfig) -> "DecodeCache | None":
        return cls(cfg.cache_dir) if cfg.cache else None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            # Switching a new file to WAL can fail with "database is locked" at once, without waiting
            # for the timeout, when several workers open a fresh cache together (seen with 2
            # DataLoader workers): retried. WAL is stored in the file, so later opens only read it.
            _retry_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))   # readers never wait for the writer
            db.execute("PRAGMA synchronous=NORMAL")      # a crash loses at most the last transactions, never consistency
            for statement in SCHEMA:
                _retry_locked(lambda: db.execute(statement))
            self._db, self._pid = db, os.getpid()
        return self._db

    # -- content digests ------------------------------------------------------------------------
    def file_digest(self, path: Path, kind: str) -> tuple[bytes, tuple | None]:
        """(content digest, a `files` row to record or None when the stored one still holds)."""
        try:
            st = path.stat()
        except OSError:
            raise InputError(f"{kind} file not found", file=str(path)) from None
        key = str(path.resolve())
        row = self.db.execute("SELECT size, mtime_ns, digest FROM files WHERE path = ?", (key,)).fetchone()
        if row is not None and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return row[2], None
        try:
            digest = digest_bytes(path.read_bytes())
        except OSError as e:
            raise InputError(f"cannot read {kind} file: {e}", file=str(path)) from None
        return digest, (key, st.st_size, st.st_mtime_ns, digest)

    # -- items ------------------------------------------------------------------------------------
    def _select(self, columns: str, keys: list[bytes]):
        """Rows of `items` for keys, one query per QUERY_KEYS: a query per cell was a third of the
        time a batch took to read from the cache."""
        for a in range(0, len(keys), QUERY_KEYS):
            part = keys[a:a + QUERY_KEYS]
            yield from self.db.execute(f"SELECT {columns} FROM items WHERE key IN ({','.join('?' * len(part))})", part)

    def existing(self, keys: list[bytes]) -> set[bytes]:
        """Which of `keys` are stored (a scanned chunk's cells), without reading their values."""
        return {key for (key,) in self._select("key", keys)}

    def get_many(self, keys: list[bytes]) -> dict[bytes, dict[str, np.ndarray]]:
        """The stored ones of `keys` (a batch's cells)."""
        return {key: st_load(value) for key, value in self._select("key, value", keys)}

    def write(self, items: list[tuple[bytes, str, dict]], files: list[tuple]):
        """One transaction: a build killed between two of them keeps every earlier one."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", files)
            db.executemany("INSERT OR IGNORE INTO items VALUES (?, ?, ?)",
                           [(k, proc, st_save(arrays)) for k, proc, arrays in items])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- polyfuse cache info / clear ------------------------------------------------------------
    def info(self) -> dict:
        if not self.path.exists():
            return {"folder": str(self.folder), "items": 0, "files": 0, "bytes": 0, "by_processor": {}}
        db = self.db
        by = {proc: {"items": n, "bytes": b} for proc, n, b in
              db.execute("SELECT proc, COUNT(*), SUM(LENGTH(value)) FROM items GROUP BY proc ORDER BY proc")}
        on_disk = sum(p.stat().st_size for p in self.folder.glob(FILE_NAME + "*"))
        return {"folder": str(self.folder), "items": sum(v["items"] for v in by.values()),
                "files": db.execute("SELECT COUNT(*) FROM files").fetchone()[0], "bytes": on_disk, "by_processor": by}

    def clear(self) -> int:
        """Delete the cache; returns the bytes freed."""
        if self._db is not None:
            self._db.close()
            self._db = None
        freed = 0
        for p in self.folder.glob(FILE_NAME + "*"):      # the database and its -wal / -shm files
            freed += p.stat().st_size
            p.unlink()
        return freed

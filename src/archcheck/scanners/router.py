"""Which scanner reads which member: PostgreSQL by the data directory's layout, SQLite by name
and magic, InnoDB by name. One object per archive; only PostgreSQL keeps state across members."""
from __future__ import annotations

import re
from typing import Any

from .innodb import InnodbScanner
from .pgmanifest import Listed
from .postgres import PostgresScanners
from .sqlite import SqliteScanner, SqliteWalScanner, is_sqlite

SQLITE_NAME = re.compile(r".*\.(?:db|db3|sqlite|sqlite3)")
SQLITE_WAL_NAME = re.compile(r".*\.(?:db|db3|sqlite|sqlite3)-wal")
INNODB_NAME = re.compile(r"(?:.*/)?(?:[^/]+\.ibd|ibdata\d+)")
RAW_HINT = re.compile(rb"\.(?:db|db3|sqlite3?)(?:-wal)?\x00|\.ibd\x00|ibdata\d")
SQLITE_MAX_BUFFER = 64 * 1024 * 1024  # a database this size or smaller is walked whole, in memory
WAL_MAGICS = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


class Sniffed:
    """A scanner chosen by the member's first bytes: a file named like a database that is not
    one (another program's .db) is not judged. The scanner, once chosen, sees the member from
    its first byte, however small the pieces were that brought the head."""

    def __init__(self, need: int, accept, make):
        self.need, self.accept, self.make = need, accept, make
        self.head = bytearray()
        self.scanner: Any = None
        self.decided = False

    @property
    def found(self) -> list:
        return self.scanner.found if self.scanner is not None else []

    def feed(self, view: memoryview, offset: int) -> None:
        if self.decided:
            if self.scanner is not None:
                self.scanner.feed(view, offset)
            return
        before = len(self.head)
        self.head += view[:self.need - before]
        if len(self.head) < self.need:
            return
        self.decided = True
        if self.accept(bytes(self.head)):
            self.scanner = self.make()
            if before:
                self.scanner.feed(memoryview(bytes(self.head[:before])), 0)
            self.scanner.feed(view, before)

    def close(self, complete: bool) -> None:
        if self.scanner is not None:
            self.scanner.close(complete)


class Scanners:
    """The database scanners for one archive."""

    def __init__(self, listed: dict[str, Listed] | None = None, prefix: str = "", known: dict | None = None):
        self.postgres = PostgresScanners(listed, prefix, known)

    def wants(self, raw_name: bytes) -> bool:
        return self.postgres.wants(raw_name) or RAW_HINT.search(raw_name + b"\x00") is not None

    def open(self, name: str, size: int) -> Any:
        scanner = self.postgres.open(name, size)
        if scanner is not None:
            return scanner
        if INNODB_NAME.fullmatch(name):
            return InnodbScanner(name, size)
        if SQLITE_WAL_NAME.fullmatch(name):
            return Sniffed(32, lambda head: head[:4] in WAL_MAGICS, lambda: SqliteWalScanner(name, size))
        if SQLITE_NAME.fullmatch(name):
            return Sniffed(16, is_sqlite, lambda: SqliteScanner(name, size, SQLITE_MAX_BUFFER))
        return None

    def decide(self, code: str, details: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        if code.startswith(("SQLITE_", "INNODB_")):
            return code, details
        return self.postgres.decide(code, details)

    def summaries(self) -> list[tuple[str, dict[str, Any]]]:
        return self.postgres.summaries()

    def state(self) -> dict[str, Any]:
        return self.postgres.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.postgres.restore(state)


"""Database files inside the archive (formats.md 3-5).

The native core reads their bytes as members stream past (PostgreSQL pages, pg_control, WAL and
backup_manifest checksums, InnoDB pages, SQLite WAL frames). What lives here is what Python
keeps: the configuration the core is handed once, what a finding means once the whole archive
is known (``policy``), and the SQLite b-tree walk, fed one collected database at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .pgmanifest import Listed


@dataclass
class Found:
    """A scanner's finding, in member coordinates; the stream check places it in the archive."""

    code: str
    offset: int  # within the member
    length: int
    where: dict[str, Any] = field(default_factory=dict)  # relation, fork, block; page
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanConfig:
    """What the database scanners of one archive are told before it starts: the files a
    backup_manifest lists, where this archive's members sit in the data directory
    (``pg_tblspc/<oid>/`` for a tablespace tar), and the data directory's facts from another
    archive of the same backup (base.tar holds pg_control, a tablespace tar does not)."""

    listed: dict[str, Listed] | None = None
    prefix: str = ""
    known: dict[str, Any] | None = None


def format_lsn(lsn: int) -> str:
    """A WAL position as PostgreSQL writes it: high and low 32 bits in hex, X/X."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def scan_handoff(kind: str, size: int, received: int, complete: bool, head: bytes, data: bytes | None,
                 limit: int) -> list[tuple]:
    """A member the core handed over whole, walked by the scanner of its kind: (code, offset,
    length, where, details) of each finding."""
    from . import sqlite  # the only kind so far
    walkers = {"sqlite": sqlite.scan_handoff}
    return walkers[kind](size, received, complete, head, data, limit)

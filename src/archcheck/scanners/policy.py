"""What the database findings mean, once the whole archive is known (formats.md 3.7-3.10).

Page findings are provisional while the archive streams past: pg_basebackup sends
``global/pg_control`` (checksums on or off) last, and a directory is a data directory only
when it has ``PG_VERSION`` or ``pg_control``. The core reports what it found and what it learnt
of each data directory; this decides what stands.
"""
from __future__ import annotations

from typing import Any

from . import format_lsn

Decision = tuple[str, dict[str, Any]] | None


class DatabasePolicy:
    def waits(self, code: str) -> bool:
        """Whether a finding waits for the end of the archive before it is decided (a page
        checksum means something only once pg_control has said checksums are on)."""
        return code == "PG_PAGE_CHECKSUM"

    def decide(self, code: str, details: dict[str, Any], datadirs: dict[str, dict[str, Any]]) -> Decision:
        """Dropped outside a data directory, and for checksums when they are off or unknown; a
        page changed after a hot backup began is torn, not damaged (WAL replay rewrites it)."""
        if code.startswith(("SQLITE_", "INNODB_")):
            return code, details
        if code.startswith("WAL_") and details.get("after_end"):
            return None  # past the end of WAL, stale or odd pages are normal (formats.md 6.3)
        if code.startswith(("PG_MANIFEST", "WAL_")):  # judged against the manifest and WAL, not a guess
            return code, details
        datadir = datadirs.get(details.get("datadir", ""))
        if datadir is None or not datadir["confirmed"]:
            return None
        if code == "PG_PAGE_CHECKSUM" and datadir["checksums"] != 1:
            return None
        start_lsn = datadir["start_lsn"]
        if start_lsn is None:
            return code, details
        # A hot copy can tear a page between its sectors: the checksum then fails, and a page
        # caught mid-extension can have a zeroed header. Both are rewritten by WAL replay. A
        # torn page keeps a sound header and line pointers, so those findings stand.
        started = format_lsn(start_lsn)
        if code == "PG_PAGE_CHECKSUM" and details.get("lsn", -1) >= start_lsn:
            return "PG_PAGE_TORN", {**details, "was": code, "start_lsn": started}
        if code == "PG_PAGE_HEADER" and details.get("problem", "").startswith("pd_upper is 0"):
            return "PG_PAGE_TORN", {**details, "was": code, "start_lsn": started}
        return code, details

    def summaries(self, datadirs: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for root, d in sorted(datadirs.items()):
            if not d["confirmed"]:
                continue
            checks = {1: "compared", 0: "off in pg_control", None: "not compared: no pg_control"}.get(
                d["checksums"], f"unknown version {d['checksums']}")
            out.append(("PG_DATA_DIRECTORY", {"datadir": root or "the archive root", "version": d["version"] or "?",
                                              "files": d["files"], "pages": d["pages"], "checksums": checks,
                                              "backup": "hot" if d["start_lsn"] is not None else "cold"}))
        return out

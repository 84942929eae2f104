"""A pg_basebackup -Ft directory verified as one backup, as pg_verifybackup takes a directory:
its tar archives (base.tar, <tablespace oid>.tar, pg_wal.tar, optionally compressed) and the
backup_manifest that lists every file with its size and checksum.

Sizes and checksums are checked as members stream past (scanners.pgmanifest); what needs all
the archives at once (files missing or not listed, WAL segments missing) is checked here, from
the members files the runs wrote."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import SourceError, UsageError
from .findings import Finding, Location
from .scanners.pgmanifest import BackupManifest, Listed, ignored, parse_manifest

ARCHIVE = re.compile(r"(?P<name>base|pg_wal|\d+)\.tar(?:\.zst)?")
WAL_NAME = re.compile(r"[0-9A-F]{24}")


@dataclass(frozen=True)
class Backup:
    folder: str
    archives: tuple[str, ...]

    @property
    def manifest_path(self) -> Path:
        return Path(self.folder) / "backup_manifest"

    def to_json(self) -> dict[str, Any]:
        return {"folder": self.folder, "archives": list(self.archives)}

    def manifest(self) -> BackupManifest:
        return parse_manifest(self.manifest_path.read_bytes())

    def prefix(self, archive: str) -> str:
        """Where an archive's members sit in the data directory."""
        name = ARCHIVE.fullmatch(Path(archive).name)["name"]
        return {"base": "", "pg_wal": "pg_wal/"}.get(name, f"pg_tblspc/{name}/")


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[Backup]]:
    """Archives to verify, with each pg_basebackup directory replaced by its tar archives."""
    archives, backups = [], []
    for path in paths:
        if not path.is_dir():
            archives.append(path)
            continue
        if not (path / "backup_manifest").is_file():
            raise SourceError(f"{path} is a directory without a backup_manifest; give archive files, or a "
                             "pg_basebackup -Ft directory")
        # base.tar first: its pg_control and backup_label decide the pages of the tablespace tars
        members = sorted((p for p in path.iterdir() if ARCHIVE.fullmatch(p.name)),
                         key=lambda p: (not p.name.startswith("base."), p.name))
        others = sorted(p.name for p in path.iterdir() if p.name != "backup_manifest" and p not in members)
        if not members or others:
            raise UsageError(f"{path}: expected base.tar[.zst], pg_wal.tar[.zst], <oid>.tar[.zst] and "
                             f"backup_manifest, found {', '.join(others) or 'no archive'}")
        archives.extend(members)
        backups.append(Backup(str(path.absolute()), tuple(str(p.absolute()) for p in members)))
    return archives, backups


def scan_options(backups: list[Backup], archive: str) -> tuple[dict[str, Listed] | None, str]:
    """(listed files, prefix) for scanning an archive: the manifest's list when it belongs to a backup."""
    for backup in backups:
        if archive in backup.archives:
            return backup.manifest().files, backup.prefix(archive)
    return None, ""


def cross_check(backup: Backup, members: dict[str, Iterable[dict]], wal_needed: list[str]) -> list[Finding]:
    """What only the whole backup can tell: the manifest's own checksum, listed files missing,
    files present but not listed, and WAL segments missing. ``members``: archive -> its members."""
    uri = str(backup.manifest_path)
    manifest = backup.manifest()
    out = [Finding.of("PG_MANIFEST_DAMAGED", Location(uri), problem=p) for p in manifest.problems]
    present: dict[str, str] = {}  # data directory path -> archive
    for archive, listing in members.items():
        prefix = backup.prefix(archive)
        for member in listing:
            if member.get("type") == "file":
                present[prefix + member["name"].removeprefix("./")] = archive
    for path in sorted(set(manifest.files) - set(present)):
        if not ignored(path):
            out.append(Finding.of("PG_MANIFEST_FILE_MISSING", Location(uri, relation=path), path=path))
    for path in sorted(set(present) - set(manifest.files)):
        if not ignored(path):
            out.append(Finding.of("PG_MANIFEST_FILE_EXTRA", Location(present[path], member=path), path=path))
    for segment in wal_needed:
        if "pg_wal/" + segment not in present:
            out.append(Finding.of("WAL_SEGMENT_MISSING", Location(uri, relation="pg_wal/" + segment), segment=segment))
    return out


def wal_ranges(manifest: BackupManifest) -> list[tuple[int, int, int]]:
    """(timeline, start LSN, end LSN) of each WAL range; a malformed one is left out (the
    manifest's own checksum tells whether it was damaged)."""
    out = []
    for entry in manifest.wal_ranges:
        try:
            out.append((int(entry["Timeline"]), _lsn(entry["Start-LSN"]), _lsn(entry["End-LSN"])))
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
    return out


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


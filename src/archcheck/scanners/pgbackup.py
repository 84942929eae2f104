"""A pg_basebackup -Ft directory verified as one backup, as pg_verifybackup takes a directory:
its tar archives (base.tar, <tablespace oid>.tar, pg_wal.tar, optionally compressed) and the
backup_manifest that lists every file with its size and checksum.

Sizes and checksums are checked as members stream past (scanners.pgmanifest); what needs all
the archives at once (files missing or not listed, WAL segments missing) is checked here, from
the members files the runs wrote. The drill runner knows a Backup only as a set of archives
that has a scan configuration per archive and a check over all of them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..sources import is_remote
from ..errors import SourceError, UsageError
from ..findings import Finding, Location
from . import ScanConfig
from .pgmanifest import BackupManifest, ignored, parse_manifest
from .wal import segments_needed

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

    def scan_config(self, archive: str, facts_of: Callable[[str], dict | None]) -> ScanConfig:
        """What the scanners of one of its archives are told: the files the manifest lists, where
        the archive's members sit, and for a tablespace or WAL tar, what base.tar's scan learnt
        of the data directory (``facts_of``: an archive's scanner facts once it is verified)."""
        prefix = self.prefix(archive)
        base = next((a for a in self.archives if Path(a).name.startswith("base.")), None)
        known = facts_of(base) if prefix and base is not None else None
        return ScanConfig(self.manifest().files, prefix, (known or {}).get(""))

    def cross_check(self, members: dict[str, Iterable[dict]]) -> list[Finding]:
        """What only the whole backup can tell: the manifest's own checksum, listed files
        missing, files present but not listed, and WAL segments missing. ``members``: archive
        -> its members."""
        uri = str(self.manifest_path)
        manifest = self.manifest()
        out = [Finding.of("PG_MANIFEST_DAMAGED", Location(uri), problem=p) for p in manifest.problems]
        present: dict[str, str] = {}  # data directory path -> archive
        for archive, listing in members.items():
            prefix = self.prefix(archive)
            for member in listing:
                if member.get("type") == "file":
                    present[prefix + member["name"].removeprefix("./")] = archive
        for path in sorted(set(manifest.files) - set(present)):
            if not ignored(path):
                out.append(Finding.of("PG_MANIFEST_FILE_MISSING", Location(uri, relation=path), path=path))
        for path in sorted(set(present) - set(manifest.files)):
            if not ignored(path):
                out.append(Finding.of("PG_MANIFEST_FILE_EXTRA", Location(present[path], member=path), path=path))
        for segment in wal_needed(manifest):
            if "pg_wal/" + segment not in present:
                out.append(Finding.of("WAL_SEGMENT_MISSING", Location(uri, relation="pg_wal/" + segment),
                                      segment=segment))
        return out


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[Backup]]:
    """Archives to verify, with each pg_basebackup directory replaced by its tar archives."""
    archives, backups = [], []
    for path in paths:
        if is_remote(path) or not path.is_dir():
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


def wal_needed(manifest: BackupManifest) -> list[str]:
    """The WAL segments that make the backup consistent: its manifest's WAL-Ranges. A manifest
    that fails its checksum is not believed (its damage is reported), nor is a range that runs
    backwards or over more than a million segments."""
    if manifest.problems:
        return []
    needed: dict[str, None] = {}
    for timeline, start, end in wal_ranges(manifest):
        if start <= end and (end - start) >> 24 <= 1_000_000:
            needed.update(dict.fromkeys(segments_needed(start, end, timeline)))
    return list(needed)


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


"""pg_basebackup's backup_manifest (formats.md 3.11): its own checksum, and each listed file's
size and checksum, computed as the file streams past inside the backup's tar archives."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import crc32c

from . import Found

# never listed, or changed by pg_basebackup -R: pg_verifybackup ignores them too
IGNORED = ("backup_manifest", "pg_wal", "postgresql.auto.conf", "standby.signal", "recovery.signal")
ALGORITHMS = {"CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"}


@dataclass(frozen=True)
class Listed:
    size: int
    algorithm: str | None
    checksum: str | None


@dataclass
class BackupManifest:
    files: dict[str, Listed] = field(default_factory=dict)
    wal_ranges: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the manifest itself is damaged


def parse_manifest(data: bytes) -> BackupManifest:
    manifest = BackupManifest()
    last = data.rfind(b"\n", 0, len(data) - 1)
    if not data.endswith(b"\n") or last < 0:
        manifest.problems.append("it does not end with a newline after its checksum line")
    try:
        body = json.loads(data)
    except ValueError as exc:
        manifest.problems.append(f"it is not JSON ({exc})")
        return manifest
    if not isinstance(body, dict) or next(iter(body), None) != "PostgreSQL-Backup-Manifest-Version":
        manifest.problems.append("its first key is not PostgreSQL-Backup-Manifest-Version")
        return manifest
    stated = body.get("Manifest-Checksum")
    actual = hashlib.sha256(data[:last + 1]).hexdigest() if last >= 0 else None
    if stated != actual:
        manifest.problems.append(f"Manifest-Checksum is {stated}, its content hashes to {actual}")
    for entry in body.get("Files", []):
        try:
            path = entry["Path"] if "Path" in entry else bytes.fromhex(entry["Encoded-Path"]).decode(
                "utf-8", "backslashreplace")
            algorithm = entry.get("Checksum-Algorithm")
            algorithm = algorithm.upper() if algorithm else None
            manifest.files[path] = Listed(int(entry["Size"]), algorithm, entry.get("Checksum"))
        except (KeyError, TypeError, ValueError) as exc:
            manifest.problems.append(f"a file entry is malformed ({exc!r})")
    manifest.wal_ranges = [r for r in body.get("WAL-Ranges", []) if isinstance(r, dict)]
    return manifest


def ignored(path: str) -> bool:
    top = path.split("/", 1)[0]
    return top in IGNORED


class _Crc32c:
    def __init__(self):
        self.value = 0

    def update(self, data) -> None:
        self.value = crc32c.crc32c(data, value=self.value)

    def hexdigest(self) -> str:
        return self.value.to_bytes(4, "little").hex()  # as the server stores it: little-endian bytes


def digest(algorithm: str):
    return _Crc32c() if algorithm == "CRC32C" else hashlib.new(algorithm.lower())


class ListedFileScanner:
    """Size and checksum of one file the manifest lists, as its content streams past."""

    def __init__(self, path: str, listed: Listed, size: int):
        self.path, self.listed, self.size = path, listed, size
        self.hash = digest(listed.algorithm) if listed.algorithm in ALGORITHMS else None
        self.found: list[Found] = []

    def feed(self, view: memoryview, offset: int) -> None:
        if self.hash is not None:
            self.hash.update(view)

    def close(self, complete: bool) -> None:
        where = {"relation": self.path}
        if self.size != self.listed.size:
            self.found.append(Found("PG_MANIFEST_FILE_SIZE", 0, self.size, where,
                                    {"path": self.path, "actual": self.size, "expected": self.listed.size}))
        elif complete and self.hash is not None and self.hash.hexdigest() != (self.listed.checksum or "").lower():
            self.found.append(Found("PG_MANIFEST_FILE_CHECKSUM", 0, self.size, where,
                                    {"path": self.path, "algorithm": self.listed.algorithm,
                                     "actual": self.hash.hexdigest(), "expected": self.listed.checksum}))

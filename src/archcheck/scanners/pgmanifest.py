"""pg_basebackup's backup_manifest (formats.md 3.11): its own checksum and the files it lists.
Each listed file's size and checksum are computed by the native core as the file streams past
inside the backup's tar archives."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


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

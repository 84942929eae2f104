"""The manifest: the single source of truth of one verification, saved atomically.

Reports, resume and baselines are all derived from it. Saving writes a temporary file,
fsyncs it, renames it over the old one and fsyncs the directory: a crash at any instant
leaves either the previous manifest or the new one, never a torn file.
"""
from __future__ import annotations

import json
import os
import tempfile

import blake3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

from .errors import StateError
from .findings import Finding
from .segments import Segment
from .sources import ArchiveIdentity

SCHEMA = "archcheck.manifest"


def members_file(nonce: str) -> str:
    """The members file of one stream attempt, beside the manifest: the manifest names the one
    that counts; a resumed attempt goes on writing its own."""
    return f"members-{nonce}.jsonl"

VERSION = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class SegmentRecord:
    index: int
    offset: int
    length: int
    nonce: str
    attempt: int = 0
    status: str = "pending"  # pending, done, failed
    digest: str | None = None
    leaves: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    read_at: str | None = None  # when its leaves were read: a later read that differs names it

    @classmethod
    def planned(cls, segment: Segment) -> "SegmentRecord":
        return cls(segment.index, segment.offset, segment.length, segment.nonce)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "offset": self.offset, "length": self.length, "nonce": self.nonce,
                "attempt": self.attempt, "status": self.status, "digest": self.digest,
                "leaves": self.leaves, "findings": [f.to_json() for f in self.findings], "read_at": self.read_at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SegmentRecord":
        return cls(d["index"], d["offset"], d["length"], d["nonce"], d["attempt"], d["status"],
                   d.get("digest"), list(d.get("leaves", [])), [Finding.from_json(f) for f in d.get("findings", [])],
                   d.get("read_at"))


@dataclass
class Manifest:
    run_id: str
    archive: ArchiveIdentity
    format: str
    config: dict[str, Any]
    segments: list[SegmentRecord]
    stream: dict[str, Any] = field(default_factory=dict)
    stream_findings: list[Finding] = field(default_factory=list)
    members: dict[str, Any] = field(default_factory=dict)  # {"file", "count", "fields"}
    run_findings: list[Finding] = field(default_factory=list)  # about the run, not one segment
    resumes: list[dict[str, Any]] = field(default_factory=list)  # each go-on: when, rechecked or trusted
    tree_root: str | None = None
    status: str = "running"  # running, complete, interrupted, stopped (deadline), partial (budget)
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)

    @property
    def findings(self) -> list[Finding]:
        out = [f for seg in self.segments for f in seg.findings]
        return out + self.stream_findings + self.run_findings

    def to_json(self) -> dict[str, Any]:
        from . import __version__
        return {
            "schema": SCHEMA, "version": VERSION, "archcheck_version": __version__,
            "run_id": self.run_id, "status": self.status, "created": self.created, "updated": self.updated,
            "archive": self.archive.to_json(), "format": self.format, "config": self.config,
            "tree_root": self.tree_root,
            "segments": [s.to_json() for s in self.segments],
            "stream": self.stream, "stream_findings": [f.to_json() for f in self.stream_findings],
            "run_findings": [f.to_json() for f in self.run_findings],
            "resumes": self.resumes,
            "members": self.members,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        if d.get("schema") != SCHEMA or d.get("version") != VERSION:
            raise StateError(f"not an archcheck manifest of version {VERSION}")
        try:
            return cls(d["run_id"], ArchiveIdentity(**d["archive"]), d["format"], d["config"],
                       [SegmentRecord.from_json(s) for s in d["segments"]], d.get("stream", {}),
                       [Finding.from_json(f) for f in d.get("stream_findings", [])],
                       d.get("members", {}), [Finding.from_json(f) for f in d.get("run_findings", [])],
                       d.get("resumes", []), d.get("tree_root"), d["status"], d["created"], d["updated"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"manifest is damaged: {exc}") from None

    def save(self, path: Path) -> None:
        self.updated = utc_now()
        write_atomic(path, sealed_json(self.to_json()))


def iter_members(manifest: Manifest, manifest_path: Path) -> Iterator[dict[str, Any]]:
    """The members recorded beside a manifest, as dicts, read one batch at a time."""
    info = manifest.members
    if not info:
        return
    fields = info["fields"]
    with open(Path(manifest_path).parent / info["file"], encoding="utf-8") as f:
        for line in f:
            for record in json.loads(line):
                yield {k: v for k, v in zip(fields, record) if v not in (None, "") or k == "digest"}


class MembersWriter:
    """Member records arrive in batches and are written one JSON array per line, so the list of
    members is never held in memory. A failure here is the state directory's, not the archive's."""

    def __init__(self, path: Path, resume_at: int | None = None):
        """``resume_at``: continue a file written up to a checkpoint, dropping what came after."""
        self.path = path
        with self._state():
            if resume_at is None:
                self.file = open(path, "wb")
            else:
                self.file = open(path, "r+b")
                self.file.truncate(resume_at)
                self.file.seek(resume_at)

    def write(self, members: list) -> None:
        with self._state():
            self.file.write(json.dumps(members, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")

    def sync(self) -> int:
        """Make what was written durable; returns its length, for a checkpoint."""
        with self._state():
            self.file.flush()
            os.fsync(self.file.fileno())
            return self.file.tell()

    def close(self) -> None:
        self.sync()
        with self._state():
            self.file.close()

    @contextmanager
    def _state(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import: os.umask is process-wide and threads write files


def load(path: Path) -> Manifest:
    return Manifest.from_json(read_sealed(path, "manifest"))


def sealed_json(body: dict[str, Any]) -> bytes:
    """State as JSON with a BLAKE3 digest of the rest in front: a file damaged on disk or edited
    by hand no longer matches it, and is refused rather than trusted."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return b'{"integrity":"' + blake3.blake3(data).hexdigest().encode() + b'",' + data[1:]


def read_sealed(path: Path, what: str) -> dict[str, Any]:
    try:
        body = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise StateError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise StateError(f"{what} {path} is damaged (not valid JSON); it cannot be trusted") from None
    stated = body.pop("integrity", None) if isinstance(body, dict) else None
    actual = blake3.blake3(json.dumps(body, separators=(",", ":")).encode()).hexdigest()
    if stated != actual:
        raise StateError(f"{what} {path} is damaged or was edited (its integrity digest does not match); "
                         "it cannot be trusted")
    return body


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` whole or not at all: temp file in the same directory,
    fsync, rename, fsync the directory."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; the file should look like any other
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

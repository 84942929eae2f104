"""The manifest: the single source of truth of one verification, saved atomically.

Reports, resume and baselines are all derived from it. Saving writes a temporary file,
fsyncs it, renames it over the old one and fsyncs the directory: a crash at any instant
leaves either the previous manifest or the new one, never a torn file. What grows with the
archive (segment results, the frame table, members) lives in append-only logs beside it
(logs.py): the manifest names their parts, so a save costs the same whatever the archive.
"""
from __future__ import annotations

import enum
import json
import os
import stat
import sys
import tempfile

import blake3
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

from .errors import StateError
from .findings import Finding
from .logs import LogPart, LogWriter, parts_from_json, parts_json, read_json
from .segments import Segment, new_nonce, plan_segments
from .sources import ArchiveIdentity

SCHEMA = "archcheck.manifest"
VERSION = 2  # 2: segment results, frame table and members in logs beside the manifest
LOG_PREFIXES = ("segments", "members", "frames")


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
    seconds: float | None = None  # how long hashing it took (the latency metric); None in older manifests

    @classmethod
    def planned(cls, segment: Segment) -> "SegmentRecord":
        return cls(segment.index, segment.offset, segment.length, segment.nonce)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "offset": self.offset, "length": self.length, "nonce": self.nonce,
                "attempt": self.attempt, "status": self.status, "digest": self.digest,
                "leaves": self.leaves, "findings": [f.to_json() for f in self.findings], "read_at": self.read_at,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SegmentRecord":
        return cls(d["index"], d["offset"], d["length"], d["nonce"], d["attempt"], d["status"],
                   d.get("digest"), list(d.get("leaves", [])), [Finding.from_json(f) for f in d.get("findings", [])],
                   d.get("read_at"), d.get("seconds"))


class StreamStatus(str, enum.Enum):
    """Where the stream check (zstd, tar, members, pages) of an archive stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # its reads failed twice: a transient finding says so
    STOPPED = "stopped"  # time or budget ran out: resumable from its checkpoint


@dataclass(frozen=True)
class StreamSummary:
    """What a finished stream check found the archive to be."""

    frames: int
    skippable_frames: int
    checksummed_frames: int
    max_window: int
    seekable: bool
    uncompressed_size: int
    member_count: int

    @classmethod
    def of(cls, result: Any) -> "StreamSummary":
        """From a stream check's result (or anything with these attributes)."""
        return cls(**{f.name: getattr(result, f.name) for f in fields(cls)})


@dataclass
class StreamState:
    """The stream check's state in the manifest, one owner for what the pipeline, coverage,
    resume and reports read of it. ``checkpoint`` is the check's own (layers/stream.py writes
    and reads it), with the names of the member and frame logs it covers; ``summary``,
    ``scanners`` and ``frame_table`` are set once it is done."""

    status: StreamStatus | None = None  # None: not begun
    nonce: str | None = None
    attempt: int = 0
    resumed: int = 0
    checkpoint: dict[str, Any] | None = None
    summary: StreamSummary | None = None
    scanners: dict[str, Any] = field(default_factory=dict)  # what the database scanners learnt
    frame_table: dict[str, Any] | None = None  # {"fields", "log"}

    @classmethod
    def started(cls, attempt: int) -> "StreamState":
        return cls(StreamStatus.RUNNING, new_nonce(), attempt)

    @property
    def settled(self) -> bool:
        """Nothing more to do: done, or failed for good."""
        return self.status in (StreamStatus.DONE, StreamStatus.FAILED)

    def covered(self, size: int) -> int:
        """Archive bytes before which the stream check has checked everything."""
        if self.status is StreamStatus.DONE:
            return size
        return (self.checkpoint or {}).get("covered", 0)

    def found_so_far(self) -> list[Finding]:
        """What a check that has not ended found before its last checkpoint: a run stopped by
        its deadline, budget or a signal still reports it (the walk's own findings, made again
        by every run, only where decoding named them)."""
        checkpoint = self.checkpoint or {}
        named = [Finding.from_json(f) for _, f in checkpoint.get("walk_named", ())]
        found = [*checkpoint.get("findings", ()), *checkpoint.get("hazards", ())]
        return named + [Finding.from_json(f) for f in found]

    def log_refs(self) -> list[Any]:
        """The logs it names: the frame table's, and those its checkpoint covers."""
        checkpoint = self.checkpoint or {}
        return [(self.frame_table or {}).get("log"), checkpoint.get("members"), checkpoint.get("frames")]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.status is None else {"status": self.status.value}
        for key in ("nonce", "checkpoint", "frame_table"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("attempt", "resumed"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.summary is not None:
            out.update(asdict(self.summary), scanners=self.scanners)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StreamState":
        names = [f.name for f in fields(StreamSummary)]
        summary = StreamSummary(**{k: d[k] for k in names}) if all(k in d for k in names) else None
        return cls(StreamStatus(d["status"]) if "status" in d else None, d.get("nonce"), d.get("attempt", 0),
                   d.get("resumed", 0), d.get("checkpoint"), summary, d.get("scanners") or {}, d.get("frame_table"))


@dataclass
class Manifest:
    run_id: str
    archive: ArchiveIdentity
    format: str
    config: dict[str, Any]
    segments: list[SegmentRecord]
    stream: StreamState = field(default_factory=StreamState)
    stream_findings: list[Finding] = field(default_factory=list)
    members: dict[str, Any] = field(default_factory=dict)  # {"log": parts, "count", "fields"}
    run_findings: list[Finding] = field(default_factory=list)  # about the run, not one segment
    resumes: list[dict[str, Any]] = field(default_factory=list)  # each go-on: when, rechecked or trusted
    tree_root: str | None = None
    status: str = "running"  # running, complete, interrupted, stopped (deadline), partial (budget)
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)
    segment_parts: tuple[LogPart, ...] = ()  # the segment log as earlier runs left it
    segment_log: LogWriter | None = field(default=None, repr=False, compare=False)

    def bind(self, folder: Path) -> None:
        """Where the manifest lives: segment results are logged beside it from now on."""
        if self.segment_log is None or self.segment_log.folder != Path(folder):
            earlier = self.segment_log.parts() if self.segment_log is not None else self.segment_parts
            if self.segment_log is not None:
                self.segment_log.close()
            self.segment_log = LogWriter(Path(folder), "segments", earlier)

    def record_segment(self, record: SegmentRecord) -> None:
        """Log a segment's new state (the latest line of an index wins)."""
        self.segment_log.append_json(record.to_json())

    def log_parts(self) -> list[LogPart]:
        """Every log part the manifest names (to share them with another drill's folder)."""
        parts = list(self.segment_log.parts() if self.segment_log else self.segment_parts)
        for ref in (self.members.get("log"), *self.stream.log_refs()):
            parts += parts_from_json(ref)
        return parts

    @property
    def findings(self) -> list[Finding]:
        out = [f for seg in self.segments for f in seg.findings]
        # a changed archive's checkpoint judged bytes that are no longer there
        ended = self.stream_findings or self.stream.settled or self.status == "changed"
        stream = self.stream_findings if ended else self.stream.found_so_far()
        return out + stream + self.run_findings

    @property
    def dead_letters(self) -> list[dict[str, Any]]:
        """Segments whose reads still failed after their retries, with the last error: what a
        resume reads again, and only that."""
        return [{"segment": s.index, "offset": s.offset, "length": s.length, "attempts": s.attempt,
                 "error": next((dict(f.details).get("error") for f in s.findings), None)}
                for s in self.segments if s.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        from . import __version__
        return {
            "schema": SCHEMA, "version": VERSION, "archcheck_version": __version__,
            "run_id": self.run_id, "status": self.status, "created": self.created, "updated": self.updated,
            "archive": self.archive.to_json(), "format": self.format, "config": self.config,
            "tree_root": self.tree_root,
            "dead_letters": self.dead_letters,
            "segments": {"count": len(self.segments),
                         "log": parts_json(self.segment_log.parts() if self.segment_log else self.segment_parts)},
            "stream": self.stream.to_json(), "stream_findings": [f.to_json() for f in self.stream_findings],
            "run_findings": [f.to_json() for f in self.run_findings],
            "resumes": self.resumes,
            "members": self.members,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path) -> "Manifest":
        """``folder``: where its logs are."""
        if d.get("schema") != SCHEMA or d.get("version") != VERSION:
            raise StateError(f"not an archcheck manifest of version {VERSION} (written by another "
                             "archcheck version?): start a new drill")
        try:
            archive = ArchiveIdentity(**d["archive"])
            parts = parts_from_json(d["segments"]["log"])
            segments = _segments(archive.size, d["config"].get("segment_size"), d["segments"]["count"], folder, parts)
            return cls(d["run_id"], archive, d["format"], d["config"], segments,
                       StreamState.from_json(d.get("stream", {})),
                       [Finding.from_json(f) for f in d.get("stream_findings", [])],
                       d.get("members", {}), [Finding.from_json(f) for f in d.get("run_findings", [])],
                       d.get("resumes", []), d.get("tree_root"), d["status"], d["created"], d["updated"], parts)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"manifest is damaged: {exc}") from None

    def save(self, path: Path) -> None:
        self.updated = utc_now()
        self.bind(Path(path).parent)
        self.segment_log.sync()
        write_atomic(path, sealed_json(self.to_json()))


def _segments(size: int, segment_size: int | None, count: int, folder: Path, parts: tuple[LogPart, ...]
              ) -> list[SegmentRecord]:
    """The plan, with every logged result laid over it (the latest line of an index wins)."""
    records = [SegmentRecord.planned(s) for s in plan_segments(size, segment_size)] if count else []
    if len(records) != count:
        raise ValueError(f"{count} segments do not plan an archive of {size} bytes")
    for line in read_json(folder, parts):
        record = SegmentRecord.from_json(line)
        records[record.index] = record
    return records


def iter_members(manifest: Manifest, manifest_path: Path) -> Iterator[dict[str, Any]]:
    """The members recorded beside a manifest, as dicts, read one batch at a time."""
    info = manifest.members
    if not info:
        return
    fields = info["fields"]
    for batch in read_json(Path(manifest_path).parent, parts_from_json(info["log"])):
        for record in batch:
            yield {k: v for k, v in zip(fields, record) if v not in (None, "") or k == "digest"}


def frame_rows(manifest: Manifest, manifest_path: Path) -> Iterator[list]:
    """The frame table (fields in ``manifest.stream.frame_table["fields"]``), row by row."""
    table = manifest.stream.frame_table or {}
    for rows in read_json(Path(manifest_path).parent, parts_from_json(table.get("log"))):
        yield from rows


class MembersWriter:
    """Member records arrive in batches and are logged one JSON array per line, so the list of
    members is never held in memory. A failure here is the state directory's, not the archive's."""

    def __init__(self, folder: Path, earlier: tuple[LogPart, ...] = ()):
        """``earlier``: the parts a checkpoint names; what comes after them goes to a new part."""
        self.log = LogWriter(folder, "members", earlier)

    def write_line(self, line: bytes) -> None:
        """A batch as one JSON array (the core writes it so)."""
        self.log.append(line + b"\n")

    def sync(self) -> tuple[LogPart, ...]:
        """Make what was written durable; its parts, for a checkpoint."""
        return self.log.sync()

    def close(self) -> None:
        self.log.close()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import: os.umask is process-wide and threads write files


def load(path: Path) -> Manifest:
    return Manifest.from_json(read_sealed(path, "manifest"), Path(path).parent)


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
def output_file(path: Path) -> Iterator[BinaryIO]:
    """Where a user sends an output (a report, JUnit XML, metrics). "-" is standard output. A
    path that is a symlink or no regular file (/dev/stdout, /dev/null, a pipe) is written into,
    never replaced: an atomic write renames a new file over the path, which as root replaced
    /dev/stdout or /dev/null themselves. Any other appears whole or not at all (atomic_file)."""
    if str(path) == "-":
        try:
            sys.stdout.flush()  # what the text layer holds goes first
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise  # a reader that stopped reading: the CLI's to handle
        except OSError as exc:  # a full disk under > report.json
            raise StateError(f"cannot write standard output: {exc.strerror or exc}") from None
        return
    if not written_into(path):
        with atomic_file(path) as f:
            yield f
        return
    try:
        with open(path, "wb") as f:
            yield f
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from None


def written_into(path: Path) -> bool:
    """Whether an output at ``path`` is written into rather than renamed over (output_file)."""
    try:
        return not stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from None


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

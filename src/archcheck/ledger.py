"""Sealed drill reports and the audit ledger that vouches for them.

A finished drill's JSON report is written once to ``reports/<drill>.json`` and made read-only;
its BLAKE3 digest is then appended to ``audit/ledger.jsonl``, one JSON entry a line, each
entry carrying the hash of the one before it. Editing, removing or reordering an entry breaks
the chain; editing or deleting a report breaks its digest. ``verify_ledger`` finds both.

Every write happens under an exclusive lock on ``audit/ledger.lock``, held from before the
report is written until its entry is appended: two processes never chain onto the same entry,
and ``verify_ledger`` (which takes the lock shared, briefly) sees reports and entries agree.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

import blake3

from .errors import StateError

REPORTS = "reports"
AUDIT = "audit"
LEDGER = "ledger.jsonl"
LOCK = "ledger.lock"
GENESIS = "0" * 64  # the "previous hash" of the first entry
FIELDS = ("seq", "time", "drill", "report", "report_blake3", "prev", "hash")
LINE_LIMIT = 64 * 1024  # an entry is ~350 bytes: a longer line is damage, and is not read whole
CHUNK = 1024 * 1024
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
# A drill id becomes a file name: no separators, and no leading dot (temp files start with one)
_DRILL_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    time: str  # RFC 3339, UTC, seconds: 2024-05-01T12:00:00Z
    drill: str
    report: str  # relative to the state root: reports/drill-42.json
    report_blake3: str
    prev: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


@dataclass
class AuditResult:
    """What ``verify_ledger`` found. ``head`` is the hash of the last entry: record it somewhere
    else (a ticket, a log, another machine). Deleting the newest entry together with its report
    leaves a shorter chain that is consistent in itself, which nothing inside the state
    directory can tell apart from the real one; only an earlier head kept outside can."""

    entries: int = 0
    head: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def seal_report(root: Path, drill_id: str, data: bytes, now: datetime | None = None) -> LedgerEntry:
    """Write a drill's final report once and append its digest to the ledger.

    Safe to call again after a crash: an identical report already sealed returns its entry, or
    gets the entry it is missing. A different report for the same drill is refused."""
    check_drill_id(drill_id)
    root = Path(root)
    rel = f"{REPORTS}/{drill_id}.json"
    digest = blake3.blake3(data).hexdigest()
    with _state_errors(f"cannot seal {drill_id}'s report in {root}"), _locked(root, exclusive=True):
        ledger = root / AUDIT / LEDGER
        created = not ledger.exists()
        fd = os.open(ledger, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if created:
                _fsync_dir(ledger.parent)
            # Checked before the report is written, so a refusal leaves no report behind
            last = _last_entry(fd, ledger)
            if not _write_once(root / rel, data):
                _same_report_or_refuse(root / rel, drill_id, digest)
                sealed = _find_entry(ledger, drill_id)
                if sealed is not None:
                    if sealed.report_blake3 != digest:
                        raise StateError(
                            f"{drill_id} has a ledger entry already (seq {sealed.seq}) with another "
                            f"report digest; run `archcheck audit verify`")
                    return sealed
                # else: a crash came between the report and its entry; append the entry now
            entry = _next_entry(last, drill_id, rel, digest, now)
            _append(fd, ledger, entry)
            return entry
        finally:
            os.close(fd)


def verify_ledger(root: Path) -> AuditResult:
    """Check the whole chain and every report it names; problems are one-line sentences.

    The ledger is streamed one line at a time: it grows forever."""
    root = Path(root)
    result = AuditResult()
    ledger = root / AUDIT / LEDGER
    with _state_errors(f"cannot audit {root}"):
        # A consistent snapshot: the ledger's length and the reports present, taken together
        # under the lock, so a seal running meanwhile is neither half-seen nor flagged
        with _locked(root, exclusive=False):
            size = ledger.stat().st_size if ledger.exists() else 0
            unclaimed = _report_files(root)
        if size:
            with open(ledger, "rb") as f:
                _verify_lines(root, f, size, result, unclaimed)
    # Reports left unclaimed by any entry: the entry was removed (or a seal crashed midway)
    for rel in sorted(unclaimed):
        result.problems.append(f"{rel} has no ledger entry (entry removed?)")
    return result


def check_drill_id(drill_id: str) -> None:
    if not isinstance(drill_id, str) or not _DRILL_ID.fullmatch(drill_id):
        raise StateError(f"{drill_id!r} is not a valid drill id (letters, digits, '.', '_', '-'; "
                         f"not starting with '.')")


def entry_hash(entry: dict[str, Any]) -> str:
    """BLAKE3 of the canonical JSON of an entry without its own ``hash``."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return blake3.blake3(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- sealing -------------------------------------------------------------------------------------

def _write_once(path: Path, data: bytes) -> bool:
    """Create ``path`` read-only with ``data``, whole or not at all; False if it exists already.

    os.link, unlike rename, refuses to replace an existing name: a sealed report is never
    overwritten, even by a concurrent writer that bypassed the lock."""
    _make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o444)
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
        # Also when it existed: a crash may have come before this fsync
        _fsync_dir(path.parent)
        return created
    finally:
        os.unlink(tmp)


def _same_report_or_refuse(path: Path, drill_id: str, digest: str) -> None:
    existing = _file_digest(path)
    if existing != digest:
        raise StateError(f"{drill_id}'s report is sealed already and differs: {REPORTS}/{path.name} "
                         f"has BLAKE3 {existing[:16]}…, the new report {digest[:16]}…")


def _find_entry(ledger: Path, drill_id: str) -> LedgerEntry | None:
    with open(ledger, "rb") as f:
        for _, raw in _lines(f, os.fstat(f.fileno()).st_size):
            entry = _parse(raw)
            if isinstance(entry, LedgerEntry) and entry.drill == drill_id:
                return entry
    return None


def _last_entry(fd: int, ledger: Path) -> LedgerEntry | None:
    """The last entry, read backwards from the end; None for an empty ledger.

    Refuses a torn or damaged last line: an entry appended after it would chain onto garbage."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    damaged = StateError(f"{ledger}: the last line is torn or damaged (a crash while appending?); "
                         f"run `archcheck audit verify` before sealing more reports")
    if os.pread(fd, 1, size - 1) != b"\n":
        raise damaged
    chunks, pos, length = [], size - 1, 0  # the final newline is not part of the line
    while pos > 0 and length <= LINE_LIMIT:
        n = min(CHUNK, pos)
        pos -= n
        chunk = os.pread(fd, n, pos)
        cut = chunk.rfind(b"\n")
        chunks.append(chunk[cut + 1:])
        length += len(chunks[-1])
        if cut >= 0:
            break
    entry = _parse(b"".join(reversed(chunks)))
    if not isinstance(entry, LedgerEntry):
        raise damaged
    return entry


def _next_entry(last: LedgerEntry | None, drill_id: str, rel: str, digest: str,
                now: datetime | None) -> LedgerEntry:
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    time = now.astimezone(timezone.utc).strftime(TIME_FORMAT)
    if last is not None and _valid_time(last.time):
        # A clock stepped back must not make a genuine entry look like tampering
        time = max(time, last.time)
    body = {"seq": last.seq + 1 if last else 1, "time": time, "drill": drill_id, "report": rel,
            "report_blake3": digest, "prev": last.hash if last else GENESIS}
    return LedgerEntry(**body, hash=entry_hash(body))


def _append(fd: int, ledger: Path, entry: LedgerEntry) -> None:
    # One write on an O_APPEND descriptor: the line lands whole at the end, or (crash) torn
    # at the end, where verify and the next seal see it
    line = (json.dumps(entry.to_json(), separators=(",", ":")) + "\n").encode()
    written = os.write(fd, line)
    if written != len(line):
        raise StateError(f"{ledger}: short write ({written} of {len(line)} bytes); "
                         f"run `archcheck audit verify`")
    os.fsync(fd)


# -- verifying -----------------------------------------------------------------------------------

def _verify_lines(root: Path, f: BinaryIO, size: int, result: AuditResult, unclaimed: set[str]) -> None:
    real_root = root.resolve()
    expected_seq, prev_hash, prev_time = 1, GENESIS, None  # prev_hash None: unknown (bad line)
    for lineno, raw in _lines(f, size):
        entry = _parse(raw)
        if not isinstance(entry, LedgerEntry):
            result.problems.append(f"line {lineno}: {entry}")
            expected_seq, prev_hash = expected_seq + 1, None
            continue
        result.entries += 1
        result.head = entry.hash
        at = f"line {lineno} ({entry.drill})"
        if not raw.endswith(b"\n"):
            result.problems.append(f"{at}: no end of line (torn write?)")
        own = entry_hash(entry.to_json()) == entry.hash
        if not own:
            result.problems.append(f"{at}: entry was edited (hash does not match its content)")
        if entry.seq != expected_seq:
            result.problems.append(f"{at}: sequence number {entry.seq}, expected {expected_seq}")
        if prev_hash is not None and entry.prev != prev_hash:
            before = f"line {lineno - 1}" if lineno > 1 else "the start of the chain"
            result.problems.append(
                f"{at}: previous hash does not match {before}: an entry was removed or reordered")
        if not _valid_time(entry.time):
            result.problems.append(f"{at}: time {entry.time!r} is not an RFC 3339 UTC time")
        elif prev_time is not None and entry.time < prev_time[1]:
            result.problems.append(f"{at}: time goes backwards ({entry.time} is before "
                                   f"line {prev_time[0]}'s {prev_time[1]})")
        else:
            prev_time = (lineno, entry.time)
        # Resynchronise on what this line says, so one bad line is one problem, not a cascade
        expected_seq, prev_hash = entry.seq + 1, entry.hash
        problem = _check_report(root, real_root, entry, unclaimed, compare=own)
        if problem:
            result.problems.append(f"{at}: {problem}")


def _check_report(root: Path, real_root: Path, entry: LedgerEntry, unclaimed: set[str],
                  compare: bool) -> str | None:
    rel = PurePosixPath(entry.report)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return f"report path {entry.report!r} leaves the state directory (not read)"
    unclaimed.discard(str(rel))
    path = root / rel
    try:
        if not path.resolve().is_relative_to(real_root):
            return f"report {rel} links outside the state directory (not read)"
        if not stat.S_ISREG(os.stat(path).st_mode):
            return f"report {rel} is not a regular file"
        # An edited entry's digest proves nothing: its report is not blamed for differing
        if compare and _file_digest(path) != entry.report_blake3:
            return f"report {rel} was edited (digest differs)"
    except FileNotFoundError:
        return f"report {rel} is missing"
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return f"report {rel} cannot be read: {getattr(exc, 'strerror', None) or exc}"
    return None


def _report_files(root: Path) -> set[str]:
    try:
        names = os.listdir(root / REPORTS)
    except FileNotFoundError:
        return set()
    # Dot files are a crashed seal's temp files, not reports
    return {f"{REPORTS}/{n}" for n in names if n.endswith(".json") and not n.startswith(".")}


def _parse(raw: bytes | None) -> LedgerEntry | str:
    """A line as an entry, or why it is not one (None: a line too long to be one)."""
    try:
        obj = json.loads(raw) if raw is not None else None
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        return "not a JSON object (torn or edited)"
    bad = sorted(set(obj) ^ set(FIELDS))  # missing or unexpected
    for k in FIELDS:
        kind = int if k == "seq" else str
        if k in obj and (not isinstance(obj[k], kind) or isinstance(obj[k], bool)):
            bad.append(k)
    if not bad and not _DRILL_ID.fullmatch(obj["drill"]):
        bad = ["drill"]  # it names files and appears in messages
    if bad:
        return f"not a ledger entry (bad or missing fields: {', '.join(bad)})"
    return LedgerEntry(**{k: obj[k] for k in FIELDS})


def _lines(f: BinaryIO, size: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) over the first ``size`` bytes; None for a line too long to be an
    entry, which is skipped without being held in memory."""
    remaining, lineno = size, 0
    while remaining > 0:
        raw = f.readline(min(LINE_LIMIT + 1, remaining))
        if not raw:
            return
        remaining -= len(raw)
        lineno += 1
        if len(raw) > LINE_LIMIT:
            while remaining > 0 and not raw.endswith(b"\n"):
                raw = f.readline(min(CHUNK, remaining))
                if not raw:
                    break
                remaining -= len(raw)
            yield lineno, None
        else:
            yield lineno, raw


def _valid_time(text: str) -> bool:
    if not _TIME.fullmatch(text):
        return False
    try:
        datetime.strptime(text, TIME_FORMAT)
    except ValueError:
        return False
    return True


# -- files ---------------------------------------------------------------------------------------

@contextmanager
def _locked(root: Path, exclusive: bool) -> Iterator[None]:
    """The ledger lock. Readers take it shared only if it exists: verify creates nothing."""
    path = root / AUDIT / LOCK
    if exclusive:
        _make_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    else:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _state_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StateError(f"{what}: {exc.strerror or exc}") from None


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        _fsync_dir(path.parent)  # the new directory's name must survive a crash too


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()

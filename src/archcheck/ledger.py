"""Sealed drill reports and the audit ledger that vouches for them.

A finished drill's JSON report is written once to ``reports/<drill>.json`` and made read-only;
its BLAKE3 digest is then appended to ``audit/ledger.jsonl``, one JSON entry a line, each
entry carrying the hash of the one before it. Editing, removing or reordering an entry breaks
the chain; editing or deleting a report breaks its digest. ``verify_ledger`` finds both.

Every write happens under an exclusive lock on ``audit/ledger.lock``, held from before the
report is written until its entry is appended: two processes never chain onto the same entry,
and ``verify_ledger`` (which takes the lock shared, briefly) sees reports and entries agree.

Crashes are not tampering. An entry is appended with one write and fsync; a line counts once
its end of line is there, so a crash (or a full disk) can only leave a cut-off final line with
no end of line. ``verify_ledger`` reports that as a crash, not a problem, and the next seal
sets it aside into ``audit/torn/`` (kept, never deleted) before chaining onto the last whole
entry. A failed write is undone at once (the ledger is truncated back). A crash between a
report and its entry leaves a report with no entry: when ``drills/<id>/sealed-report.json``
holds the very same bytes, the seal was merely cut off, which verify reports as a crash and
``repair_ledger`` (or sealing the drill again) finishes. ``repair_ledger`` repairs only these
two; every other problem is refused, since repairing it would hide tampering.
"""
from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator

import blake3

from .errors import StateError

REPORTS = "reports"
AUDIT = "audit"
LEDGER = "ledger.jsonl"
LOCK = "ledger.lock"
TORN = "torn"  # audit/torn/: cut-off lines set aside, kept as evidence
PENDING = "sealed-report.json"  # drills/<id>/: the report's bytes, kept before sealing (runner._seal)
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
    # What crashes left (a cut-off last line, a seal cut off before its entry): not tampering
    crashes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RepairResult:
    """What ``repair_ledger`` did, and what it would not do because it would hide tampering."""

    actions: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def seal_report(root: Path, drill_id: str, data: bytes, now: datetime | None = None, *,
                on_notice: Callable[[str], None] | None = None) -> LedgerEntry:
    """Write a drill's final report once and append its digest to the ledger.

    Safe to call again after a crash: an identical report already sealed returns its entry, or
    gets the entry it is missing. A different report for the same drill is refused. A line cut
    off by an earlier crash is set aside first, and ``on_notice`` told so. If the append fails
    (a full disk), the ledger is left as it was and a report this call wrote is removed again."""
    check_drill_id(drill_id)
    root = Path(root)
    rel = f"{REPORTS}/{drill_id}.json"
    digest = blake3.blake3(data).hexdigest()
    with _state_errors(f"cannot seal {drill_id}'s report in {root}"), _locked(root, exclusive=True):
        ledger = root / AUDIT / LEDGER
        fd = _open_ledger(ledger)
        try:
            notice = _set_aside_torn_tail(fd, root, ledger)
            if notice and on_notice:
                on_notice(notice)
            # Checked before the report is written, so a refusal leaves no report behind
            last = _last_entry(fd, ledger)
            created = _write_once(root / rel, data)
            if not created:
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
            size = os.fstat(fd).st_size
            try:
                _append(fd, ledger, entry, size)
            except StateError as exc:
                # Nothing appended: a report just written would be a report with no entry
                if created and os.fstat(fd).st_size == size and _withdraw(root / rel):
                    raise StateError(f"{exc}; its report was not kept") from None
                raise
            return entry
        finally:
            os.close(fd)


def verify_ledger(root: Path) -> AuditResult:
    """Check the whole chain and every report it names; problems are one-line sentences.
    What crashes left goes to ``crashes`` instead, and does not make the result fail.

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
        named: set[str] = set()
        if size:
            with open(ledger, "rb") as f:
                torn = _torn_tail(f.fileno(), size)
                crash = torn is not None and torn <= LINE_LIMIT
                lines, named = _verify_lines(root, f, size - torn if crash else size, result, unclaimed,
                                             lambda text, why: result.problems.append(text))
            if crash:
                result.crashes.append(
                    f"line {lines + 1}: an append was cut off by a crash ({torn} bytes, no end of "
                    f"line); the next seal or `archcheck audit repair` sets it aside")
        # Reports left unclaimed by any entry: the entry was removed, or a seal was cut off
        for rel in sorted(unclaimed):
            why, digest = _interrupted_seal(root, rel, named)
            if digest is None:
                result.problems.append(f"{rel} has no ledger entry (entry removed?)")
            else:
                result.crashes.append(why)
    return result


def set_aside_torn_tail(root: Path) -> str | None:
    """Move a final line cut off by a crash into ``audit/torn/``; what was done, or None.

    A final line with no end of line is an append a crash cut off, parseable or not: the end of
    line is what commits an entry. One longer than any entry is not, and is left in place."""
    root = Path(root)
    ledger = root / AUDIT / LEDGER
    if not ledger.exists():
        return None
    with _state_errors(f"cannot set aside the torn line of {ledger}"), _locked(root, exclusive=True):
        fd = os.open(ledger, os.O_RDWR)
        try:
            return _set_aside_torn_tail(fd, root, ledger)
        finally:
            os.close(fd)


def repair_ledger(root: Path, now: datetime | None = None) -> RepairResult:
    """Repair what a crash leaves, and only that: a cut-off last line (set aside, never deleted)
    and a report whose seal was cut off before its entry, proven by ``drills/<id>/sealed-report.json``
    holding the same bytes (its entry is appended now). Anything else is refused with why."""
    root = Path(root)
    result = RepairResult()
    ledger = root / AUDIT / LEDGER
    if not ledger.exists() and not _report_files(root):
        return result  # nothing was ever sealed: create nothing
    with _state_errors(f"cannot repair the ledger in {root}"), _locked(root, exclusive=True):
        fd = os.open(ledger, os.O_RDWR | os.O_APPEND) if ledger.exists() else None
        try:
            named: set[str] = set()
            unclaimed = _report_files(root)
            if fd is not None:
                notice = _set_aside_torn_tail(fd, root, ledger)
                if notice:
                    result.actions.append(notice)
                with open(ledger, "rb") as f:
                    _, named = _verify_lines(
                        root, f, os.fstat(fd).st_size, AuditResult(), unclaimed,
                        lambda text, why: result.refused.append(f"{text}: not repaired: {why}"))
            proven = []
            for rel in sorted(unclaimed):
                why, digest = _interrupted_seal(root, rel, named)
                if digest is None:
                    result.refused.append(f"{rel} has no ledger entry (entry removed?): not repaired: {why}")
                else:
                    proven.append((os.stat(root / rel).st_mtime_ns, rel, digest))
            if proven:
                fd = fd if fd is not None else _open_ledger(ledger)
                _append_interrupted(fd, ledger, sorted(proven), now, result)
        finally:
            if fd is not None:
                os.close(fd)
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

def _open_ledger(ledger: Path) -> int:
    """The ledger for appending, created if need be (the lock is held, so its folder exists)."""
    created = not ledger.exists()
    fd = os.open(ledger, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    if created:
        try:
            _fsync_dir(ledger.parent)
        except OSError:
            os.close(fd)
            raise
    return fd


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


def _withdraw(path: Path) -> bool:
    """Remove a report written by a seal that then failed; False if it could not be."""
    try:
        os.unlink(path)
        _fsync_dir(path.parent)
    except OSError:
        return False
    return True


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


def _torn_tail(fd: int, size: int) -> int | None:
    """The length of a final line with no end of line; None if the first ``size`` bytes end
    with a whole line or are empty. Past LINE_LIMIT it says LINE_LIMIT + 1 and reads no more."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    n = min(size, LINE_LIMIT + 1)
    cut = os.pread(fd, n, size - n).rfind(b"\n")
    return n - cut - 1 if cut >= 0 else n


def _set_aside_torn_tail(fd: int, root: Path, ledger: Path) -> str | None:
    """Copy a cut-off last line into audit/torn/, then cut the ledger back to its last whole
    line; the lock must be held. A tail longer than any entry is not a crash: left in place,
    where the next seal refuses it and verify reports it."""
    size = os.fstat(fd).st_size
    torn = _torn_tail(fd, size)
    if torn is None or torn > LINE_LIMIT:
        return None
    start = size - torn
    kept = _keep_torn(root, os.pread(fd, torn, start), start)
    # Only once the copy is durable: a crash in between leaves the line to be set aside again
    os.ftruncate(fd, start)
    os.fsync(fd)
    return f"set aside a torn ledger line left by a crash ({torn} bytes) in {kept}"


def _keep_torn(root: Path, data: bytes, offset: int) -> str:
    """Write ``data`` to a new audit/torn/<UTC time>-<offset>.bin; its path from the root."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in itertools.count(1):
        name = f"{stamp}-{offset}" + (f"-{n}" if n > 1 else "") + ".bin"
        if _write_once(root / AUDIT / TORN / name, data):  # never replaces earlier evidence
            return f"{AUDIT}/{TORN}/{name}"
    raise AssertionError("unreachable")


def _last_entry(fd: int, ledger: Path) -> LedgerEntry | None:
    """The last entry, read backwards from the end; None for an empty ledger.

    Refuses a damaged last line: an entry appended after it would chain onto garbage. (A line
    cut off by a crash is set aside before this is asked.)"""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    damaged = StateError(f"{ledger}: the last line is damaged (not a ledger entry, and not an append "
                         f"cut off by a crash); run `archcheck audit verify` before sealing more reports")
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


def _append(fd: int, ledger: Path, entry: LedgerEntry, size: int) -> None:
    """Append ``entry``'s line to a ledger ``size`` bytes long (measured under the lock), or
    raise with the ledger back at ``size``.

    One write on an O_APPEND descriptor: the line lands whole at the end, or (crash) cut off at
    the end, where verify and the next seal see it."""
    line = (json.dumps(entry.to_json(), separators=(",", ":")) + "\n").encode()
    try:
        written = os.write(fd, line)
        if written == len(line):
            os.fsync(fd)
            return
        why = f"short write, {written} of {len(line)} bytes (disk full?)"
    except OSError as exc:
        why = exc.strerror or str(exc)
    # Undone now, rather than left for the next seal to set aside
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:
        raise StateError(f"sealing {entry.drill} failed ({why}), and what was written to {ledger} "
                         f"could not be taken back ({exc.strerror or exc}); run `archcheck audit "
                         f"verify`") from None
    raise StateError(f"sealing {entry.drill} failed ({why}); nothing was appended to {ledger}")


def _append_interrupted(fd: int, ledger: Path, proven: list[tuple[int, str, str]],
                        now: datetime | None, result: RepairResult) -> None:
    """Append the entries of reports whose seal a crash cut off, oldest report first."""
    try:
        last = _last_entry(fd, ledger)
    except StateError:
        for _, rel, _ in proven:
            result.refused.append(f"{rel} has no ledger entry: not repaired: the ledger's last line is "
                                  f"damaged, and an entry chained onto it would vouch for garbage")
        return
    for _, rel, digest in proven:
        drill_id = PurePosixPath(rel).name[:-len(".json")]
        last = _next_entry(last, drill_id, rel, digest, now)
        _append(fd, ledger, last, os.fstat(fd).st_size)
        result.actions.append(f"appended ledger entry {last.seq} for {rel}, whose seal a crash cut off "
                              f"(drills/{drill_id}/{PENDING} holds the same bytes)")


# -- verifying -----------------------------------------------------------------------------------

# Why each kind of problem is not repaired: a crash cannot cause it, so repairing it would hide it
_WHY_NOT_A_CRASH = ("a crash leaves at most part of one entry, at the very end and without its end "
                    "of line; removing this line would hide tampering")
_WHY_EDITED = "rewriting the entry would hide the edit"
_WHY_CHAIN = "re-chaining the ledger would hide the removed or reordered entries"
_WHY_TIME = "re-dating the entry would hide the change"
_WHY_REPORT = ("only a copy of the original report can restore it; re-sealing would vouch for what "
               "is there now")


def _verify_lines(root: Path, f: BinaryIO, size: int, result: AuditResult, unclaimed: set[str],
                  flag: Callable[[str, str], None]) -> tuple[int, set[str]]:
    """Check the lines in the first ``size`` bytes; each problem goes to ``flag(sentence, why
    repair would hide it)``. The number of lines and the drills their entries name."""
    real_root = root.resolve()
    expected_seq, prev_hash, prev_time = 1, GENESIS, None  # prev_hash None: unknown (bad line)
    lineno, named = 0, set()
    for lineno, raw in _lines(f, size):
        entry = _parse(raw)
        if not isinstance(entry, LedgerEntry):
            flag(f"line {lineno}: {entry}", _WHY_NOT_A_CRASH)
            expected_seq, prev_hash = expected_seq + 1, None
            continue
        result.entries += 1
        result.head = entry.hash
        named.add(entry.drill)
        at = f"line {lineno} ({entry.drill})"
        own = entry_hash(entry.to_json()) == entry.hash
        if not own:
            flag(f"{at}: entry was edited (hash does not match its content)", _WHY_EDITED)
        if entry.seq != expected_seq:
            flag(f"{at}: sequence number {entry.seq}, expected {expected_seq}", _WHY_CHAIN)
        if prev_hash is not None and entry.prev != prev_hash:
            before = f"line {lineno - 1}" if lineno > 1 else "the start of the chain"
            flag(f"{at}: previous hash does not match {before}: an entry was removed or reordered",
                 _WHY_CHAIN)
        if not _valid_time(entry.time):
            flag(f"{at}: time {entry.time!r} is not an RFC 3339 UTC time", _WHY_TIME)
        elif prev_time is not None and entry.time < prev_time[1]:
            flag(f"{at}: time goes backwards ({entry.time} is before "
                 f"line {prev_time[0]}'s {prev_time[1]})", _WHY_TIME)
        else:
            prev_time = (lineno, entry.time)
        # Resynchronise on what this line says, so one bad line is one problem, not a cascade
        expected_seq, prev_hash = entry.seq + 1, entry.hash
        problem = _check_report(root, real_root, entry, unclaimed, compare=own)
        if problem:
            flag(f"{at}: {problem}", _WHY_REPORT)
    return lineno, named


def _interrupted_seal(root: Path, rel: str, named: set[str]) -> tuple[str, str | None]:
    """Whether a report with no entry is a seal a crash cut off: (a crash note, the report's
    digest) if its drill folder holds the very same bytes, else (why not, None).

    The runner keeps the bytes in the drill folder before sealing and records the entry in
    drill.json after: a recorded entry means it was removed, not cut off."""
    drill_id = PurePosixPath(rel).name[:-len(".json")]
    if not _DRILL_ID.fullmatch(drill_id):
        return f"{rel} is not named after a drill", None
    folder = root / "drills" / drill_id
    pending = f"drills/{drill_id}/{PENDING}"
    if drill_id in named:
        return f"an entry names {drill_id} already, with another report", None
    try:
        report, kept = os.lstat(root / rel), os.lstat(folder / PENDING)
        if not (stat.S_ISREG(report.st_mode) and stat.S_ISREG(kept.st_mode)) or (
                (report.st_dev, report.st_ino) == (kept.st_dev, kept.st_ino)):
            return f"{pending} is not a file of its own", None
        digest = _file_digest(root / rel)
        if _file_digest(folder / PENDING) != digest:
            return f"{pending} holds other bytes than the report", None
        recorded = _recorded_seal(folder / "drill.json")
    except FileNotFoundError:
        return f"nothing proves its seal was merely cut off ({pending} does not exist)", None
    except (OSError, ValueError) as exc:
        return f"{pending} cannot be read: {getattr(exc, 'strerror', None) or exc}", None
    if recorded is not None:
        return (f"drills/{drill_id}/drill.json records its ledger entry ({recorded}): the entry "
                f"was removed, not cut off by a crash"), None
    return (f"{rel} has no ledger entry, but {pending} holds the same bytes: its seal was cut off by "
            f"a crash; sealing it again or `archcheck audit repair` appends the entry"), digest


def _recorded_seal(path: Path) -> str | None:
    """The ledger entry a drill's state file says its report got, if any (not trusted further:
    only a recorded entry is looked for, as a reason to refuse)."""
    try:
        state = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    sealed = state.get("sealed") if isinstance(state, dict) else None
    if not sealed:
        return None
    return f"seq {sealed.get('seq')}" if isinstance(sealed, dict) else "sealed"


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

"""Runs a drill: schedules its archives (budget order, skip policy), holds its lock, verifies
each archive through the pipeline within the deadline or budget, keeps coverage memory and
throughput, and seals the report when the drill ends."""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from . import pgbackup
from .coverage import ArchiveCoverage, CoverageStore, iso, parse_iso, record_run, unverified_bytes
from .drills import Drill, DrillArchive, DrillLock
from .errors import StateError, format_size
from .findings import VERDICTS, Finding, verdict
from .layers.detect import detect_format
from .ledger import seal_report
from .manifest import Manifest, SegmentRecord, iter_members, load, members_file, write_atomic
from .pipeline import ProgressCallback, Run, RunLimits, RunOptions
from .reports import json_report
from .scanners.router import Scanners
from .scanners.wal import segments_needed
from .segments import new_nonce, plan_segments
from .sources import ArchiveIdentity, open_source
from .units import format_duration

NoticeCallback = Callable[[str], None]
SEALABLE = ("complete", "partial")  # a drill that has ended: its report is sealed


@dataclass(frozen=True)
class Verification:
    """The outcome for one archive; everything in it is read from the manifest."""

    manifest: Manifest
    manifest_path: Path

    @property
    def findings(self) -> list[Finding]:
        return self.manifest.findings

    @property
    def verdict(self) -> str:
        return verdict(self.findings, complete=self.manifest.status in ("complete", "partial"))

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]

    def members(self) -> Iterator[dict]:
        """Every member with its digest, read from the run's members file."""
        return iter_members(self.manifest, self.manifest_path)


@dataclass
class DrillResult:
    drill: Drill
    verifications: list[tuple[DrillArchive, Verification | None]]
    coverage: dict
    notices: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        """Findings about several archives at once (a pg_basebackup directory as a whole)."""
        return [Finding.from_json(f) for f in self.drill.findings]

    @property
    def verdict(self) -> str:
        """Corruption anywhere wins; a drill cut short (deadline, signal) or a check that could
        not be made is incomplete; a budget's planned share, done, is not."""
        verdicts = {v.verdict for _, v in self.verifications if v is not None}
        verdicts.add(verdict(self.findings))
        if "corrupt" in verdicts:
            return "corrupt"
        if "incomplete" in verdicts or self.drill.status in ("stopped", "interrupted", "running"):
            return "incomplete"
        return "intact"

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]


class DrillRunner:
    """Runs a drill's archives in order (budget order when there is a budget), holding its lock."""

    def __init__(self, drill: Drill, options: RunOptions, deadline: datetime | None,
                 on_progress: ProgressCallback | None, on_notice: NoticeCallback | None,
                 now: Callable[[], datetime] | None):
        self.drill, self.options, self.on_progress = drill, options, on_progress
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.notices: list[str] = []
        self.cut_short = False  # the deadline came before every archive was reached
        self.interrupted = False  # SIGINT or SIGTERM
        self.on_notice = on_notice or (lambda text: None)
        self.coverage = CoverageStore(drill.root)
        self.backups = [pgbackup.Backup(b["folder"], tuple(b["archives"])) for b in drill.backups]
        self.deadline = None
        if deadline is None and drill.limits.get("deadline"):  # a resumed drill keeps its window
            deadline = parse_iso(drill.limits["deadline"])
            if deadline <= self.now() and drill.status not in SEALABLE:
                self.notice(f"{drill.id}'s deadline ({drill.limits['deadline']}) has passed; "
                            "give --deadline or --until to go on")
        if deadline is not None:
            self.deadline = time.monotonic() + (deadline - self.now()).total_seconds()
        budget = drill.limits.get("budget") or {}
        self.budget_bytes = budget.get("bytes")
        self.budget_deadline = time.monotonic() + budget["seconds"] if budget.get("seconds") else None

    def notice(self, text: str) -> None:
        self.notices.append(text)
        self.on_notice(text)

    def run(self) -> DrillResult:
        drill = self.drill
        if drill.status in SEALABLE:  # ended: its report is sealed, and stays as sealed
            with DrillLock(drill):
                self._seal()
            self.notice(f"{drill.id} has ended ({drill.status}); nothing to resume: start a new drill"
                        if drill.status == "partial" else f"{drill.id} is complete; nothing to resume")
            return self.result()
        with DrillLock(drill) as lock:
            if lock.previous:
                self.notice(f"took over {drill.id} from a runner that is gone ({lock.previous})")
            started = time.monotonic()
            drill.runs.append({"started": iso(self.now()), "ended": None, "status": "running"})
            drill.status = "running"
            drill.save()
            failed = True
            try:
                self._run_archives()
                failed = False
            except KeyboardInterrupt:
                failed = False
                self.interrupted = True
            finally:  # a failure (a refused archive, a state error) ends the run, never the drill
                self._finish(time.monotonic() - started, failed)
        return self.result()

    def _run_archives(self) -> None:
        todo = self._schedule()
        self._predict(todo)
        for entry, cov in todo:
            if self.deadline is not None and self.deadline <= time.monotonic():
                self.cut_short = True  # what is left stays pending, for resume
                break
            if (self.budget_bytes is not None and self.budget_bytes <= 0) or (
                    self.budget_deadline is not None and self.budget_deadline <= time.monotonic()):
                entry.status, entry.note = "deferred", "budget used up; a later drill takes it first"
                continue
            self._run_archive(entry, cov)
            self.drill.save()
            if entry.status in ("stopped", "interrupted"):
                break

    def _time_left(self) -> float | None:
        ends = [t for t in (self.deadline, self.budget_deadline) if t is not None]
        return min(ends) - time.monotonic() if ends else None

    def _schedule(self) -> list[tuple[DrillArchive, ArchiveCoverage]]:
        """What to verify, in order: with a budget, unfinished and new archives first, then the
        least recently verified; archives verified in full within the policy age are skipped."""
        skip_within = self.drill.limits.get("skip_verified_within")
        now = self.now()
        todo = []
        for entry in self.drill.archives:
            if entry.status in ("complete", "partial", "skipped"):
                continue
            cov = self.coverage.get(self._identity(entry), self.options.segment_size, now)
            self.coverage.put(cov)  # remembered from the first sight, for the age of unverified data
            if (skip_within and cov.complete and cov.in_progress is None
                    and (now - parse_iso(cov.complete)).total_seconds() < skip_within):
                entry.status = "skipped"
                entry.note = (f"unchanged and verified in full {format_duration((now - parse_iso(cov.complete)).total_seconds())}"
                              f" ago (policy: within {format_duration(skip_within)})")
                continue
            todo.append((entry, cov))
        if self.drill.limits.get("budget"):
            todo.sort(key=lambda item: _rotation_key(item[1]))
        return todo

    def _identity(self, entry: DrillArchive) -> ArchiveIdentity:
        return asyncio.run(open_source(entry.path).identity())

    def _predict(self, todo: list) -> None:
        """Warn when earlier drills' throughput says the work will not fit the time given."""
        left = self._time_left()
        rate = read_throughput(self.drill.root)
        if left is None or not rate or not todo:
            return
        pending = sum(cov.size for _, cov in todo)
        if pending / rate > left:
            self.notice(f"warning: {format_size(pending)} to verify at {format_size(rate)}/s needs about "
                        f"{format_duration(pending / rate)}, more than the {format_duration(left)} given; "
                        "the drill will stop when time is up and can be resumed")

    def _run_archive(self, entry: DrillArchive, cov: ArchiveCoverage) -> None:
        source = open_source(entry.path)
        identity = asyncio.run(source.identity())
        path = self.drill.manifest_path(entry)
        manifest = self._manifest(entry, source, identity, cov, path)
        if cov.in_progress is None or cov.in_progress.get("manifest") != str(path):
            since = cov.in_progress["since"] if cov.in_progress else iso(self.now())
            cov.in_progress = {"drill": self.drill.id, "manifest": str(path), "since": since}
        stop_offset = start = None
        if self.budget_bytes is not None:
            start = cov.size - unverified_bytes(cov, cov.in_progress["since"])
            stop_offset = start + self.budget_bytes
        left = self._time_left()
        status = "partial" if self.budget_deadline is not None and (
            self.deadline is None or self.budget_deadline < self.deadline) else "stopped"
        limits = RunLimits(time.monotonic() + left if left is not None else None, status, stop_offset)
        started = time.monotonic()
        entry.status = "running"
        self.drill.save()
        listed, prefix = pgbackup.scan_options(self.backups, entry.path)
        known = self._base_facts(entry) if prefix.startswith("pg_tblspc/") else None
        run = Run(source, manifest, path, self.options, self.on_progress, limits,
                  scanners=lambda: Scanners(listed, prefix, known))
        try:
            asyncio.run(run.run())
        finally:
            entry.status = manifest.status
            since = cov.in_progress["since"]
            newly = record_run(cov, manifest, self.options.stream, since, self.now())
            if manifest.status != "complete":
                cov.in_progress = {"drill": self.drill.id, "manifest": str(path), "since": since}
            self.coverage.put(cov)
            if self.budget_bytes is not None:  # the share planned for it, or what it took to finish
                self.budget_bytes -= (cov.size if manifest.status == "complete" else stop_offset) - start
            _update_throughput(self.drill.root, newly, time.monotonic() - started)

    def _manifest(self, entry: DrillArchive, source, identity: ArchiveIdentity, cov: ArchiveCoverage,
                  path: Path) -> Manifest:
        """This drill's manifest for the archive: the one it has (checked against the archive),
        an unfinished pass of an earlier drill to go on with, or a new plan."""
        if not path.exists() and cov.in_progress and Path(cov.in_progress["manifest"]).exists():
            _adopt(Path(cov.in_progress["manifest"]), path, self.drill.options)
        changes = _changes(ArchiveIdentity(**entry.identity), identity)
        if path.exists() and not changes:
            manifest = load(path)
            changes = _changes(manifest.archive, identity)
        if changes:
            raise StateError(f"{entry.path} changed since {self.drill.id} began ({changes}); "
                             "its results cannot be mixed with new ones: start a new drill")
        if path.exists():
            if changes:
                raise StateError(f"{entry.path} changed since {self.drill.id} began ({changes}); "
                                 "its results cannot be mixed with new ones: start a new drill")
            for record in manifest.segments:
                if record.status != "done":
                    record.nonce = new_nonce()  # an answer to an earlier run's attempt cannot count
            if manifest.status != "complete":
                manifest.status = "running"
            return manifest
        head = asyncio.run(source.read(0, 1024))
        fmt = detect_format(head, entry.path)
        segments = plan_segments(source.size, self.options.segment_size) if "raw" in self.options.layers else []
        run_id = f"{self.drill.id}/{Path(entry.manifest).parent.name}"
        return Manifest(run_id, identity, fmt, self.drill.options, [SegmentRecord.planned(s) for s in segments])

    def _finish(self, elapsed: float, failed: bool) -> None:
        drill = self.drill
        for entry in drill.archives:
            if entry.status == "running":
                entry.status = "interrupted"
        drill.status = self._final_status(failed)
        if drill.status in SEALABLE and not failed:
            drill.findings = [f.to_json() for f in self._cross_check()]
        drill.runs[-1].update(ended=iso(self.now()), status=drill.status, seconds=round(elapsed, 3))
        drill.save()
        self._seal()

    def _base_facts(self, entry: DrillArchive) -> dict | None:
        """The data directory's facts as base.tar's scan found them, for a tablespace tar."""
        for backup in self.backups:
            if entry.path not in backup.archives:
                continue
            base = next((a for a in self.drill.archives if a.path in backup.archives
                         and Path(a.path).name.startswith("base.") and a.status == "complete"), None)
            if base is not None:
                return (load(self.drill.manifest_path(base)).stream.get("scanners") or {}).get("")
        return None

    def _cross_check(self) -> list[Finding]:
        """Checks over all the archives of each pg_basebackup directory, once all are verified."""
        found = []
        for backup in self.backups:
            entries = [a for a in self.drill.archives if a.path in backup.archives]
            if any(a.status != "complete" for a in entries):
                continue
            members = {a.path: iter_members(load(self.drill.manifest_path(a)), self.drill.manifest_path(a))
                       for a in entries}
            found += pgbackup.cross_check(backup, members, _wal_needed(backup))
        return found

    def _final_status(self, failed: bool) -> str:
        """complete or partial (a budget's share done) end a drill; the rest can be resumed."""
        states = {a.status for a in self.drill.archives}
        if failed or self.interrupted:
            return "interrupted"
        if self.cut_short or "stopped" in states:
            return "stopped"
        if states & {"interrupted", "pending"}:
            return "interrupted"
        return "partial" if states & {"partial", "deferred"} else "complete"

    def _seal(self) -> None:
        """Seal the ended drill's report into the ledger. The bytes are kept in the drill folder
        first, so a crash between any two steps is finished later with the very same bytes."""
        drill = self.drill
        if drill.status not in SEALABLE or drill.sealed is not None:
            return
        pending = drill.folder / "sealed-report.json"
        if not pending.exists():
            write_atomic(pending, json_report.sealed_bytes(self.result()))
        drill.sealed = seal_report(drill.root, drill.id, pending.read_bytes(), self.now()).to_json()
        drill.save()

    def result(self) -> DrillResult:
        drill = self.drill
        verifications = []
        for entry in drill.archives:
            path = drill.manifest_path(entry)
            verifications.append((entry, Verification(load(path), path) if path.exists() else None))
        return DrillResult(drill, verifications, self._coverage_summary(), self.notices)

    def _coverage_summary(self) -> dict:
        """Across the drill's archives: the bytes verified at least once, and how long ago the least
        recently verified data was verified (or first seen, if it never was)."""
        now = self.now()
        total = verified = 0
        oldest: str | None = None
        for entry in self.drill.archives:
            try:
                identity = self._identity(entry)
            except Exception:  # noqa: BLE001 - a vanished archive has no coverage to report
                continue
            cov = self.coverage.get(identity, self.options.segment_size, now)
            total += cov.size
            verified += cov.size - unverified_bytes(cov, None)
            stamp = cov.oldest()
            oldest = stamp if oldest is None or (stamp and stamp < oldest) else oldest
        age = (now - parse_iso(oldest)).total_seconds() if oldest else None
        return {"bytes": total, "verified_bytes": verified, "oldest_unverified": oldest,
                "oldest_unverified_age_seconds": age}


def _wal_needed(backup: pgbackup.Backup) -> list[str]:
    """The WAL segments that make the backup consistent: its manifest's WAL-Ranges. A manifest
    that fails its checksum is not believed (its damage is reported), nor is a range that runs
    backwards or over more than a million segments."""
    manifest = backup.manifest()
    if manifest.problems:
        return []
    needed: dict[str, None] = {}
    for timeline, start, end in pgbackup.wal_ranges(manifest):
        if start <= end and (end - start) >> 24 <= 1_000_000:
            needed.update(dict.fromkeys(segments_needed(start, end, timeline)))
    return list(needed)


def _rotation_key(cov: ArchiveCoverage) -> tuple:
    """Unfinished or never verified first (oldest seen first), then least recently verified."""
    if cov.in_progress or cov.complete is None:
        return (0, cov.first_seen)
    return (1, cov.oldest() or "")


def _changes(before: ArchiveIdentity, now: ArchiveIdentity) -> str:
    names = {"size": "size", "mtime_ns": "modification time", "head_blake3": "first 64 KiB",
             "tail_blake3": "last 64 KiB"}
    changed = [label for key, label in names.items() if getattr(before, key) != getattr(now, key)]
    return ", ".join(changed) + " differ" if changed else ""


def _adopt(old: Path, new: Path, options: dict) -> None:
    """Go on with an earlier drill's unfinished pass: its manifest and members file, copied;
    not when it checked other layers or cut other segments (then a new pass begins)."""
    manifest = load(old)
    if any(manifest.config.get(k) != options.get(k) for k in ("layers", "segment_size", "leaf_size", "digest",
                                                              "max_window")):
        return
    new.parent.mkdir(parents=True, exist_ok=True)
    nonce = manifest.stream.get("nonce")
    if nonce and (old.parent / members_file(nonce)).exists():
        shutil.copyfile(old.parent / members_file(nonce), new.parent / members_file(nonce))
    manifest.save(new)


def read_throughput(root: Path) -> float | None:
    try:
        return float(json.loads((Path(root) / "throughput.json").read_text())["bytes_per_second"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _update_throughput(root: Path, done: int, seconds: float) -> None:
    """A moving average of verified bytes per second, for predicting later drills."""
    if seconds < 1 or done <= 0:
        return
    rate = done / seconds
    old = read_throughput(root)
    rate = rate if old is None else 0.7 * old + 0.3 * rate
    write_atomic(Path(root) / "throughput.json", json.dumps({"bytes_per_second": rate}).encode())

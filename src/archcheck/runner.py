"""Runs a drill: schedules its archives (budget order, skip policy), holds its lock, verifies
each archive through the pipeline within the deadline or budget, keeps coverage memory and
throughput, and seals the report when the drill ends."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from . import events
from .coverage import ArchiveCoverage, CoverageStore, iso, parse_iso, record_run, unverified_bytes
from .drills import Drill, DrillArchive, DrillLock
from .events import Event
from .errors import ArchcheckError, SourceChanged, StateError, format_size
from .findings import VERDICTS, Finding, verdict
from .gate import GateOutcome, load_outcomes
from .layers.detect import detect_format
from .ledger import seal_report
from .logs import link_parts
from .manifest import Manifest, SegmentRecord, StreamStatus, iter_members, load, write_atomic
from .pipeline import ProgressCallback, Run, RunLimits, RunOptions
from .reports import json_report
from .scanners import ScanConfig
from .scanners.pgbackup import Backup  # a backup set: scan configurations, a check over all
from .segments import new_nonce, plan_segments
from .sources import ArchiveIdentity, open_source
from .status import ExitCode, combine
from .units import format_duration

NoticeCallback = Callable[[str], None]
SEALABLE = ("complete", "partial")  # a drill that has ended: its report is sealed
ENDED = ("complete", "partial", "skipped", "changed")  # archives a resume does not run again


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
    seal_error: str | None = None  # the verdict stands; sealing it failed (ExitCode.SEAL_FAILED)
    state_error: str | None = None  # the drill's state could not be saved at its end
    gates: list[GateOutcome] = field(default_factory=list)  # the CI gate's judgment, when one ran
    gate_failure: tuple[str, int] | None = None  # the gate could not judge: why, and its exit code

    @property
    def findings(self) -> list[Finding]:
        """Findings about several archives at once (a pg_basebackup directory as a whole)."""
        return [Finding.from_json(f) for f in self.drill.findings]

    @property
    def verdict(self) -> str:
        """Corruption anywhere wins; a drill cut short (deadline, signal), an archive that could
        not be verified or changed, or a check that could not be made is incomplete; a budget's
        planned share, done, is not."""
        verdicts = {v.verdict for _, v in self.verifications if v is not None}
        verdicts.add(verdict(self.findings))
        if "corrupt" in verdicts:
            return "corrupt"
        if ("incomplete" in verdicts or self.drill.status in ("stopped", "interrupted", "running", "failed")
                or any(e.status in ("failed", "changed") for e, _ in self.verifications)):
            return "incomplete"
        return "intact"

    @property
    def exit_code(self) -> ExitCode:
        """Every outcome's code, combined by the documented precedence (status.PRECEDENCE)."""
        codes = [VERDICTS[self.verdict]]
        codes += [e.exit_code for e, _ in self.verifications if e.status == "failed" and e.exit_code is not None]
        if self.seal_error:
            codes.append(ExitCode.SEAL_FAILED)
        if self.state_error:
            codes.append(ExitCode.STATE)
        codes += [gate.exit_code for gate in self.gates]
        if self.gate_failure:
            codes.append(self.gate_failure[1])
        return combine(codes)


class DrillRunner:
    """Runs a drill's archives in order (budget order when there is a budget), holding its lock."""

    def __init__(self, drill: Drill, options: RunOptions, deadline: datetime | None,
                 on_progress: ProgressCallback | None, on_notice: NoticeCallback | None,
                 now: Callable[[], datetime] | None, recheck: bool = True,
                 gate: Callable[[DrillResult], tuple[str, int] | None] | None = None):
        """``gate``: judges the drill's result when the run ends, before the report is sealed
        (it saves its outcomes beside the drill); returns why it could not, if it could not."""
        self.drill, self.options, self.on_progress = drill, options, on_progress
        self.gate = gate
        self.gate_failure: tuple[str, int] | None = None
        self.recheck = recheck  # read again what earlier runs verified
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.notices: list[str] = []
        self.cut_short = False  # the deadline came before every archive was reached
        self.interrupted = False  # SIGINT or SIGTERM
        self.seal_error: str | None = None
        self.state_error: str | None = None
        self.on_notice = on_notice or (lambda text: None)
        self.ran: tuple | None = None  # the archive just run: (Verification, bytes verified, seconds)
        self.coverage = CoverageStore(drill.root)
        self.backups = [Backup(b["folder"], tuple(b["archives"])) for b in drill.backups]
        self.deadline = None
        if deadline is None and drill.limits.get("deadline"):  # a resumed drill keeps its window
            deadline = parse_iso(drill.limits["deadline"])
            if deadline <= self.now() and drill.status not in SEALABLE:
                deadline = self._new_window(deadline)
        if deadline is not None:
            self.deadline = time.monotonic() + (deadline - self.now()).total_seconds()
        budget = drill.limits.get("budget") or {}
        self.budget_bytes = budget.get("bytes")
        self.budget_deadline = time.monotonic() + budget["seconds"] if budget.get("seconds") else None

    def _new_window(self, passed: datetime) -> datetime:
        """A drill resumed after its deadline gets a window as long as its first one (a plan's
        window included), and says so; --deadline or --until give another."""
        limits = self.drill.limits
        window = limits.setdefault("window_seconds",
                                   max(1.0, (passed - parse_iso(self.drill.created)).total_seconds()))
        deadline = self.now() + timedelta(seconds=window)
        self.notice(f"{self.drill.id}'s deadline ({limits['deadline']}) has passed; this run gets a new window as "
                    f"long as its first ({format_duration(window)}), until {iso(deadline)}; --deadline or --until "
                    "give another")
        limits["deadline"] = iso(deadline)
        return deadline

    def notice(self, text: str) -> None:
        self.notices.append(text)
        with events.bound(drill=self.drill.id):  # some come before the run
            events.emit(Event.NOTICE, logging.WARNING if text.startswith("warning") else logging.INFO, message=text)
        self.on_notice(text)

    def run(self) -> DrillResult:
        with events.bound(drill=self.drill.id):
            result = self._run()
            events.emit(Event.DRILL_FINISHED, logging.INFO if result.verdict == "intact" else logging.ERROR,
                        status=result.drill.status, verdict=result.verdict, exit_code=int(result.exit_code),
                        archives=len(result.verifications))
        return result

    def _run(self) -> DrillResult:
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
            events.emit(Event.DRILL_STARTED, status="running", archives=len(drill.archives), run=len(drill.runs) + 1,
                        layers=list(self.options.layers))
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
            self._run_archive_or_fail(entry, cov)
            self.drill.save()
            if entry.status in ("stopped", "interrupted"):
                break

    def _run_archive_or_fail(self, entry: DrillArchive, cov: ArchiveCoverage) -> None:
        """Whatever stops one archive is recorded on it, and the drill goes on: an error in a
        later archive never hides an earlier one's verdict."""
        self.ran = None
        raised = True
        try:
            with events.bound(archive=entry.path):
                self._run_archive(entry, cov)
            raised = False
        except SourceChanged as exc:
            entry.status, entry.note, entry.exit_code = "changed", f"it changed {exc.what}", None
        except ArchcheckError as exc:
            entry.status, entry.note, entry.exit_code = "failed", str(exc), int(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - a bug in archcheck: said, and the drill goes on
            if os.environ.get("ARCHCHECK_DEBUG"):
                raise
            entry.status, entry.exit_code = "failed", int(ExitCode.INTERNAL)
            entry.note = f"internal error: {type(exc).__name__}: {exc} (set ARCHCHECK_DEBUG=1 for details)"
        with events.bound(archive=entry.path):  # after the outcome is known, whatever ended the run
            if self.ran is not None and not raised:
                _log_outcome(entry, *self.ran)
            else:
                events.emit(Event.ARCHIVE_FINISHED, logging.ERROR, status=entry.status, note=entry.note,
                            exit_code=entry.exit_code)
        if entry.status in ("failed", "changed"):
            self._say_failed(entry)

    def _say_failed(self, entry: DrillArchive) -> None:
        named = entry.note.startswith(f"{entry.path}: ")  # (open_source's errors name the path)
        self.notice(entry.note if named else f"{entry.path}: {entry.note}")

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
            if entry.status in ENDED:
                continue
            entry.note = entry.exit_code = None  # a failed archive is tried again
            try:
                identity = self._identity(entry)
            except ArchcheckError as exc:  # gone or unreadable since the drill began: the others go on
                entry.status, entry.note, entry.exit_code = "failed", str(exc), int(exc.exit_code)
                self._say_failed(entry)
                continue
            cov = self.coverage.get(identity, self.options.segment_size, now)
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
        return asyncio.run(open_source(entry.path, self.options.remote).identity())

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
        source = open_source(entry.path, self.options.remote)
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
        events.emit(Event.ARCHIVE_STARTED, status="running", size=identity.size, format=manifest.format,
                    segments=len(manifest.segments),
                    segments_done=sum(r.status == "done" for r in manifest.segments))
        run = Run(source, manifest, path, self.options, self.on_progress, limits,
                  scan=self._scan_config(entry), recheck=self.recheck)
        try:
            asyncio.run(run.run())
        finally:
            entry.status = manifest.status
            if manifest.status == "incomplete":  # the drill is resumable, for exactly what was not read
                entry.status, entry.exit_code = "failed", int(ExitCode.INCOMPLETE)
                entry.note = (f"{len(manifest.dead_letters)} segment(s) could not be read"
                              + (" and the stream pass failed" if manifest.stream.status is StreamStatus.FAILED else "")
                              + "; archcheck resume reads them again")
            since = cov.in_progress["since"]
            newly = 0
            if manifest.status == "changed":  # nothing verified, and no pass to go on with
                cov.in_progress = None
                entry.note = "it changed during the run: " + dict(manifest.run_findings[0].details)["what"]
            else:
                newly = record_run(cov, manifest, self.options.stream, since, self.now())
                if manifest.status != "complete":
                    cov.in_progress = {"drill": self.drill.id, "manifest": str(path), "since": since}
            self.coverage.put(cov)
            if self.budget_bytes is not None:  # the share planned for it, or what it took to finish
                self.budget_bytes -= (cov.size if manifest.status == "complete" else stop_offset) - start
            _update_throughput(self.drill.root, newly, time.monotonic() - started)
            self.ran = (Verification(manifest, path), newly, time.monotonic() - started)

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
            raise SourceChanged(f"since {self.drill.id} began ({changes}); its results cannot be mixed "
                                "with new ones: verify it in a new drill")
        if path.exists():
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
        try:
            drill.save()
        except StateError as exc:  # the verdict is still printed and reported; not sealed unsaved
            self.state_error = str(exc)
            return
        if self.gate is not None:  # judged before the seal, so the sealed report holds the gate
            self.gate_failure = self.gate(self.result())
        self._seal()

    def _scan_config(self, entry: DrillArchive) -> ScanConfig:
        """What the database scanners are told of an archive: its backup set's, if it is in one."""
        backup = next((b for b in self.backups if entry.path in b.archives), None)
        return backup.scan_config(entry.path, self._scanner_facts) if backup else ScanConfig()

    def _scanner_facts(self, archive: str) -> dict | None:
        """What the scanners learnt of an archive of this drill, once it is verified in full."""
        entry = next((a for a in self.drill.archives if a.path == archive and a.status == "complete"), None)
        return load(self.drill.manifest_path(entry)).stream.scanners if entry else None

    def _cross_check(self) -> list[Finding]:
        """Checks over all the archives of each backup set, once all are verified."""
        found = []
        for backup in self.backups:
            entries = [a for a in self.drill.archives if a.path in backup.archives]
            if any(a.status != "complete" for a in entries):
                continue
            members = {a.path: iter_members(load(self.drill.manifest_path(a)), self.drill.manifest_path(a))
                       for a in entries}
            found += backup.cross_check(members)
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
        if "failed" in states:  # resume tries those archives again
            return "failed"
        return "partial" if states & {"partial", "deferred"} else "complete"

    def _seal(self) -> None:
        """Seal the ended drill's report into the ledger. The bytes are kept in the drill folder
        first, so a crash between any two steps is finished later with the very same bytes."""
        drill = self.drill
        if drill.status not in SEALABLE or drill.sealed is not None:
            return
        try:
            pending = drill.folder / "sealed-report.json"
            if not pending.exists():
                write_atomic(pending, json_report.sealed_bytes(self.result()))
            drill.sealed = seal_report(drill.root, drill.id, pending.read_bytes(), self.now(),
                                       on_notice=self.notice).to_json()
            drill.save()
            events.emit(Event.DRILL_SEALED, status="sealed", seq=drill.sealed["seq"],
                        report=drill.sealed["report"], ledger_hash=drill.sealed["hash"])
        except StateError as exc:  # the verdict stands and is reported; only its seal is missing
            self.seal_error = f"{exc} (the drill's verdict stands; `archcheck audit repair` can finish the seal)"
            self.notice(f"sealing {drill.id}'s report failed: {self.seal_error}")

    def result(self) -> DrillResult:
        drill = self.drill
        verifications = []
        for entry in drill.archives:
            path = drill.manifest_path(entry)
            verifications.append((entry, Verification(load(path), path) if path.exists() else None))
        return DrillResult(drill, verifications, self._coverage_summary(), self.notices, self.seal_error,
                           self.state_error, self._gates(), self.gate_failure)

    def _gates(self) -> list[GateOutcome]:
        try:
            return load_outcomes(self.drill.folder)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.notice(f"the gate's outcomes of {self.drill.id} cannot be read ({exc}); run the gate again")
            return []

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


def _log_outcome(entry: DrillArchive, verification: Verification, newly: int, seconds: float) -> None:
    """An archive's run as events: each finding, then the outcome."""
    for finding in verification.findings:
        level = logging.ERROR if finding.category.value == "corruption" else logging.WARNING
        events.emit(Event.FINDING, level, code=finding.code, category=finding.category.value,
                    severity=finding.severity.value, location=finding.location.to_json(), message=finding.message)
    level = logging.INFO if verification.verdict == "intact" and entry.status != "failed" else logging.ERROR
    events.emit(Event.ARCHIVE_FINISHED, level, status=entry.status, verdict=verification.verdict,
                exit_code=entry.exit_code or verification.exit_code, findings=len(verification.findings),
                bytes_verified=newly, seconds=round(seconds, 3), note=entry.note)


def _rotation_key(cov: ArchiveCoverage) -> tuple:
    """Unfinished or never verified first (oldest seen first), then least recently verified."""
    if cov.in_progress or cov.complete is None:
        return (0, cov.first_seen)
    return (1, cov.oldest() or "")


def _changes(before: ArchiveIdentity, now: ArchiveIdentity) -> str:
    names = {"size": "size", "mtime_ns": "modification time", "head_blake3": "first 64 KiB",
             "tail_blake3": "last 64 KiB", "version": "ETag or version"}
    changed = [label for key, label in names.items() if getattr(before, key) != getattr(now, key)]
    if not changed:
        return ""
    listed = changed[0] if len(changed) == 1 else ", ".join(changed[:-1]) + " and " + changed[-1]
    return f"its {listed} {'differs' if len(changed) == 1 else 'differ'}"


def _adopt(old: Path, new: Path, options: dict) -> None:
    """Go on with an earlier drill's unfinished pass: its manifest, with its logs shared (hard
    links: a log part is never rewritten, so however large, adopting costs nothing); not when it
    checked other layers or cut other segments (then a new pass begins)."""
    manifest = load(old)
    if any(manifest.config.get(k) != options.get(k) for k in ("layers", "segment_size", "leaf_size", "digest",
                                                              "max_window")):
        return
    link_parts(manifest.log_parts(), old.parent, new.parent)
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

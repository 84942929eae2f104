"""Drills: named, resumable runs over one or more archives.

One folder per drill in the state directory: ``drill.json`` (what to verify, how, and how far
it got), ``archives/<n>/manifest.json`` (one manifest per archive, with its members file) and
``lock`` (who runs it). State files carry an integrity digest: a damaged or hand-edited one is
refused, never trusted.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .sources import is_remote
from .errors import DrillBusy, ResumeRefused, StateError, UsageError
from .manifest import read_sealed, sealed_json, utc_now, write_atomic

SCHEMA, VERSION = "archcheck.drill", 1
NUMBERED = re.compile(r"drill-(\d+)")
VALID_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
# an archive's state in a drill; "deferred": not reached within the budget; "changed": it changed
# during the drill (never verified again under it); "failed": could not be verified (see note)
ARCHIVE_STATES = ("pending", "running", "complete", "partial", "stopped", "interrupted", "skipped", "deferred",
                  "changed", "failed")


@dataclass
class DrillArchive:
    path: str
    manifest: str  # relative to the drill folder
    identity: dict[str, Any]  # the archive when the drill began: resume refuses another
    status: str = "pending"
    note: str | None = None  # why skipped, deferred, changed or failed
    exit_code: int | None = None  # what its failure means (status.ExitCode), when it failed

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest, "identity": self.identity, "status": self.status,
                "note": self.note, "exit_code": self.exit_code}


@dataclass
class Drill:
    id: str
    root: Path  # the state directory
    options: dict[str, Any]  # the run options every archive is verified with
    archives: list[DrillArchive]
    limits: dict[str, Any] = field(default_factory=dict)  # budget, skip_verified_within
    plan: str | None = None
    status: str = "running"  # running, complete, partial, stopped, interrupted
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per start or resume
    sealed: dict[str, Any] | None = None  # the sealed report's ledger entry
    backups: list[dict[str, Any]] = field(default_factory=list)  # backup sets (pg_basebackup directories): scanners.pgbackup.Backup
    findings: list[dict[str, Any]] = field(default_factory=list)  # about several archives at once
    gate: dict[str, Any] | None = None  # the CI gate asked for (api.GateSpec): resume judges it too

    @property
    def folder(self) -> Path:
        return drill_folder(self.root, self.id)

    def manifest_path(self, archive: DrillArchive) -> Path:
        return self.folder / archive.manifest

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "id": self.id, "status": self.status,
                "created": self.created, "updated": self.updated, "plan": self.plan, "options": self.options,
                "limits": self.limits, "archives": [a.to_json() for a in self.archives], "runs": self.runs,
                "sealed": self.sealed, "backups": self.backups, "findings": self.findings, "gate": self.gate}

    def save(self) -> None:
        self.updated = utc_now()
        write_atomic(self.folder / "drill.json", sealed_json(self.to_json()))


def drill_folder(root: Path, drill_id: str) -> Path:
    return Path(root) / "drills" / drill_id


def create_drill(root: Path, archives: list[Path], identities: list[dict[str, Any]], options: dict[str, Any], *, drill_id: str | None = None,
                 limits: dict[str, Any] | None = None, plan: str | None = None,
                 backups: list[dict[str, Any]] | None = None, gate: dict[str, Any] | None = None) -> Drill:
    """A new drill folder, numbered ``drill-N`` unless an id is given. It is made whole in a
    temporary folder and renamed into place: a crash leaves no half-made drill, and two drills
    started at once never share a number."""
    base = Path(root) / "drills"
    for candidate in _candidate_ids(root, drill_id):
        entries = [DrillArchive(str(a) if is_remote(a) else str(Path(a).absolute()), f"archives/{i:04d}/manifest.json",
                                identity)
                   for i, (a, identity) in enumerate(zip(archives, identities), 1)]
        drill = Drill(candidate, Path(root), options, entries, limits or {}, plan, backups=backups or [], gate=gate)
        staging = None
        try:
            base.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".new-", dir=base))
            write_atomic(staging / "drill.json", sealed_json(drill.to_json()))
            os.rename(staging, drill.folder)
            return drill
        except OSError as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if drill.folder.exists():
                if drill_id is not None:
                    raise UsageError(f"{drill_id} exists already; continue it with `archcheck resume {drill_id}`") from None
                continue
            raise StateError(f"cannot create {drill.folder}: {exc.strerror or exc}") from None
    raise AssertionError("unreachable")


def _candidate_ids(root: Path, drill_id: str | None) -> Iterator[str]:
    if drill_id is not None:
        check_id(drill_id)
        yield drill_id
        return
    taken = [int(m.group(1)) for p in _drill_dirs(root) if (m := NUMBERED.fullmatch(p.name))]
    n = max(taken, default=0)
    while True:
        n += 1
        yield f"drill-{n}"


def check_id(drill_id: str) -> None:
    if not VALID_ID.fullmatch(drill_id):
        raise UsageError(f"{drill_id!r} is not a drill id (letters, digits, '.', '_' and '-', e.g. drill-42)")


def _drill_dirs(root: Path) -> list[Path]:
    base = Path(root) / "drills"
    return [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")] if base.is_dir() else []


def load_drill(root: Path, drill_id: str) -> Drill:
    check_id(drill_id)
    path = drill_folder(root, drill_id) / "drill.json"
    if not path.exists():
        known = ", ".join(sorted(p.name for p in _drill_dirs(root))[-5:]) or "none"
        raise ResumeRefused(f"no drill {drill_id} in {root} (recent: {known})")
    d = read_sealed(path, "drill state")
    try:
        if d["schema"] != SCHEMA or d["version"] != VERSION:
            raise ValueError("schema")
        archives = [DrillArchive(a["path"], a["manifest"], a["identity"], a["status"], a["note"], a.get("exit_code"))
                    for a in d["archives"]]
        return Drill(d["id"], Path(root), d["options"], archives, d["limits"], d["plan"], d["status"],
                     d["created"], d["updated"], d["runs"], d["sealed"], d["backups"], d["findings"],
                     d.get("gate"))
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"drill state {path} is not valid ({exc})") from None


def list_drills(root: Path) -> list[Drill | StateError]:
    """Every drill in the state directory, oldest first; a damaged one is listed as its error."""
    out: list[Drill | StateError] = []
    for folder in sorted(_drill_dirs(root), key=_order):
        try:
            out.append(load_drill(root, folder.name))
        except StateError as exc:
            out.append(exc)
    return out


def _order(folder: Path) -> tuple:
    m = NUMBERED.fullmatch(folder.name)
    return (0, int(m.group(1)), "") if m else (1, 0, folder.name)


class DrillLock:
    """One runner per drill: an exclusive flock on the drill's ``lock`` file. The kernel drops
    it when its process dies however it dies, so a lock left by a dead runner is simply taken
    over; the file names the holder (pid, host, start) for the message a second runner gets."""

    def __init__(self, drill: Drill):
        self.path = drill.folder / "lock"
        self.drill_id = drill.id
        self.fd: int | None = None
        self.previous: str | None = None  # the holder recorded by a runner that died

    def __enter__(self) -> "DrillLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only state directory, a lock that is a directory
            raise StateError(f"cannot lock {self.drill_id}: {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise DrillBusy(f"{self.drill_id} is being run by {holder}; wait for it or stop it") from None
        self.previous = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # cleared before release: a holder named in it is alive
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

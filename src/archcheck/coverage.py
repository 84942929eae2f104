"""Coverage memory across drills: per archive identity, when each part was last verified.

An archive is cut into coverage units (the segment plan); a unit counts as verified when every
layer the drill checks has passed it: its raw segment is hashed and the stream check (zstd,
tar, members) has walked past its end. A budgeted drill uses this memory to verify new archives
first, then the least recently verified data, so that successive drills cover every byte.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import blake3

from .manifest import Manifest, read_sealed, sealed_json, write_atomic
from .segments import plan_segments
from .sources import ArchiveIdentity


def identity_key(identity: ArchiveIdentity) -> str:
    data = json.dumps(identity.to_json(), sort_keys=True).encode()
    return blake3.blake3(data).hexdigest()[:32]


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class ArchiveCoverage:
    """What is remembered of one archive identity."""

    identity: dict[str, Any]
    first_seen: str
    unit_size: int
    units: list[str | None]  # when each unit was last verified (None: never)
    complete: str | None = None  # when a drill last verified the archive in full
    in_progress: dict[str, str] | None = None  # {"drill", "manifest"}: an unfinished pass to go on with

    @property
    def size(self) -> int:
        return self.identity["size"]

    def unit_range(self, i: int) -> tuple[int, int]:
        return i * self.unit_size, min((i + 1) * self.unit_size, self.size)

    def oldest(self) -> str | None:
        """When the least recently verified unit was verified; first_seen if one never was."""
        if not self.units:
            return self.complete
        return self.first_seen if None in self.units else min(self.units)

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "first_seen": self.first_seen, "unit_size": self.unit_size,
                "units": self.units, "complete": self.complete, "in_progress": self.in_progress}


class CoverageStore:
    def __init__(self, root: Path):
        self.folder = Path(root) / "coverage"

    def _path(self, identity: ArchiveIdentity) -> Path:
        return self.folder / f"{identity_key(identity)}.json"

    def get(self, identity: ArchiveIdentity, unit_size: int, now: datetime) -> ArchiveCoverage:
        path = self._path(identity)
        if path.exists():
            d = read_sealed(path, "coverage record")
            cov = ArchiveCoverage(d["identity"], d["first_seen"], d["unit_size"], d["units"], d["complete"],
                                  d["in_progress"])
            if cov.unit_size == unit_size:
                return cov
            # another unit size: keep the dates of whole passes only, conservatively
            fresh = [cov.complete] * len(plan_segments(identity.size, unit_size))
            return ArchiveCoverage(cov.identity, cov.first_seen, unit_size, fresh, cov.complete, cov.in_progress)
        units = [None] * len(plan_segments(identity.size, unit_size))
        return ArchiveCoverage(identity.to_json(), iso(now), unit_size, units)

    def put(self, cov: ArchiveCoverage) -> None:
        write_atomic(self._path(ArchiveIdentity(**cov.identity)), sealed_json(cov.to_json()))


def verified_until(manifest: Manifest) -> int:
    """How far the stream check has walked, in archive bytes (everything before is checked)."""
    return manifest.stream.covered(manifest.archive.size)


def record_run(cov: ArchiveCoverage, manifest: Manifest, stream_layers: bool, since: str, now: datetime) -> int:
    """Mark the units this manifest verified in the pass begun at ``since``; returns how many
    bytes were newly marked. A complete manifest closes the pass."""
    stream_end = verified_until(manifest) if stream_layers else cov.size
    raw = {s.index: s.status == "done" for s in manifest.segments}
    newly = 0
    for i in range(len(cov.units)):
        start, end = cov.unit_range(i)
        done = raw.get(i, not manifest.segments) and stream_end >= end
        if done and (cov.units[i] is None or cov.units[i] < since):
            cov.units[i] = iso(now)
            newly += end - start
    if manifest.status == "complete":
        cov.complete, cov.in_progress = iso(now), None
    return newly


def unverified_bytes(cov: ArchiveCoverage, since: str | None) -> int:
    """Bytes not verified since ``since`` (the start of the current pass), or never (None)."""
    return sum(cov.unit_range(i)[1] - cov.unit_range(i)[0]
               for i, t in enumerate(cov.units) if t is None or (since is not None and t < since))

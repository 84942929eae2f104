"""Comparing an archive's catalog with a baseline's: content, not bytes.

Each member is identical, drift (metadata only: mtime, owner, mode), changed (added, removed,
modified) or suspicious (content differs while name, size and mtime are equal: bit rot or
tampering at the source, corruption by default); the archive as a whole may drift too (member
order, compression, frame layout). Both catalogs are streamed in name order and merged: memory
does not grow with the member count.
"""
from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .catalog import Catalog, Entry
from .errors import UsageError
from .findings import Finding, Findings, Location

EXAMPLES = 3  # member names quoted in a drift finding


class DriftKind(str, enum.Enum):
    """Harmless differences from a baseline; a policy's allow_drift names which pass."""

    MTIME = "mtime"
    OWNER = "owner"
    MODE = "mode"
    ORDER = "order"  # the same members in another order
    COMPRESSION = "compression"  # another level or codec, the same content
    FRAMES = "frames"  # another frame layout (pzstd, seekable), the same content


DRIFT_CODES = {kind: f"DRIFT_{kind.name}" for kind in DriftKind}

@dataclass(frozen=True)
class DiffSummary:
    """Counts of a comparison with a baseline, by class."""

    baseline: str  # the baseline catalog's archive
    identical: int = 0
    added: int = 0
    removed: int = 0
    modified: int = 0
    suspicious: int = 0
    uncompared: int = 0
    drift: dict[str, int] = field(default_factory=dict)  # DriftKind value -> members (or 1 for the archive)
    members: tuple[int, int] = (0, 0)  # baseline, this archive
    content_bytes: tuple[int, int] = (0, 0)

    @property
    def same_content(self) -> bool:
        return not (self.added or self.removed or self.modified or self.suspicious or self.uncompared)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["members"], data["content_bytes"] = list(self.members), list(self.content_bytes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DiffSummary":
        data = dict(data)
        data["members"], data["content_bytes"] = tuple(data["members"]), tuple(data["content_bytes"])
        return cls(**data)




@dataclass
class Comparison:
    """The outcome of a comparison: counts by class and the findings that name the members."""

    summary: DiffSummary
    findings: list[Finding] = field(default_factory=list)


@dataclass
class _Tally:
    counts: collections.Counter = field(default_factory=collections.Counter)
    drift: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[DriftKind, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    members: list[int] = field(default_factory=lambda: [0, 0])
    content_bytes: list[int] = field(default_factory=lambda: [0, 0])

    def drifted(self, kind: DriftKind, name: str) -> None:
        self.drift[kind] += 1
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(name)


def compare(baseline: Catalog, current: Catalog, uri: str,
            ignored: Callable[[str], bool] = lambda name: False) -> Comparison:
    """``current`` against ``baseline``; findings are located in the archive ``uri``."""
    if baseline.header.digest != current.header.digest:
        raise UsageError(f"{baseline.path} holds {baseline.header.digest} digests and {current.path} "
                         f"{current.header.digest}: verify both with the same --digest to compare them")
    tally = _Tally()
    findings = Findings()
    for old, new in _pairs(baseline.entries(), current.entries()):
        if ignored((old or new).name):
            continue
        for side, entry in enumerate((old, new)):
            if entry is not None:
                tally.members[side] += 1
                tally.content_bytes[side] += entry.size
        finding = _classify(old, new, tally, uri)
        if finding is not None:
            findings.append(finding)
    findings.extend(_drift_findings(tally, uri))
    findings.extend(_archive_drift(baseline, current, tally, uri))
    summary = DiffSummary(baseline=baseline.header.archive.get("uri", str(baseline.path)),
                          drift={k.value: n for k, n in tally.drift.items()},
                          members=tuple(tally.members), content_bytes=tuple(tally.content_bytes),
                          **{k: tally.counts[k] for k in ("identical", "added", "removed", "modified",
                                                          "suspicious", "uncompared")})
    return Comparison(summary, findings.closed(uri))


def _pairs(left: Iterator[Entry], right: Iterator[Entry]) -> Iterator[tuple[Entry | None, Entry | None]]:
    """A merge join by name: (old, new), either None where a name is on one side only."""
    old, new = next(left, None), next(right, None)
    while old is not None or new is not None:
        if new is None or (old is not None and old.name < new.name):
            yield old, None
            old = next(left, None)
        elif old is None or new.name < old.name:
            yield None, new
            new = next(right, None)
        else:
            yield old, new
            old, new = next(left, None), next(right, None)


def _classify(old: Entry | None, new: Entry | None, tally: _Tally, uri: str) -> Finding | None:
    if old is None or new is None:
        kind = "added" if old is None else "removed"
        entry = new or old
        tally.counts[kind] += 1
        return Finding.of(f"DIFF_{kind.upper()}", Location(uri, member=entry.name), type=entry.type, size=entry.size)
    location = Location(uri, member=new.name)
    if old.digest is None or new.digest is None:
        side = "the baseline" if old.digest is None else "this archive"
        tally.counts["uncompared"] += 1
        return Finding.of("DIFF_UNCOMPARED", location, why=f"its content could not be read whole in {side}")
    if old.content != new.content:
        if (old.type, old.size, old.mtime, old.linkname) == (new.type, new.size, new.mtime, new.linkname):
            tally.counts["suspicious"] += 1
            return Finding.of("DIFF_SUSPICIOUS", location, size=new.size, baseline_digest=old.digest,
                              digest=new.digest)
        tally.counts["modified"] += 1
        return Finding.of("DIFF_MODIFIED", location, what=_what_changed(old, new))
    drifted = [kind for kind, differs in ((DriftKind.MTIME, old.mtime != new.mtime),
                                          (DriftKind.OWNER, old.owner != new.owner),
                                          (DriftKind.MODE, old.mode != new.mode)) if differs]
    for kind in drifted:
        tally.drifted(kind, new.name)
    if not drifted:
        tally.counts["identical"] += 1
    return None


def _what_changed(old: Entry, new: Entry) -> str:
    if old.type != new.type:
        return f"a {old.type} became a {new.type}"
    if old.linkname != new.linkname:
        return f"link target {old.linkname!r} became {new.linkname!r}"
    if old.size != new.size:
        return f"size {old.size} became {new.size} bytes"
    return "content (same size, new mtime)"


def _drift_findings(tally: _Tally, uri: str) -> list[Finding]:
    return [Finding.of(DRIFT_CODES[kind], Location(uri), count=count,
                       examples=", ".join(repr(name) for name in tally.examples[kind]))
            for kind, count in sorted(tally.drift.items(), key=lambda item: item[0].value)]


def _archive_drift(baseline: Catalog, current: Catalog, tally: _Tally, uri: str) -> list[Finding]:
    """What differs in the archive as a whole: member order, compression, frame layout."""
    old, new = baseline.header, current.header
    found = []
    if not (tally.counts["added"] or tally.counts["removed"]) and old.order != new.order:
        tally.drift[DriftKind.ORDER] += 1
        found.append(Finding.of("DRIFT_ORDER", Location(uri)))
    if any(tally.counts[k] for k in ("added", "removed", "modified", "suspicious", "uncompared")):
        return found  # the layout of other content is not drift
    if old.format != new.format:
        tally.drift[DriftKind.COMPRESSION] += 1
        found.append(Finding.of("DRIFT_COMPRESSION", Location(uri), detail=f"{old.format} became {new.format}"))
    elif old.frames != new.frames:
        tally.drift[DriftKind.FRAMES] += 1
        found.append(Finding.of("DRIFT_FRAMES", Location(uri), detail=f"{old.frames} frame(s) became {new.frames}"))
    elif (old.format != "tar" and old.archive.get("size") != new.archive.get("size") and not tally.drift
          and old.uncompressed_size == new.uncompressed_size):
        # every member and its header the same: only the compression can explain another size
        tally.drift[DriftKind.COMPRESSION] += 1
        found.append(Finding.of("DRIFT_COMPRESSION", Location(uri),
                                detail=f"{old.archive.get('size')} compressed bytes became {new.archive.get('size')} "
                                       "(another level?)"))
    return found

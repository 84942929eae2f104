"""Catalogs: what a verified archive holds, member by member, kept to compare later backups with.

A catalog is JSON Lines: a header object (the archive, its layout, totals), then one JSON array
per member in name order. Name order lets two catalogs be compared by a merge of two streams, so
a diff of ten million members runs in bounded memory; the members log is in archive order, so
writing one sorts it in runs of ``RUN`` members spilled to temporary files (an external sort).
"""
from __future__ import annotations

import heapq
import json
import os
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, NamedTuple

import blake3

from .errors import UsageError, describe_error
from .manifest import Manifest, atomic_file, iter_members, utc_now

SCHEMA, VERSION = "archcheck.catalog", 1
RUN = 100_000  # members sorted in memory at a time while writing


class Entry(NamedTuple):
    """One member as a catalog keeps it. ``index``: its place in the archive (a name that occurs
    twice is restored from its last occurrence, as tar extracts)."""

    name: str
    type: str
    size: int
    mode: int
    mtime: int
    uid: int
    gid: int
    uname: str
    gname: str
    linkname: str
    digest: str | None  # None: the content could not be read whole
    sparse_size: int | None
    index: int

    @property
    def owner(self) -> tuple:
        return (self.uid, self.gid, self.uname, self.gname)

    @property
    def content(self) -> tuple:
        """What a restore writes, besides metadata."""
        return (self.type, self.size, self.digest, self.linkname, self.sparse_size)


FIELDS = list(Entry._fields)


@dataclass(frozen=True)
class CatalogHeader:
    archive: dict[str, Any]  # the archive's identity (uri, size, mtime_ns, head and tail digests)
    format: str  # tar, tar+zstd, tar+gzip, ...
    digest: str  # the member digest algorithm
    tree_root: str | None
    frames: int
    checksummed_frames: int
    uncompressed_size: int | None
    members: int  # entries, duplicates included
    content_bytes: int
    newest_mtime: int | None
    order: str  # BLAKE3 of the member names in archive order: the same set in another order differs
    verdict: str
    created: str
    fields: tuple[str, ...] = tuple(FIELDS)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fields"] = list(self.fields)
        return {"schema": SCHEMA, "version": VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CatalogHeader":
        names = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in names}
        data["fields"] = tuple(data.get("fields", FIELDS))
        return cls(**data)


def _entry(record: dict[str, Any], index: int) -> Entry:
    return Entry(record["name"], record["type"], record["size"], record.get("mode", 0), record.get("mtime", 0),
                 record.get("uid", 0), record.get("gid", 0), record.get("uname", ""), record.get("gname", ""),
                 record.get("linkname", ""), record.get("digest"), record.get("sparse_size"), index)


def write_catalog(manifest: Manifest, manifest_path: Path, path: Path, verdict: str) -> CatalogHeader:
    """The catalog of a verified archive, from its manifest and members log, written atomically."""
    if not manifest.members:
        raise UsageError("a catalog needs the members layer: verify with --layers including members")
    summary = manifest.stream.summary
    facts = {"archive": manifest.archive.to_json(), "format": manifest.format,
             "digest": manifest.config.get("digest", ""), "tree_root": manifest.tree_root,
             "frames": summary.frames if summary else 0,
             "checksummed_frames": summary.checksummed_frames if summary else 0,
             "uncompressed_size": summary.uncompressed_size if summary else None, "verdict": verdict}
    return write_records(iter_members(manifest, manifest_path), path, facts)


def write_records(records: Iterable[dict[str, Any]], path: Path, facts: dict[str, Any]) -> CatalogHeader:
    """A catalog of member records (dicts, in archive order) with the archive's ``facts`` (the
    header's fields but the totals), sorted by name on disk, written atomically."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".catalog.", dir=path.parent if path.parent.exists() else None) as tmp:
        runs, totals = _sorted_runs(records, Path(tmp))
        header = CatalogHeader(created=utc_now(), **facts, **totals)
        with ExitStack() as stack, atomic_file(path) as out:
            files = [stack.enter_context(open(run, encoding="utf-8")) for run in runs]
            out.write(json.dumps(header.to_json(), ensure_ascii=False).encode() + b"\n")
            for line in heapq.merge(*files, key=_line_key):
                out.write(line.encode())
    return header


def _sorted_runs(records: Iterable[dict[str, Any]], folder: Path) -> tuple[list[Path], dict[str, Any]]:
    """The records as sorted runs on disk, and the totals the header holds."""
    order = blake3.blake3()
    runs: list[Path] = []
    run: list[Entry] = []
    count = content_bytes = 0
    newest: int | None = None
    for index, record in enumerate(records):
        entry = _entry(record, index)
        order.update(entry.name.encode("utf-8", "surrogatepass") + b"\0")
        count += 1
        content_bytes += entry.size
        newest = entry.mtime if newest is None else max(newest, entry.mtime)
        run.append(entry)
        if len(run) >= RUN:
            runs.append(_spill(run, folder, len(runs)))
            run = []
    runs.append(_spill(run, folder, len(runs)))
    return runs, {"members": count, "content_bytes": content_bytes, "newest_mtime": newest,
                  "order": order.hexdigest()}


def _spill(run: list[Entry], folder: Path, number: int) -> Path:
    run.sort(key=lambda e: (e.name, e.index))
    path = folder / f"run-{number}.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for entry in run:
            out.write(json.dumps(list(entry), ensure_ascii=False) + "\n")
    return path


def _line_key(line: str) -> tuple[str, int]:
    row = json.loads(line)
    return row[0], row[-1]


@dataclass
class Catalog:
    """An open catalog: its header, and its entries streamed in name order, one per name (the
    last occurrence in the archive, as a restore leaves it)."""

    path: Path
    header: CatalogHeader
    stream: IO[str]
    duplicates: int = 0  # names that occur more than once

    def entries(self) -> Iterator[Entry]:
        previous: Entry | None = None
        for number, line in enumerate(self.stream, start=2):
            entry = self._parse(line, number)
            if previous is not None and (entry.name, entry.index) <= (previous.name, previous.index):
                raise UsageError(f"{self.path}:{number}: catalog entries are out of order: the catalog is damaged")
            if previous is not None and entry.name != previous.name:
                yield previous
            elif previous is not None:
                self.duplicates += 1
            previous = entry
        if previous is not None:
            yield previous

    def _parse(self, line: str, number: int) -> Entry:
        try:
            row = json.loads(line)
            values = dict(zip(self.header.fields, row, strict=True))
            return _entry(values, values["index"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{self.path}:{number}: not a catalog entry ({describe_error(exc)}): "
                             "the catalog is damaged") from None


def is_catalog(path: Path) -> bool:
    """Whether ``path`` starts as a catalog does (anything else is taken for an archive)."""
    try:
        with open(path, "rb") as f:
            start = f.read(64)
    except OSError:
        return False
    return start.startswith(b'{"schema": "archcheck.catalog"')


@contextmanager
def open_catalog(path: str | os.PathLike) -> Iterator[Catalog]:
    path = Path(path)
    try:
        stream = open(path, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the catalog: {describe_error(exc)}") from None
    with stream:
        try:
            data = json.loads(stream.readline())
            if data.get("schema") != SCHEMA:
                raise ValueError("no archcheck.catalog schema")
            if data.get("version") != VERSION:
                raise UsageError(f"{path}: a version {data.get('version')} catalog; this archcheck reads version {VERSION}")
            header = CatalogHeader.from_json(data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise UsageError(f"{path}: not an archcheck catalog ({describe_error(exc)})") from None
        yield Catalog(path, header, stream)

"""PostgreSQL inside an archive: relation pages, pg_control and backup_label (formats.md 3).

A data directory is recognised anywhere in the archive by its layout. Page findings are kept
provisional until the end of the archive, because what decides them may come later in the
tar: pg_basebackup sends ``global/pg_control`` (checksums on or off) last, and a directory is
only a data directory when it has ``PG_VERSION`` or ``global/pg_control``. A file that merely
looks like a relation outside one is never judged.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import crc32c
import numpy as np

from . import Both, Found, format_lsn
from . import pages as pg
from .pgmanifest import Listed, ListedFileScanner
from .wal import WalSegmentScanner

RELATION = re.compile(
    r"(?P<root>(?:.*/)?)(?P<path>(?:base/\d+|global|pg_tblspc/\d+/PG_[^/]+/\d+)/(?P<node>\d+))"
    r"(?:_(?P<fork>fsm|vm|init))?(?:\.(?P<segno>[1-9]\d*))?")
WAL_SEGMENT = re.compile(r"(?:.*/)?pg_wal/[0-9A-F]{24}")
SPECIAL = re.compile(r"(?P<root>(?:.*/)?)(?P<file>global/pg_control|backup_label|PG_VERSION)")
DATABASE_DIR = re.compile(r"(?:^|/)(?:base/\d+|pg_tblspc/\d+/PG_[^/]+/\d+)/$")  # has its own PG_VERSION
RAW_HINT = re.compile(rb"base/|global/|pg_tblspc/|backup_label|PG_VERSION|pg_wal/")  # cheap test on raw names
RELSEG_SIZE = 131072  # blocks per segment file; pg_control says otherwise on unusual builds
BATCH = 128  # pages checked per numpy call
CONTROL_LAYOUTS = {1300: 288, 1700: 288, 1800: 292}  # pg_control_version -> offset of its CRC
LSN_TEXT = re.compile(r"START WAL LOCATION: ([0-9A-Fa-f]+)/([0-9A-Fa-f]+)")


def datadir_of(root: str) -> str:
    return root[2:] if root.startswith("./") else root


@dataclass
class DataDir:
    """What the archive says about one data directory, as plain data (it goes into checkpoints)."""

    confirmed: bool = False  # PG_VERSION or pg_control seen
    checksums: int | None = None  # data_checksum_version from pg_control; None: not seen
    start_lsn: int | None = None  # backup_label START WAL LOCATION: a hot backup
    version: str | None = None
    files: int = 0
    pages: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Collect:
    """Keeps a small file whole (pg_control, backup_label, PG_VERSION), up to a limit."""

    LIMIT = 1 << 20

    def __init__(self, on_close):
        self.data, self.on_close, self.found = bytearray(), on_close, []

    def feed(self, view: memoryview, offset: int) -> None:
        if len(self.data) < self.LIMIT:
            self.data += view[:self.LIMIT - len(self.data)]

    def close(self, complete: bool) -> None:
        if complete:
            self.found.extend(self.on_close(bytes(self.data)) or [])


class RelationScanner:
    """The pages of one relation segment file, checked as they stream past."""

    def __init__(self, datadir: DataDir, root: str, match: re.Match, size: int):
        self.datadir, self.root, self.size = datadir, root, size
        self.where = {"relation": match["path"], "fork": match["fork"] or "main"}
        self.first_block = int(match["segno"] or 0) * RELSEG_SIZE
        self.carry = bytearray()  # the start of a page split across pieces
        self.seen = 0  # pages met so far
        self.split = bytearray()  # whole pages that were split, waiting to be checked together
        self.split_at: list[int] = []
        self.found: list[Found] = []

    def feed(self, view: memoryview, offset: int) -> None:
        """Whole pages are checked in place, a batch at a time; the few pages split across
        pieces are copied and checked together later, since a batch costs more to start than a
        page costs to copy."""
        if self.carry:
            take = min(len(view), pg.BLCKSZ - len(self.carry))
            self.carry += view[:take]
            view = view[take:]
            if len(self.carry) < pg.BLCKSZ:
                return
            self.split += self.carry
            self.split_at.append(self.seen)
            self.seen += 1
            self.carry.clear()
            if len(self.split_at) == BATCH:
                self._check_split()
        whole = len(view) - len(view) % pg.BLCKSZ
        for start in range(0, whole, BATCH * pg.BLCKSZ):
            end = min(whole, start + BATCH * pg.BLCKSZ)
            pages = np.frombuffer(view[start:end], dtype=np.uint8).reshape(-1, pg.BLCKSZ)
            self._check(pages, np.arange(self.seen, self.seen + len(pages)))
            self.seen += len(pages)
        self.carry += view[whole:]

    def close(self, complete: bool) -> None:
        self._check_split()
        self.datadir.files += 1
        self.datadir.pages += self.seen
        if complete and self.carry:
            self.found.append(Found("PG_PARTIAL_PAGE", self.seen * pg.BLCKSZ, len(self.carry), dict(self.where),
                                    {"datadir": self.root, "length": len(self.carry)}))

    def _check_split(self) -> None:
        if self.split_at:
            pages = np.frombuffer(bytes(self.split), dtype=np.uint8).reshape(-1, pg.BLCKSZ)
            self._check(pages, np.array(self.split_at))
            self.split.clear()
            self.split_at.clear()

    def _check(self, pages: np.ndarray, index: np.ndarray) -> None:
        """``index``: each page's number within this file."""
        fields = pg.Fields(pages)
        broken = pg.header_problems(fields)
        blocks = index + self.first_block
        for i, problem in broken.items():
            self._page("PG_PAGE_HEADER", i, index, fields, blocks, problem=problem)
        summed = ~fields.zero
        summed[list(broken)] = False
        if summed.all():
            actual = pg.checksums(pages, blocks)
        else:
            actual = np.zeros(len(pages), dtype=np.uint16)
            if summed.any():
                actual[summed] = pg.checksums(pages[summed], blocks[summed])
        # a page whose checksum holds was written whole by PostgreSQL: line pointers are checked
        # where it does not vouch for the page (a mismatch, or checksums off: pd_checksum is 0)
        unproven = summed & (actual != fields.checksum)
        for i in np.flatnonzero(unproven) if self.datadir.checksums != 0 else ():
            self._page("PG_PAGE_CHECKSUM", i, index, fields, blocks, actual=f"{int(actual[i]):04x}",
                       expected=f"{int(fields.checksum[i]):04x}")
        for i, (item, problem) in sorted(pg.item_problems(pages, fields, unproven).items()):
            self._page("PG_LINE_POINTER", i, index, fields, blocks, item=item, problem=problem)
        for i, problem in sorted(pg.btree_problems(pages, fields, unproven, blocks).items()):
            self._page("PG_BTREE_PAGE", i, index, fields, blocks, problem=problem)

    def _page(self, code: str, i: int, index: np.ndarray, fields: pg.Fields, blocks: np.ndarray,
              **details: Any) -> None:
        i, lsn = int(i), int(fields.lsn[i])  # plain ints: findings are JSON
        self.found.append(Found(code, int(index[i]) * pg.BLCKSZ, pg.BLCKSZ, {**self.where, "block": int(blocks[i])},
                                {"datadir": self.root, "page_lsn": format_lsn(lsn), "lsn": lsn, **details}))


class PostgresScanners:
    """Routes members to scanners and decides the provisional findings at the end."""

    def __init__(self, listed: dict[str, Listed] | None = None, prefix: str = "", known: dict | None = None):
        """``listed``: the files a backup_manifest lists, checked as they pass; ``prefix``: where
        this archive's members sit in the data directory (pg_tblspc/<oid>/ for a tablespace tar);
        ``known``: the data directory's facts from another archive of the same backup (base.tar
        holds pg_control and backup_label, a tablespace tar does not)."""
        self.datadirs: dict[str, DataDir] = {}
        if known:
            self.datadirs[""] = DataDir(**{**known, "files": 0, "pages": 0})
        self.listed, self.prefix = listed, prefix

    def wants(self, raw_name: bytes) -> bool:
        return self.listed is not None or RAW_HINT.search(raw_name) is not None

    def open(self, name: str, size: int) -> Any:
        scanner = self._open_page_file(name, size)
        path = self.prefix + datadir_of(name)
        if self.listed is None or path not in self.listed:
            return scanner
        listed = ListedFileScanner(path, self.listed[path], size)
        return listed if scanner is None else Both([scanner, listed])

    def _open_page_file(self, name: str, size: int) -> Any:
        name = self.prefix + datadir_of(name)
        if WAL_SEGMENT.fullmatch(name):  # initdb --wal-segsize: a power of two, 1 MiB to 1 GiB
            seg_size = size if size & (size - 1) == 0 and (1 << 20) <= size <= (1 << 30) else 16 << 20
            return WalSegmentScanner(name.rsplit("/", 1)[1], size, seg_size)
        if m := RELATION.fullmatch(name):
            root = datadir_of(m["root"])
            return RelationScanner(self.datadirs.setdefault(root, DataDir()), root, m, size)
        if (m := SPECIAL.fullmatch(name)) and not DATABASE_DIR.search(m["root"]):
            root = datadir_of(m["root"])
            datadir = self.datadirs.setdefault(root, DataDir())
            handler = {"global/pg_control": self._control, "backup_label": self._label,
                       "PG_VERSION": self._version}[m["file"]]
            return Collect(lambda data: handler(datadir, root, data))
        return None

    # --- small files ----------------------------------------------------------------------------

    def _version(self, datadir: DataDir, root: str, data: bytes) -> None:
        text = data.decode("ascii", "replace").strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            datadir.confirmed, datadir.version = True, text

    def _label(self, datadir: DataDir, root: str, data: bytes) -> None:
        if m := LSN_TEXT.search(data.decode("utf-8", "replace")):
            datadir.start_lsn = (int(m[1], 16) << 32) | int(m[2], 16)

    def _control(self, datadir: DataDir, root: str, data: bytes) -> list[Found]:
        """pg_control: its CRC-32C, then whether page checksums are on (formats.md 3.8)."""
        if len(data) < 296:
            return [Found("PG_CONTROL_DAMAGED", 0, len(data), {"relation": "global/pg_control"},
                          {"datadir": root, "problem": f"only {len(data)} bytes"})]
        version = struct.unpack_from("<I", data, 8)[0]
        crc_at = CONTROL_LAYOUTS.get(version)
        float_format = struct.unpack_from("<d", data, 208)[0]
        if crc_at is None or float_format != 1234567.0:
            return [Found("PG_CONTROL_UNKNOWN", 0, len(data), {"relation": "global/pg_control"},
                          {"datadir": root, "version": version})]
        datadir.confirmed = True
        stored, actual = struct.unpack_from("<I", data, crc_at)[0], crc32c.crc32c(data[:crc_at])
        if stored != actual:
            return [Found("PG_CONTROL_DAMAGED", crc_at, 4, {"relation": "global/pg_control"},
                          {"datadir": root, "problem": f"CRC-32C is {actual:08x}, the file says {stored:08x}"})]
        datadir.checksums = struct.unpack_from("<I", data, 252)[0]
        return []

    # --- the end --------------------------------------------------------------------------------

    def decide(self, code: str, details: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """What a provisional finding becomes once the whole archive is known: dropped outside a
        data directory and, for checksums, when they are off or unknown; a page changed after a
        hot backup began is torn, not damaged (WAL replay rewrites it; formats.md 3.10)."""
        if code.startswith("WAL_") and details.get("after_end"):
            return None  # past the end of WAL, stale or odd pages are normal (formats.md 6.3)
        if code.startswith(("PG_MANIFEST", "WAL_")):  # judged against the manifest and WAL, not a guess
            return code, details
        datadir = self.datadirs.get(details.get("datadir", ""))
        if datadir is None or not datadir.confirmed:
            return None
        if code == "PG_PAGE_CHECKSUM" and datadir.checksums != 1:
            return None
        if datadir.start_lsn is None:
            return code, details
        # A hot copy can tear a page between its sectors: the checksum then fails, and a page
        # caught mid-extension can have a zeroed header. Both are rewritten by WAL replay. A
        # torn page keeps a sound header and line pointers, so those findings stand.
        started = format_lsn(datadir.start_lsn)
        if code == "PG_PAGE_CHECKSUM" and details.get("lsn", -1) >= datadir.start_lsn:
            return "PG_PAGE_TORN", {**details, "was": code, "start_lsn": started}
        if code == "PG_PAGE_HEADER" and details.get("problem", "").startswith("pd_upper is 0"):
            return "PG_PAGE_TORN", {**details, "was": code, "start_lsn": started}
        return code, details

    def summaries(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for root, d in sorted(self.datadirs.items()):
            if not d.confirmed:
                continue
            checks = {1: "compared", 0: "off in pg_control", None: "not compared: no pg_control"}.get(
                d.checksums, f"unknown version {d.checksums}")
            out.append(("PG_DATA_DIRECTORY", {"datadir": root or "the archive root", "version": d.version or "?", "files": d.files,
                                              "pages": d.pages, "checksums": checks,
                                              "backup": "hot" if d.start_lsn is not None else "cold"}))
        return out

    def state(self) -> dict[str, Any]:
        return {root: d.to_json() for root, d in self.datadirs.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self.datadirs = {root: DataDir(**d) for root, d in state.items()}

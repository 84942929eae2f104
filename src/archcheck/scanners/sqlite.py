"""SQLite databases inside an archive (formats.md 4 and 6.4).

The native core collects a database member (its header always, all of it up to a limit) and
hands it here whole: ``scan_handoff`` checks the 100-byte header and the file size, then walks
the file the way ``PRAGMA integrity_check`` does (``checkTreePage``/``checkList`` in
``btree.c``): every b-tree from ``sqlite_schema`` and its root pages, overflow chains, the
freelist, pointer-map entries, and every page used exactly once. Records are decoded, and each
index is compared with its table (rowids, and for plain column indexes that each key value is
in the row), because ``integrity_check`` reports a row changed under an index. A ``<db>-wal``
member's frame checksums are the core's.
"""
from __future__ import annotations

import re
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any

from . import Found

MAGIC = b"SQLite format 3\x00"
HEADER = 100
LOCK_BYTE = 1 << 30  # PENDING_BYTE: the page holding it is never used
MAX_DEPTH = 64  # SQLite stops at 20 (BTCURSOR_MAX_DEPTH); deeper is a loop or damage
MAX_UNUSED = 100  # "never used" pages reported one by one; the rest are counted


@dataclass(frozen=True)
class Kind:
    name: str
    leaf: bool
    table: bool  # intkey: a table b-tree (rowid keys)

    @property
    def header_size(self) -> int:
        return 8 if self.leaf else 12


PAGE_TYPES = {
    2: Kind("interior index", leaf=False, table=False),
    5: Kind("interior table", leaf=False, table=True),
    10: Kind("leaf index", leaf=True, table=False),
    13: Kind("leaf table", leaf=True, table=True),
}

# pointer-map entry types (btreeInt.h)
PTRMAP_ROOTPAGE, PTRMAP_FREEPAGE, PTRMAP_OVERFLOW1, PTRMAP_OVERFLOW2, PTRMAP_BTREE = 1, 2, 3, 4, 5


def u16(b, i: int) -> int:
    return (b[i] << 8) | b[i + 1]


def u32(b, i: int) -> int:
    return struct.unpack_from(">I", b, i)[0]


def varint(b, i: int) -> tuple[int, int]:
    """SQLite varint: up to 9 bytes, 7 bits each but all 8 of the ninth."""
    v = 0
    for k in range(8):
        c = b[i + k]
        v = (v << 7) | (c & 0x7F)
        if c < 0x80:
            return v, i + k + 1
    return (v << 8) | b[i + 8], i + 9


def signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def payload_varint(b, i: int) -> tuple[int, int]:
    """A cell's payload size as btreeParseCellPtr reads it: 7 bits a byte, kept to 32 bits."""
    v, k = 0, 0
    while True:
        c = b[i + k]
        v = ((v << 7) | (c & 0x7F)) & 0xFFFFFFFF
        k += 1
        if c < 0x80 or k == 9:
            return v, i + k


# --- the header -----------------------------------------------------------------------------


@dataclass
class Header:
    page_size: int  # 0 when invalid
    write_version: int
    read_version: int
    reserved: int
    fractions: tuple[int, int, int]
    change_counter: int
    db_pages: int
    freelist_trunk: int
    freelist_count: int
    schema_format: int
    largest_root: int
    encoding: int
    incremental: int
    zero_area: bytes
    valid_for: int

    @classmethod
    def parse(cls, h: bytes) -> "Header":
        raw = u16(h, 16)
        size = 65536 if raw == 1 else raw
        if not (512 <= size <= 65536 and size & (size - 1) == 0):
            size = 0
        return cls(size, h[18], h[19], h[20], (h[21], h[22], h[23]), u32(h, 24), u32(h, 28), u32(h, 32),
                   u32(h, 36), u32(h, 44), u32(h, 52), u32(h, 56), u32(h, 64), bytes(h[72:92]), u32(h, 92))

    @property
    def usable(self) -> int:
        return self.page_size - self.reserved

    @property
    def size_valid(self) -> bool:
        """The in-header page count counts only when the last writer also set version-valid-for."""
        return self.db_pages != 0 and self.change_counter == self.valid_for

    def page_count(self, file_size: int) -> int:
        """The pages SQLite reads: the in-header count when valid, never more than the file has."""
        in_file = file_size // self.page_size
        return min(self.db_pages, in_file) if self.size_valid else in_file


def header_problems(h: Header, raw: bytes, file_size: int) -> list[str]:
    out = []
    if bytes(raw[:16]) != MAGIC:
        out.append("not an SQLite 3 database: magic differs")
    if h.page_size == 0:
        out.append(f"page size field {u16(raw, 16)} is not a power of two from 512 to 65536 (or 1)")
    if h.write_version not in (1, 2):
        out.append(f"write version {h.write_version} (1 or 2 expected)")
    if h.read_version not in (1, 2):
        out.append(f"read version {h.read_version} (1 or 2 expected)")
    if h.page_size and h.usable < 480:
        out.append(f"{h.reserved} reserved bytes leave {h.usable} usable bytes per page (at least 480)")
    if h.fractions != (64, 32, 32):
        out.append(f"payload fractions {h.fractions} (64, 32, 32 expected)")
    if h.schema_format > 4:  # 0: no schema written yet, read as 1
        out.append(f"schema format {h.schema_format} (1 to 4 expected)")
    if h.encoding > 3:  # 0: no schema written yet, read as UTF-8
        out.append(f"text encoding {h.encoding} (1 to 3 expected)")
    if h.largest_root == 0 and h.incremental != 0:
        out.append("incremental vacuum flag set without auto-vacuum")
    if any(h.zero_area):
        out.append("reserved header bytes 72..91 are not zero")
    if not h.page_size:
        return out
    if file_size % h.page_size:
        out.append(f"file size {file_size} is not a multiple of the page size {h.page_size}")
    pages = file_size // h.page_size
    if h.size_valid and h.db_pages > pages:
        out.append(f"truncated: the header says {h.db_pages} pages, the file holds {pages}")
    count = h.page_count(file_size)
    if h.freelist_trunk > count:
        out.append(f"first freelist trunk page {h.freelist_trunk} is beyond the last page {count}")
    if h.freelist_count >= max(count, 1):
        out.append(f"{h.freelist_count} freelist pages in a database of {count} pages")
    return out


# --- the structure walk -----------------------------------------------------------------------


@dataclass
class Cell:
    size: int
    key: int | None = None  # rowid (table b-trees)
    child: int | None = None  # left child (interior pages)
    payload_size: int = 0
    payload_at: int = 0
    local: int = 0
    overflow: int = 0  # first overflow page, 0 if none


@dataclass
class Collected:
    """What one b-tree holds, kept compactly for the index-against-table comparison."""

    name: str
    root: int
    rowids: array = field(default_factory=lambda: array("q"))
    pages: array = field(default_factory=lambda: array("q"))
    hashes: array = field(default_factory=lambda: array("q"))  # table: hash((rowid, value)) per column
    columns: int = 0  # columns the table declares
    short: set = field(default_factory=set)  # table rows with fewer fields than columns
    entry_rowid: array = field(default_factory=lambda: array("q"))  # index: per key value
    entry_page: array = field(default_factory=lambda: array("q"))


def _hash(rowid: int, value: Any) -> int:
    return hash((rowid, value))


SERIAL_FIXED = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 7: 8, 8: 0, 9: 0}


def decode_record(p: bytes) -> list | None:
    """A record's values, or None when it is malformed (the header or sizes do not add up)."""
    try:
        hsize, i = varint(p, 0)
        if hsize < i or hsize > len(p):
            return None
        types = []
        while i < hsize:
            t, i = varint(p, i)
            types.append(t)
        if i != hsize:
            return None
        values, pos = [], hsize
        for t in types:
            if t in (10, 11):
                return None
            n = SERIAL_FIXED[t] if t < 12 else (t - 12) >> 1
            if pos + n > len(p):
                return None
            chunk = p[pos:pos + n]
            pos += n
            if t == 0:
                values.append(None)
            elif t <= 6:
                values.append(int.from_bytes(chunk, "big", signed=True))
            elif t == 7:
                values.append(struct.unpack(">d", chunk)[0])
            elif t in (8, 9):
                values.append(t - 8)
            else:
                values.append(bytes(chunk))  # text and blob alike: compared, never shown
        return values if pos == len(p) else None
    except (IndexError, struct.error):
        return None


PLAIN_COLUMN = re.compile(r'\s*("[^"]*"|`[^`]*`|\[[^\]]*\]|\w+)(\s+COLLATE\s+("[^"]*"|\w+))?(\s+(ASC|DESC))?\s*',
                          re.IGNORECASE)
CONSTRAINT = re.compile(r"\s*(CONSTRAINT|PRIMARY|UNIQUE|CHECK|FOREIGN)\b", re.IGNORECASE)


def _parenthesised(sql: str) -> tuple[str, str] | None:
    """The text inside the first top-level parentheses, and what follows them."""
    start = sql.find("(")
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(sql)):
        depth += {"(": 1, ")": -1}.get(sql[i], 0)
        if depth == 0:
            return sql[start + 1:i], sql[i + 1:]
    return None


def _split_top(body: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in body:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def index_shape(sql: str | None) -> tuple[bool, bool]:
    """(plain columns only, partial) for an index's SQL; an automatic index (no SQL) is plain."""
    if sql is None:
        return True, False
    inside = _parenthesised(sql)
    if inside is None:
        return False, True
    body, rest = inside
    plain = all(PLAIN_COLUMN.fullmatch(part) for part in _split_top(body))
    return plain, re.search(r"\bWHERE\b", rest, re.IGNORECASE) is not None


def table_columns(sql: str | None) -> int | None:
    """Columns a CREATE TABLE declares, or None when it cannot say (or has generated columns)."""
    if not sql or re.search(r"\bGENERATED\b|\bAS\s*\(", sql, re.IGNORECASE):
        return None
    inside = _parenthesised(sql)
    if inside is None:
        return None
    return sum(1 for part in _split_top(inside[0]) if part.strip() and not CONSTRAINT.match(part))


class Walk:
    """The whole-file check over a database held in memory (``integrity_check``'s order)."""

    def __init__(self, data: bytes | bytearray, h: Header):
        self.data, self.h = memoryview(data), h
        self.ps, self.usable = h.page_size, h.usable
        self.npages = h.page_count(len(data))
        self.lock_page = LOCK_BYTE // self.ps + 1
        self.autovacuum = h.largest_root != 0
        self.used: set[int] = set()
        if self.lock_page <= self.npages:
            self.used.add(self.lock_page)
        self.problems: dict[int, list[str]] = {}  # page -> problems, in order met
        self.freelist: list[tuple[int | None, str]] = []
        self.found: list[Found] = []
        u = self.usable
        self.max_leaf, self.min_leaf = u - 35, (u - 12) * 32 // 255 - 23
        self.max_local, self.min_local = (u - 12) * 64 // 255 - 23, (u - 12) * 32 // 255 - 23
        self.collect: Collected | None = None
        self.schema: list[list] = []

    # --- results ---

    def run(self) -> list[Found]:
        if self.npages < 1:
            return []
        self.check_freelist()
        self.collect = Collected("sqlite_schema", 1)
        self.tree(1, by=None)
        tables, indexes, roots = self.schema_roots()
        collected = {}
        for kind, name, tbl, root in roots:
            self.collect = Collected(name, root)
            if kind == "table":
                self.collect.columns = table_columns(tables[name][2]) or 0
            if root > 1 and self.autovacuum:
                self.check_ptrmap(root, PTRMAP_ROOTPAGE, 0, by=1)
            self.tree(root, by=1, name=name)
            collected[name] = self.collect
        self.collect = None
        if self.autovacuum:
            top = max([1] + [r for *_, r in roots])
            if top != self.h.largest_root:
                self.page_problem(1, f"largest root page in the header is {self.h.largest_root}, the schema says {top}")
        self.compare_indexes(tables, indexes, collected)
        self.check_unused()
        return self.report()

    def page_problem(self, page: int, problem: str) -> None:
        self.problems.setdefault(page, []).append(problem)

    def report(self) -> list[Found]:
        for page, problems in sorted(self.problems.items()):
            details = {"page": page, "problem": problems[0]}
            if len(problems) > 1:
                details["more"] = problems[1:5]
            self.found.append(Found("SQLITE_PAGE", (page - 1) * self.ps, self.ps, {"page": page}, details))
        for page, problem in self.freelist:
            where = {"page": page} if page else {}
            offset = (page - 1) * self.ps if page else 32
            self.found.append(Found("SQLITE_FREELIST", offset, self.ps if page else 8, where, {"problem": problem}))
        return self.found

    # --- pages ---

    def page(self, n: int) -> memoryview:
        return self.data[(n - 1) * self.ps:n * self.ps]

    def ref(self, n: int, what: str, by: int | None) -> str | None:
        """Marks page ``n`` used; the problem when it cannot be (checkRef)."""
        if n < 1 or n > self.npages:
            return f"{what} {n} is not a page of the database (1..{self.npages})"
        if n == self.lock_page:
            return f"{what} {n} is the lock-byte page"
        if n in self.used:
            return f"{what} {n} is already used elsewhere"
        if self.autovacuum and n > 1 and self.ptrmap_page(n) == n:
            return f"{what} {n} is a pointer-map page"
        self.used.add(n)
        return None

    def ptrmap_page(self, n: int) -> int:
        per = self.usable // 5 + 1
        p = (n - 2) // per * per + 2
        return p + 1 if p == self.lock_page else p

    def check_ptrmap(self, n: int, kind: int, parent: int, by: int) -> None:
        if not (2 <= n <= self.npages) or self.ptrmap_page(n) == n:
            return
        map_page = self.ptrmap_page(n)
        at = 5 * (n - map_page - 1)
        if at < 0 or at + 5 > self.usable:
            return
        page = self.page(map_page)
        got = (page[at], u32(page, at + 1))
        if got != (kind, parent):
            self.page_problem(map_page, f"pointer-map entry for page {n} is {got}, expected {(kind, parent)}")

    # --- b-trees ---

    def tree(self, root: int, by: int | None, name: str = "sqlite_schema") -> None:
        problem = self.ref(root, f"root page of {name}", by)
        if problem:
            self.page_problem(by or root, problem)
            return
        self.used.discard(root)  # tree_page marks it again
        self.tree_page(root, None, 1 << 63, depth=0, expect_table=None)

    def tree_page(self, n: int, parent: int | None, max_key: int, depth: int,
                  expect_table: bool | None) -> tuple[int, int]:
        """Checks one b-tree page and its subtree; (height, smallest rowid) as checkTreePage."""
        if parent is not None:
            problem = "child page 0" if n == 0 else self.ref(n, "child page", parent)
            if problem:
                self.page_problem(parent, problem)
                return -1, max_key
        else:
            self.used.add(n)
        if depth > MAX_DEPTH:
            self.page_problem(n, "b-tree deeper than any SQLite writes")
            return -1, max_key
        page = self.page(n)
        hdr = HEADER if n == 1 else 0
        kind = PAGE_TYPES.get(page[hdr])
        if kind is None:
            self.page_problem(n, f"page type {page[hdr]} is not a b-tree page type (2, 5, 10, 13)")
            return -1, max_key
        if n == 1 and not kind.table:
            self.page_problem(n, "page 1 is not a table b-tree page")
            return -1, max_key
        if expect_table is not None and kind.table != expect_table:
            self.page_problem(n, f"{kind.name} page in a {'table' if expect_table else 'index'} b-tree")
            return -1, max_key
        ncell = u16(page, hdr + 3)
        if parent is not None and ncell == 0:
            self.page_problem(n, "a non-root b-tree page without cells")
            return -1, max_key
        problem = self.layout_problem(page, hdr, kind, ncell)
        if problem:
            self.page_problem(n, problem)
            return -1, max_key
        return self.cells(n, page, hdr, kind, ncell, max_key, depth)

    def layout_problem(self, page, hdr: int, kind: Kind, ncell: int) -> str | None:
        """btreeInitPage and btreeComputeFreeSpace: cell count, content area, freeblock chain."""
        if ncell > (self.ps - 8) // 6:
            return f"{ncell} cells do not fit in a page"
        top = u16(page, hdr + 5) or 65536
        first_cell = hdr + kind.header_size + 2 * ncell
        if top > self.usable or top < first_cell:
            return f"cell content area starts at {top}, outside {first_cell}..{self.usable}"
        frag = page[hdr + 7]
        if frag > 60:
            return f"{frag} fragmented bytes (at most 60)"
        free, pc = frag + top, u16(page, hdr + 1)
        if pc:
            if pc < top:
                return f"first freeblock at {pc}, before the cell content area {top}"
            while True:
                if pc > self.usable - 4:
                    return f"freeblock at {pc} past the end of the page"
                nxt, size = u16(page, pc), u16(page, pc + 2)
                free += size
                if nxt <= pc + size + 3:
                    break
                pc = nxt
            if nxt > 0:
                return f"freeblocks out of order at {pc}"
            if pc + size > self.usable:
                return f"freeblock at {pc} of {size} bytes extends past the page"
        if free > self.usable or free < first_cell:
            return "free space does not add up"
        return None

    def parse_cell(self, page, pc: int, kind: Kind) -> Cell:
        i, child = pc, None
        if not kind.leaf:
            child = u32(page, i)
            i += 4
            if kind.table:
                key, i = varint(page, i)
                return Cell(size=i - pc, key=signed64(key), child=child)
        n, i = payload_varint(page, i)
        key = None
        if kind.table:
            key, i = varint(page, i)
            key = signed64(key)
        max_local, min_local = (self.max_leaf, self.min_leaf) if kind.table else (self.max_local, self.min_local)
        if n <= max_local:
            return Cell(size=max(i - pc + n, 4), key=key, child=child, payload_size=n, payload_at=i, local=n)
        surplus = min_local + (n - min_local) % (self.usable - 4)
        local = surplus if surplus <= max_local else min_local
        size = i - pc + local + 4
        cell = Cell(size=size, key=key, child=child, payload_size=n, payload_at=i, local=local)
        if pc + size <= self.usable:
            cell.overflow = u32(page, pc + size - 4)
        return cell

    def cells(self, n: int, page, hdr: int, kind: Kind, ncell: int, max_key: int,
              depth: int) -> tuple[int, int]:
        ptrs = hdr + kind.header_size
        top = u16(page, hdr + 5) or 65536
        height, can_equal, coverage, spans = 0, True, True, []
        if not kind.leaf:
            right = u32(page, hdr + 8)
            if self.autovacuum:
                self.check_ptrmap(right, PTRMAP_BTREE, n, by=n)
            height, max_key = self.tree_page(right, n, max_key, depth + 1, kind.table)
            can_equal = False
        for i in reversed(range(ncell)):
            pc = u16(page, ptrs + 2 * i)
            if pc < top or pc > self.usable - 4:
                self.page_problem(n, f"cell {i} at offset {pc}, outside {top}..{self.usable - 4}")
                coverage = False
                continue
            try:
                cell = self.parse_cell(page, pc, kind)
            except IndexError:
                cell = Cell(size=self.ps)
            if pc + cell.size > self.usable:
                self.page_problem(n, f"cell {i} extends past the end of the page")
                coverage = False
                continue
            spans.append((pc, pc + cell.size - 1))
            if kind.table:
                if cell.key > max_key or (cell.key == max_key and not can_equal):
                    self.page_problem(n, f"rowid {cell.key} out of order")
                max_key, can_equal = cell.key, False
            payload = None
            if cell.child is None or not kind.table:
                payload = self.payload(n, page, cell)
                if payload is not None:
                    self.keep(n, kind, cell, payload)
            if cell.child is not None:
                if self.autovacuum:
                    self.check_ptrmap(cell.child, PTRMAP_BTREE, n, by=n)
                h2, max_key = self.tree_page(cell.child, n, max_key, depth + 1, kind.table)
                can_equal = False
                if h2 >= 0 and height >= 0 and h2 != height:
                    self.page_problem(n, "child pages at different depths")
        if coverage:
            self.check_coverage(n, page, hdr, top, spans)
        return height + 1 if height >= 0 else 0, max_key

    def check_coverage(self, n: int, page, hdr: int, top: int, spans: list[tuple[int, int]]) -> None:
        """Cells and freeblocks must not overlap; the gaps must match the fragment count."""
        pc = u16(page, hdr + 1)
        while pc:
            spans.append((pc, pc + u16(page, pc + 2) - 1))
            pc = u16(page, pc)
        prev, frag = top - 1, 0
        for start, end in sorted(spans):
            if start <= prev:
                self.page_problem(n, f"byte {start} used twice (cells or freeblocks overlap)")
                return
            frag += start - prev - 1
            prev = end
        frag += self.usable - prev - 1
        if frag != page[hdr + 7]:
            self.page_problem(n, f"{frag} fragmented bytes, the page header says {page[hdr + 7]}")

    def payload(self, n: int, page, cell: Cell) -> bytes | None:
        """The cell's whole payload, following (and checking) its overflow chain."""
        local = bytes(page[cell.payload_at:cell.payload_at + cell.local])
        if cell.payload_size <= cell.local:
            return local
        expected = (cell.payload_size - cell.local + self.usable - 5) // (self.usable - 4)
        if self.autovacuum:
            self.check_ptrmap(cell.overflow, PTRMAP_OVERFLOW1, n, by=n)
        parts, pg, count, prev = [local], cell.overflow, 0, n
        while pg:
            problem = self.ref(pg, "overflow page", prev)
            if problem:
                self.page_problem(n, problem)
                return None
            count += 1
            data = self.page(pg)
            nxt = u32(data, 0)
            if self.autovacuum and count < expected:
                self.check_ptrmap(nxt, PTRMAP_OVERFLOW2, pg, by=pg)
            parts.append(bytes(data[4:self.usable]))
            prev, pg = pg, nxt
            if count > expected:
                break
        if count != expected:
            self.page_problem(n, f"overflow chain of {count} pages, {expected} expected")
            return None
        return b"".join(parts)[:cell.payload_size]

    # --- records ---

    def keep(self, n: int, kind: Kind, cell: Cell, payload: bytes) -> None:
        values = decode_record(payload)
        if values is None:
            self.page_problem(n, f"malformed record{f' (rowid {cell.key})' if kind.table else ''}")
            return
        c = self.collect
        if c is None:
            return
        if c.root == 1:
            self.schema.append(values)
        elif kind.table:
            c.rowids.append(cell.key)
            c.pages.append(n)
            if len(values) < c.columns:
                c.short.add(cell.key)  # written before ALTER TABLE ADD COLUMN: no value for it
            c.hashes.append(_hash(cell.key, cell.key))  # INTEGER PRIMARY KEY: the row holds NULL
            for v in values:
                c.hashes.append(_hash(cell.key, v))
        elif values and isinstance(values[-1], int):
            rowid = values[-1]
            c.rowids.append(rowid)
            c.pages.append(n)
            for v in values[:-1]:
                c.hashes.append(_hash(rowid, v))
                c.entry_rowid.append(rowid)
                c.entry_page.append(n)
        else:
            c.rowids.append(-1 << 63)  # not a rowid: reported as a missing row
            c.pages.append(n)

    def schema_roots(self) -> tuple[dict, dict, list]:
        tables, indexes, roots = {}, {}, []
        for values in self.schema:
            if len(values) < 5:
                self.page_problem(1, "sqlite_schema row with fewer than 5 columns")
                continue
            typ, name, tbl, root, sql = values[:5]
            text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in (typ, name, tbl, sql)]
            typ, name, tbl, sql = text
            if typ not in ("table", "index") or not root:
                continue
            if not isinstance(root, int) or root < 0:
                self.page_problem(1, f"root page {root!r} of {name}")
                continue
            roots.append((typ, name, tbl, root))
            (tables if typ == "table" else indexes)[name] = (tbl, root, sql)
        return tables, indexes, roots

    def compare_indexes(self, tables: dict, indexes: dict, collected: dict[str, Collected]) -> None:
        """Each index holds exactly its table's rowids and, when it indexes plain columns, values
        from the row ("row missing from index", "wrong # of entries in index")."""
        for name, (tbl, root, sql) in indexes.items():
            idx, table = collected.get(name), collected.get(tbl)
            if idx is None or table is None or tbl not in tables or not self.is_rowid_table(tables[tbl][1]):
                continue  # a WITHOUT ROWID table's indexes hold its primary key, not a rowid
            plain, partial = index_shape(sql)
            rows = set(table.rowids)
            missing = [k for k, rowid in enumerate(idx.rowids) if rowid not in rows]
            for k in missing[:5]:
                self.page_problem(idx.pages[k], f"index {name} has an entry for rowid {idx.rowids[k]}, "
                                                f"which is not in {tbl}")
            if not partial and not missing and len(idx.rowids) != len(table.rowids):
                self.page_problem(root, f"index {name} has {len(idx.rowids)} entries, {tbl} has {len(table.rowids)} rows")
            elif not partial and not missing:
                absent = rows.difference(idx.rowids)
                if absent:
                    self.page_problem(root, f"rowid {min(absent)} of {tbl} is missing from index {name}")
            columns = table_columns(tables[tbl][2])
            if not plain or columns is None:
                continue
            self.compare_values(name, idx, table, columns)

    def compare_values(self, name: str, idx: Collected, table: Collected, columns: int) -> None:
        have = set(table.hashes)
        bad = (k for k, value in enumerate(idx.hashes) if value not in have)
        short = table.short
        reported = 0
        for k in bad:
            rowid = idx.entry_rowid[k]
            if rowid in short:
                continue
            self.page_problem(idx.entry_page[k], f"index {name}: the entry for rowid {rowid} does not match "
                                                 f"the row in {table.name}")
            reported += 1
            if reported == 5:
                break

    def is_rowid_table(self, root: int) -> bool:
        if not (1 <= root <= self.npages):
            return False
        return PAGE_TYPES.get(self.page(root)[HEADER if root == 1 else 0], Kind("", True, False)).table

    # --- freelist and the rest ---

    def check_freelist(self) -> None:
        """checkList over the freelist: trunk pages, their leaves, and the count in the header."""
        trunk, left, expected = self.h.freelist_trunk, self.h.freelist_count, self.h.freelist_count
        prev = None
        while trunk:
            problem = self.ref(trunk, "freelist trunk page", prev)
            if problem:
                self.freelist.append((prev, problem))
                return
            if self.autovacuum:
                self.check_ptrmap(trunk, PTRMAP_FREEPAGE, 0, by=trunk)
            left -= 1
            page = self.page(trunk)
            count = u32(page, 4)
            if count > self.usable // 4 - 2:
                self.freelist.append((trunk, f"trunk page lists {count} leaves, more than fit"))
                return
            for k in range(count):
                leaf = u32(page, 8 + 4 * k)
                if self.autovacuum:
                    self.check_ptrmap(leaf, PTRMAP_FREEPAGE, 0, by=trunk)
                problem = self.ref(leaf, "freelist leaf page", trunk)
                if problem:
                    self.freelist.append((trunk, problem))
            left -= count
            prev, trunk = trunk, u32(page, 0)
            if left < -self.npages:
                break
        if left:
            self.freelist.append((None, f"the freelist holds {expected - left} pages, the header says {expected}"))

    def check_unused(self) -> None:
        unused = [p for p in range(1, self.npages + 1)
                  if p not in self.used and not (self.autovacuum and p > 1 and self.ptrmap_page(p) == p)]
        for p in unused[:MAX_UNUSED]:
            self.found.append(Found("SQLITE_UNUSED_PAGE", (p - 1) * self.ps, self.ps, {"page": p}, {"page": p}))
        if len(unused) > MAX_UNUSED:
            self.found[-1].details["more_unused"] = len(unused) - MAX_UNUSED


# --- the scanners -----------------------------------------------------------------------------


def scan_handoff(size: int, received: int, complete: bool, head: bytes, data: bytes | None,
                 limit: int) -> list[tuple]:
    """A database the core collected: its header, and its pages when it fit ``limit`` (else
    ``data`` is None). (code, offset, length, where, details) of each finding."""
    found: list[Found] = []

    def header(problem: str) -> None:
        found.append(Found("SQLITE_HEADER", 0, HEADER, {"page": 1}, {"problem": problem}))

    if len(head) < HEADER:
        if complete:
            header(f"only {len(head)} bytes, shorter than the 100-byte header")
    else:
        h = Header.parse(bytes(head))
        for problem in header_problems(h, bytes(head), received if complete else size):
            header(problem)
        if complete and h.page_size and h.usable >= 480 and bytes(head[:16]) == MAGIC:
            if data is None:
                found.append(Found("SQLITE_TOO_LARGE", 0, size, {}, {"size": size, "limit": limit}))
            else:
                found.extend(Walk(data, h).run())
    return [(f.code, f.offset, f.length, f.where, f.details) for f in found]

"""tar layer: an incremental walk over the (decoded) byte stream.

The walker is fed chunks in order and never needs the whole archive: a header that straddles
two chunks is carried over, member content is hashed as it passes. After damage it
resynchronises at the next header whose checksum holds (formats.md 2.9), so one bad spot does
not hide the members after it. Python's ``tarfile`` is not used: it takes a bad header for the
end of the archive without saying so (formats.md 2.9).
"""
from __future__ import annotations

import collections
import zlib
from typing import Any, Callable

from ..findings import Finding, Location
from .members import DIGESTS, ONESHOT, TYPE_NAMES, Member, type_name

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
HIGH_BYTES = bytes(range(128, 256))
EXTENSION_LIMIT = 16 * 1024 * 1024  # a pax or long-name header larger than this is hostile
DATA_TYPES = frozenset(b"0\x007SD")  # types whose size counts as content
NO_DATA_TYPES = frozenset(b"123456")
EXTENSION_TYPES = frozenset(b"xgXLK")
FAST_TYPES = frozenset(b"0\x00712345LK")  # what the hot path may take
LONG_NAMES = frozenset(b"LK")
LONG_NAME = ord("L")

HEADER, DATA, PAD, EXTENSION, SPARSE_MAP, END, RESYNC, NOT_TAR = range(8)


def parse_number(field: bytes) -> int | None:
    """Octal (NUL or space terminated) or GNU base-256; None when it is neither."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def header_checksums(block: bytes) -> tuple[int, int]:
    """(unsigned, signed) sums with the checksum field counted as spaces (formats.md 2.4)."""
    counted = block[:148] + b"        " + block[156:]
    unsigned = sum(counted)
    high = BLOCK - len(counted.translate(None, HIGH_BYTES))
    return unsigned, unsigned - 256 * high


def byte_sum(block: bytes) -> int:
    """sum(block) for a 512-byte block, about three times as fast: Adler-32 gives the sum
    modulo 65521, and the sum is below 2 * 65521. A block with 257 or more zero bytes (most tar
    headers) sums to at most 255 * 255 < 65521, so the residue is the sum; otherwise the block
    read as one integer gives the sum modulo 255 (256 = 1 mod 255), which picks the candidate."""
    low = ((zlib.adler32(block) & 0xFFFF) - 1) % 65521  # the low half is (1 + sum) mod 65521
    if block.count(0) >= 257:
        return low
    return low if low % 255 == int.from_bytes(block, "little") % 255 else low + 65521


def checksum_matches(block: bytes) -> bool:
    """The stored checksum equals the unsigned (or, rarely, signed) header sum."""
    try:
        stored = int(block[148:156].replace(b"\0", b" "), 8)
    except ValueError:
        return False
    unsigned = byte_sum(block) - sum(block[148:156]) + 256
    return stored == unsigned or stored in header_checksums(block)


def is_valid_header(block: bytes) -> bool:
    if len(block) < BLOCK or block == ZERO_BLOCK:
        return False
    stored = parse_number(block[148:156])
    return stored is not None and stored in header_checksums(block)


def parse_pax(data: bytes) -> tuple[dict[str, bytes], str | None]:
    """pax records ``"<len> <key>=<value>\\n"``; returns (records, problem)."""
    records: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        if data[i] == 0:
            break
        space = data.find(b" ", i, i + 21)
        try:
            length = int(data[i:space]) if space > i else 0
        except ValueError:
            length = 0
        if length <= 0 or i + length > len(data) or data[i + length - 1] != 0x0A:
            return records, f"record at byte {i} has a bad length"
        key, eq, value = data[space + 1:i + length - 1].partition(b"=")
        if not eq:
            return records, f"record at byte {i} has no '='"
        records[key.decode("utf-8", "replace")] = value
        i += length
    return records, None


def _member(record: tuple) -> Member:
    """A member from a raw record: (header offset, data offset, header, size, digest, overrides)."""
    header_offset, data_offset, header, size, digest, extra = record
    flag = header[156:157]
    if extra is None or "name" not in extra:
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        if header[345] and header[257:263] == b"ustar\x00" and flag not in (b"S", b"L", b"K"):
            name = _text(header[345:500]) + "/" + name
    else:
        name = extra["name"]
    linkname = _text(header[157:257]) if flag in (b"1", b"2") else ""
    sparse = parse_number(header[483:495]) if flag == b"S" else None
    if extra is not None:
        linkname, sparse = extra.get("linkname", linkname), extra.get("sparse_size", sparse)
    return _new_member(Member, (name, TYPE_NAMES.get(flag) or type_name(flag), size, _octal(header[100:108]),
                                _octal(header[136:148]), header_offset, data_offset, digest, linkname, sparse))


_new_member = tuple.__new__  # builds a Member without the keyword handling of Member(...)


def _octal(field: bytes) -> int:
    """Fast path for the common NUL- or space-terminated octal; anything else via parse_number."""
    try:
        return int(field[:-1], 8)
    except ValueError:
        return parse_number(field) or 0


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class TarWalker:
    """Feed it decoded chunks in order; members come out in batches through ``on_members``.

    Findings are kept as (finding, uncompressed start, uncompressed end); the caller turns
    uncompressed offsets into archive coordinates. Only a window of recent members is kept in
    memory, so a walk over millions of members stays small.
    """

    def __init__(self, uri: str, digest: str | None, on_members: Callable[[list[Member]], None] | None = None,
                 batch: int = 2048, scanners: Any = None):
        self.uri = uri
        self.scanners = scanners  # scanners of member content (database files), or None
        self.scanner: Any = None  # the current member's scanner
        self.digest_factory = DIGESTS.get(digest) if digest else None
        self.oneshot = ONESHOT.get(digest) if digest else None
        self.on_members = on_members or (lambda members: None)
        self.batch_size = batch
        self.batch: list[tuple] = []  # raw records not yet turned into members
        self.recent: collections.deque[Member] = collections.deque(maxlen=4096)
        self.count = 0
        self.findings: list[tuple[Finding, int, int]] = []  # taken and cleared by the caller
        self.state = HEADER
        self.pos = 0  # uncompressed offset of the next byte fed
        self.carry = bytearray()  # a block (or extension) split across chunks
        self.need = BLOCK
        self.remaining = 0  # content bytes left in the current member
        self.pad = 0
        self.hasher: Any = None
        self.current: tuple | None = None  # the member being read, as a record with no digest yet
        self.current_whole = True  # False once part of its content went missing
        self.pending: dict[str, Any] = {}  # from pax 'x', 'L', 'K' headers
        self.pending_at = 0
        self.global_pax: dict[str, bytes] = {}
        self.extension: tuple[bytes, int, int] | None = None  # (type, size, offset)
        self.zero_blocks = 0
        self.end_offset: int | None = None
        self.trailing = 0  # non-zero bytes after the end marker
        self.trailing_at: int | None = None
        self.resync_from = 0  # where unreadable tar data began (reported)
        self.search_from = 0  # where the search for the next header starts

    # --- feeding --------------------------------------------------------------------------

    def feed(self, view: memoryview, offset: int) -> None:
        if offset != self.pos:  # bytes went missing upstream without lost() being called
            self.lost(self.pos)
            self.pos = offset
        n, i = len(view), 0
        while i < n:
            state = self.state
            if state == HEADER and not self.carry and "pax" not in self.pending and not self.zero_blocks:
                i = self._fast_members(view, offset, i, n)
                if i >= n or self.state != HEADER:
                    continue
            if state == DATA:
                take = min(self.remaining, n - i)
                if self.hasher is not None:
                    self.hasher.update(view[i:i + take])
                if self.scanner is not None:
                    self.scanner.feed(view[i:i + take], self.current[3] - self.remaining)
                self.remaining -= take
                i += take
                if not self.remaining:
                    self._finish_member()
            elif state == PAD:
                take = min(self.pad, n - i)
                self.pad -= take
                i += take
                if not self.pad:
                    self.state = HEADER
            elif state in (HEADER, EXTENSION, SPARSE_MAP):
                take = min(self.need - len(self.carry), n - i)
                if not self.carry and take == self.need:
                    block = view[i:i + take].tobytes()
                else:
                    self.carry += view[i:i + take]
                    if len(self.carry) < self.need:
                        i += take
                        continue
                    block = bytes(self.carry)
                    self.carry.clear()
                i += take
                at = offset + i - len(block)
                if state == HEADER:
                    self._header(block, at)
                elif state == EXTENSION:
                    self._extension(block)
                else:
                    self._sparse_map(block, at)
            elif state == END:
                rest = view[i:].tobytes()
                nonzero = len(rest) - rest.count(0)
                if nonzero and self.trailing_at is None:
                    self.trailing_at = offset + i + len(rest) - len(rest.lstrip(b"\0"))
                self.trailing += nonzero
                i = n
            elif state == RESYNC:
                i = self._resync(view, offset, i)
            else:  # NOT_TAR
                i = n
        self.pos = offset + n

    def _fast_members(self, view: memoryview, offset: int, i: int, n: int) -> int:
        """The hot path: plain members, and GNU long names, whose header and content lie in
        this chunk, one after another. Anything unusual (pax headers, zero blocks, bad
        checksums, content running past the chunk) returns to the general path, which handles
        and reports it."""
        oneshot, record = self.oneshot, self._record
        while i + BLOCK <= n:
            header = view[i:i + BLOCK].tobytes()
            flag = header[156]
            if flag not in FAST_TYPES or header[124] & 0x80 or 0x30 <= header[135] <= 0x37 \
                    or not checksum_matches(header):
                return i
            try:  # 11 octal digits and a terminator, as GNU tar, Python and PostgreSQL write
                size = int(header[124:135], 8) if flag in DATA_TYPES or flag in LONG_NAMES else 0
            except ValueError:
                return i
            data = i + BLOCK
            if data + size > n or (flag in LONG_NAMES and size > EXTENSION_LIMIT):
                return i
            at = offset + i
            if flag in LONG_NAMES:
                if not self.pending:
                    self.pending_at = at
                self.pending["name" if flag == LONG_NAME else "linkname"] = _text(view[data:data + size].tobytes())
            else:
                extra, first = None, at
                if self.pending:
                    extra, first, self.pending = self.pending, self.pending_at, {}
                rec = (first, at + BLOCK, header, size, oneshot(view[data:data + size]) if oneshot else None, extra)
                if self.scanners is not None and size and (extra or self.scanners.wants(header[:100])):
                    self._scan_whole(rec, view[data:data + size])
                record(rec)
            i = data + ((size + BLOCK - 1) & ~(BLOCK - 1))
            if i > n:
                self.pad, self.state = i - n, PAD
                return n
        return i

    def lost(self, offset: int) -> tuple[str | None, int | None]:
        """Bytes from ``offset`` on are missing (upstream damage). Returns the member hit.

        The walker goes on silently from the next valid header: the upstream layer already
        reported this damage and names the member returned here.
        """
        member = self.member_at(offset)
        if self.state == DATA and self.current is not None:
            self._finish_member(complete=False)
        if self.state not in (END, NOT_TAR):
            self._start_resync(offset, offset)
        self.carry.clear()
        self.pending.clear()
        self.extension = None
        return member

    def finish(self, end: int, upstream_damage: bool = False) -> None:
        """The stream ended at uncompressed offset ``end``."""
        if end == 0 and self.state == HEADER and not upstream_damage:  # empty decoded content
            self.state = NOT_TAR
            self._emit("TAR_NOT_TAR", 0, 0)
        if end != self.pos:
            self.lost(self.pos)
            upstream_damage = True
        state = self.state
        if state in (DATA, PAD, EXTENSION, SPARSE_MAP) or (state == HEADER and self.carry):
            what = _member(self.current).name if self.current else ("a header" if state != PAD else "padding")
            missing = self.remaining + self.pad if state in (DATA, PAD) else self.need - len(self.carry)
            if self.current is not None:
                self._finish_member(complete=False)
            if not upstream_damage:
                self._emit("TAR_TRUNCATED", end, end, what=what, missing=missing)
        elif state == HEADER:
            if self.pending and not upstream_damage:
                self._emit("TAR_ORPHAN_EXTENSION", self.pending_at, end, kind="extended")
            if not upstream_damage:
                self._emit("TAR_MISSING_END", end, end)
        elif state == RESYNC and not upstream_damage:
            self._emit("TAR_RESYNC", self.resync_from, end, length=end - self.resync_from)
        elif state == END and self.trailing:
            self._emit("TAR_TRAILING_DATA", self.trailing_at or end, end, length=self.trailing)
        if state == END and not self.count:  # a zeroed-out file reads as an empty archive
            self._emit("TAR_EMPTY", 0, end, size=end)
        self.flush()

    def flush(self) -> None:
        if self.batch:
            members = [_member(record) for record in self.batch]
            self.batch.clear()
            self.recent.extend(members)
            self.on_members(members)

    # --- resuming ---------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any] | None:
        """Where a later walk can take over, as plain data: an offset at which the walk stands
        between members, and what it must know there. None while no such point is at hand
        (resynchronising, in the middle of an extension chain after a zero block). Members
        before that offset must have been flushed by the caller."""
        state = self.state
        if state in (DATA, SPARSE_MAP) and self.current is not None:
            at = self.current[0]  # the member is read again from its (first) header
        elif state == PAD:
            at = self.pos + self.pad
        elif state == EXTENSION:
            at = self.pending_at if self.pending else self.extension[2]
        elif state == HEADER and not (self.pending and self.zero_blocks):
            at = self.pending_at if self.pending else self.pos - len(self.carry) - BLOCK * self.zero_blocks
        elif state in (END, NOT_TAR):
            at = self.pos
        else:
            return None
        return {"at": at, "state": {END: "end", NOT_TAR: "not_tar"}.get(state, "header"), "count": self.count,
                "scanners": self.scanners.state() if self.scanners is not None else None,
                "global_pax": {k: v.decode("latin-1") for k, v in self.global_pax.items()},
                "end_offset": self.end_offset, "trailing": self.trailing, "trailing_at": self.trailing_at}

    def restore(self, snapshot: dict[str, Any], recent: list[Member] = ()) -> None:
        """Continue a walk from ``checkpoint()``'s data; feeding starts at its offset."""
        self.pos, self.count = snapshot["at"], snapshot["count"]
        self.state = {"end": END, "not_tar": NOT_TAR}.get(snapshot["state"], HEADER)
        self.global_pax = {k: v.encode("latin-1") for k, v in snapshot["global_pax"].items()}
        self.end_offset, self.trailing, self.trailing_at = (
            snapshot["end_offset"], snapshot["trailing"], snapshot["trailing_at"])
        self.recent.extend(recent)
        if self.scanners is not None and snapshot.get("scanners") is not None:
            self.scanners.restore(snapshot["scanners"])

    # --- lookups ----------------------------------------------------------------------------

    def member_at(self, offset: int) -> tuple[str | None, int | None]:
        """The member whose header or content holds ``offset``, and the offset within it
        (among the members still in memory: the current one and the recent ones)."""
        if self.current is not None and offset >= self.current[0]:
            return _member(self.current).name, max(0, offset - self.current[1])
        for rec in reversed(self.batch):
            if rec[0] <= offset < rec[1] + _round_up(rec[3]):
                return _member(rec).name, max(0, offset - rec[1])
            if rec[1] + _round_up(rec[3]) <= offset:
                return None, None
        for m in reversed(self.recent):
            if m.header_offset <= offset < m.data_offset + _round_up(m.size):
                return m.name, max(0, offset - m.data_offset)
            if m.data_offset + _round_up(m.size) <= offset:
                break
        return None, None

    def members_since(self, start: int, first_count: int) -> tuple[list[str], int]:
        """Names (at most 10) and the number of members from ``start`` on, given the member
        count when ``start`` was reached."""
        hit = self.member_at(start)[0]
        names = [hit] if hit else []
        later = [m.name for m in self.recent if m.header_offset >= start][:11]
        later += [_member(r).name for r in self.batch if r[0] >= start][:11 - len(later)]
        names += [name for name in later if name != hit][:10 - len(names)]
        total = self.count - first_count + (1 if hit else 0) + (1 if self.current is not None else 0)
        if self.current is not None and self.current[0] >= start and len(names) < 10:
            names.append(_member(self.current).name)
        return names, total

    # --- internals ----------------------------------------------------------------------------

    def _record(self, record: tuple) -> None:
        self.batch.append(record)
        self.count += 1
        if len(self.batch) >= self.batch_size:
            self.flush()

    def _scan_whole(self, record: tuple, content: memoryview) -> None:
        """A member whose content lies in one chunk, scanned in one go."""
        scanner = self.scanners.open(_member(record).name, record[3])
        if scanner is not None:
            scanner.feed(content, 0)
            scanner.close(True)
            self._scanned(scanner, record)

    def _scanned(self, scanner: Any, record: tuple) -> None:
        """A scanner's findings, placed at their member's offsets."""
        if not scanner.found:
            return
        name, data_offset = _member(record).name, record[1]
        for f in scanner.found:
            loc = Location(self.uri, uncompressed_offset=data_offset + f.offset, member=name, member_offset=f.offset,
                           **f.where)
            start = data_offset + f.offset
            self.findings.append((Finding.of(f.code, loc, **f.details), start, start + f.length))

    def _emit(self, code: str, start: int, end: int, **details: Any) -> None:
        member, member_offset = self.member_at(start)
        loc = Location(self.uri, uncompressed_offset=start, member=member, member_offset=member_offset)
        self.findings.append((Finding.of(code, loc, **details), start, end))

    def _header(self, block: bytes, at: int) -> None:
        if block == ZERO_BLOCK:
            self.zero_blocks += 1
            if self.zero_blocks == 2:
                self.state, self.end_offset = END, at + BLOCK
                if self.pending:
                    self._emit("TAR_ORPHAN_EXTENSION", self.pending_at, at, kind="extended")
            return
        if self.zero_blocks == 1:
            self._emit("TAR_LONE_ZERO_BLOCK", at - BLOCK, at)
        self.zero_blocks = 0
        stored = parse_number(block[148:156])
        sums = header_checksums(block)
        if stored is None or stored not in sums:
            if at == 0 and not self.count and block[257:262] != b"ustar":
                self.state = NOT_TAR
                self._emit("TAR_NOT_TAR", 0, 0)
                return
            expected = f"{stored:o}" if stored is not None else "unreadable (" + block[148:156].hex() + ")"
            self._emit("TAR_HEADER_CHECKSUM", at, at + BLOCK, expected=expected, actual=f"{sums[0]:o}")
            self._start_resync(at, at + 1)
            return
        self._member_header(block, at)

    def _start_resync(self, report_from: int, search_from: int) -> None:
        self.state, self.resync_from, self.search_from = RESYNC, report_from, search_from
        self.pending.clear()
        self.extension = None

    def _number(self, block: bytes, field: str, start: int, end: int, at: int) -> int | None:
        value = parse_number(block[start:end])
        if value is None or value < 0:
            self._emit("TAR_BAD_NUMBER", at, at + BLOCK, field=field, value=block[start:end].hex())
            self._start_resync(at, at + 1)
        return value

    def _member_header(self, block: bytes, at: int) -> None:
        flag = block[156:157]
        size = self._number(block, "size", 124, 136, at)
        if size is None or size < 0:
            return
        pax = {**self.global_pax, **self.pending.get("pax", {})}
        if "size" in pax:
            value = pax["size"].strip()
            if not value.isdigit():  # no sign, no spaces, no underscores: a size is digits
                shown = value[:40].decode("latin-1")
                self._emit("TAR_PAX_MALFORMED", at, at + BLOCK, detail=f"size {shown!r} is not a size")
                self._start_resync(at, at + 1)
                return
            size = int(value)
        if flag[0] in EXTENSION_TYPES:
            if size > EXTENSION_LIMIT:
                self._emit("TAR_PAX_MALFORMED", at, at + BLOCK, detail=f"{size}-byte extended header")
                self._start_resync(at, at + 1)
                return
            if not self.pending:
                self.pending_at = at
            self.extension = (flag, size, at)
            self.state, self.need = EXTENSION, _round_up(size) or BLOCK
            if size == 0:
                self.state, self.need = HEADER, BLOCK
            return
        extra = self._overrides(pax, at)
        header_offset = self.pending_at if self.pending else at
        self.pending = {}
        data_len = 0 if flag[0] in NO_DATA_TYPES else size
        self.current, self.current_whole = (header_offset, at + BLOCK, block, data_len, None, extra), True
        self.hasher = self.digest_factory() if self.digest_factory else None
        if self.scanners is not None and data_len and (extra or self.scanners.wants(block[:100] + block[345:500])):
            self.scanner = self.scanners.open(_member(self.current).name, data_len)
        self.remaining, self.pad = data_len, _round_up(data_len) - data_len
        if flag == b"S" and block[482]:
            self.state, self.need = SPARSE_MAP, BLOCK
        elif data_len:
            self.state = DATA
        else:
            self._finish_member()

    def _overrides(self, pax: dict[str, bytes], at: int) -> dict[str, Any] | None:
        """What extension headers say about the member, beyond its own header."""
        extra: dict[str, Any] = {}
        for key in ("GNU.sparse.name", "path"):
            if key in pax:
                extra["name"] = pax[key].decode("utf-8", "backslashreplace")
                break
        else:
            if "name" in self.pending:
                extra["name"] = self.pending["name"]
        if "linkname" in self.pending:
            extra["linkname"] = self.pending["linkname"]
        elif "linkpath" in pax:
            extra["linkname"] = pax["linkpath"].decode("utf-8", "backslashreplace")
        sparse = pax.get("GNU.sparse.realsize", pax.get("GNU.sparse.size"))
        if sparse is not None:
            try:
                extra["sparse_size"] = int(sparse)
            except ValueError:
                self._emit("TAR_PAX_MALFORMED", self.pending_at, at, detail="sparse size is not a number")
        return extra or None

    def _extension(self, data: bytes) -> None:
        flag, size, at = self.extension
        self.extension = None
        self.state, self.need = HEADER, BLOCK
        body = data[:size]
        if flag in (b"L", b"K"):
            self.pending["name" if flag == b"L" else "linkname"] = _text(body)
            return
        records, problem = parse_pax(body)
        if problem:
            self._emit("TAR_PAX_MALFORMED", at, at + BLOCK + _round_up(size), detail=problem)
        if flag == b"g":
            self.global_pax.update(records)
        else:
            self.pending.setdefault("pax", {}).update(records)

    def _sparse_map(self, block: bytes, at: int) -> None:
        if not block[504]:
            self.need = BLOCK
            self.state = DATA if self.remaining else HEADER
            if not self.remaining:
                self._finish_member()

    def _finish_member(self, complete: bool = True) -> None:
        cur = self.current
        if cur is None:
            self.state = HEADER
            return
        ok = complete and self.current_whole and self.hasher is not None
        if self.scanner is not None:
            self.scanner.close(complete)
            self._scanned(self.scanner, cur)
            self.scanner = None
        self._record(cur[:4] + (self.hasher.hexdigest() if ok else None, cur[5]))
        self.current, self.hasher = None, None
        self.state = PAD if self.pad else HEADER
        if not complete:
            self.remaining = self.pad = 0

    def _resync(self, view: memoryview, offset: int, i: int) -> int:
        """Search for the next header with a valid checksum, at any byte offset."""
        base = offset + i - len(self.carry)
        data = bytes(self.carry) + bytes(view[i:])
        self.carry.clear()
        start = max(0, self.search_from - base)
        while True:
            k = data.find(b"ustar", start + 257)
            if k < 0:
                keep = max(start, len(data) - (BLOCK - 1))
                self.carry += data[keep:]
                return len(view)
            h = k - 257
            if h + BLOCK > len(data):
                self.carry += data[h:]
                return len(view)
            if is_valid_header(data[h:h + BLOCK]):
                found = base + h
                if found > self.resync_from:
                    self._emit("TAR_RESYNC", self.resync_from, found, length=found - self.resync_from)
                self.state, self.need, self.zero_blocks = HEADER, BLOCK, 0
                self._header(data[h:h + BLOCK], found)
                return found + BLOCK - offset
            start = h + 1

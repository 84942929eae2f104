"""tar layer: an incremental walk over the (decoded) byte stream.

The walker is fed chunks in order and never needs the whole archive: a header that straddles
two chunks is carried over, member content is hashed as it passes. After damage it
resynchronises at the next header whose checksum holds (formats.md 2.9), so one bad spot does
not hide the members after it. Python's ``tarfile`` is not used: it takes a bad header for the
end of the archive without saying so (formats.md 2.9).
"""
from __future__ import annotations

import bisect
from typing import Any, Callable

from ..findings import Finding, Location
from .members import Member, type_name

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
HIGH_BYTES = bytes(range(128, 256))
EXTENSION_LIMIT = 16 * 1024 * 1024  # a pax or long-name header larger than this is hostile
DATA_TYPES = frozenset(b"0\x007SD")  # types whose size counts as content
NO_DATA_TYPES = frozenset(b"123456")
EXTENSION_TYPES = frozenset(b"xgXLK")

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


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class TarWalker:
    """Feed it decoded chunks in order; read ``members`` and ``findings`` when done.

    Findings are emitted as (finding, uncompressed start, uncompressed end); the caller turns
    uncompressed offsets into archive coordinates.
    """

    def __init__(self, uri: str, digest_factory: Callable[[], Any] | None):
        self.uri = uri
        self.digest_factory = digest_factory
        self.members: list[Member] = []
        self._starts: list[int] = []  # data offsets of members, for lookups
        self.findings: list[tuple[Finding, int, int]] = []
        self.state = HEADER
        self.pos = 0  # uncompressed offset of the next byte fed
        self.carry = bytearray()  # a block (or extension) split across chunks
        self.need = BLOCK
        self.remaining = 0  # content bytes left in the current member
        self.pad = 0
        self.hasher: Any = None
        self.current: dict[str, Any] | None = None
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
            if state == DATA:
                take = min(self.remaining, n - i)
                if self.hasher is not None:
                    self.hasher.update(view[i:i + take])
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
                    block = bytes(view[i:i + take])
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
                rest = bytes(view[i:])
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

    def lost(self, offset: int) -> tuple[str | None, int | None]:
        """Bytes from ``offset`` on are missing (upstream damage). Returns the member hit.

        The walker goes on silently from the next valid header: the upstream layer already
        reported this damage and names the member returned here.
        """
        member = self.member_at(offset)
        if self.state == DATA and self.current is not None:
            self.current["digest_ok"] = False
            self._finish_member(complete=False)
        if self.state not in (END, NOT_TAR):
            self._start_resync(offset, offset)
        self.carry.clear()
        self.pending.clear()
        self.extension = None
        return member

    def finish(self, end: int, upstream_damage: bool = False) -> None:
        """The stream ended at uncompressed offset ``end``."""
        if end != self.pos:
            self.lost(self.pos)
            upstream_damage = True
        state = self.state
        if state in (DATA, PAD, EXTENSION, SPARSE_MAP) or (state == HEADER and self.carry):
            what = self.current["name"] if self.current else ("a header" if state != PAD else "padding")
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

    # --- lookups ----------------------------------------------------------------------------

    def member_at(self, offset: int) -> tuple[str | None, int | None]:
        """The member whose header or content holds ``offset``, and the offset within it."""
        if self.current is not None and offset >= self.current["header_offset"]:
            return self.current["name"], max(0, offset - self.current["data_offset"])
        i = bisect.bisect_right(self._starts, offset) - 1
        while i >= 0:
            m = self.members[i]
            if m.header_offset <= offset < m.data_offset + _round_up(m.size):
                return m.name, max(0, offset - m.data_offset)
            if m.data_offset + _round_up(m.size) <= offset:
                break
            i -= 1
        return None, None

    def members_between(self, start: int, end: int) -> list[str]:
        lo = bisect.bisect_left(self._starts, start)
        hit = self.member_at(start)[0]
        names = [hit] if hit else []
        for m in self.members[lo:]:
            if m.header_offset >= end:
                break
            if m.name != hit:
                names.append(m.name)
        if self.current is not None and self.current["header_offset"] < end and self.current["name"] not in names:
            names.append(self.current["name"])
        return names

    # --- internals ----------------------------------------------------------------------------

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
            if at == 0 and not self.members and block[257:262] != b"ustar":
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
            try:
                size = int(pax["size"])
            except ValueError:
                self._emit("TAR_PAX_MALFORMED", at, at + BLOCK, detail="size is not a number")
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
        name = self._member_name(block, pax)
        mode = parse_number(block[100:108]) or 0
        mtime = parse_number(block[136:148]) or 0
        linkname = self.pending.get("linkname") or (pax["linkpath"].decode("utf-8", "backslashreplace")
                                                     if "linkpath" in pax else _text(block[157:257]))
        header_offset = self.pending_at if self.pending else at
        self.pending = {}
        data_len = 0 if flag[0] in NO_DATA_TYPES else size
        sparse_size = None
        if flag == b"S":
            sparse_size = parse_number(block[483:495])
        elif "GNU.sparse.realsize" in pax or "GNU.sparse.size" in pax:
            sparse_size = int(pax.get("GNU.sparse.realsize", pax.get("GNU.sparse.size", b"0")) or 0)
        self.current = {"name": name, "type": type_name(flag), "size": data_len, "mode": mode,
                        "mtime": mtime, "header_offset": header_offset, "data_offset": at + BLOCK,
                        "linkname": linkname, "sparse_size": sparse_size, "digest_ok": True}
        self.hasher = self.digest_factory() if self.digest_factory else None
        self.remaining, self.pad = data_len, _round_up(data_len) - data_len
        if flag == b"S" and block[482]:
            self.state, self.need = SPARSE_MAP, BLOCK
        elif data_len:
            self.state = DATA
        else:
            self._finish_member()

    def _member_name(self, block: bytes, pax: dict[str, bytes]) -> str:
        if "GNU.sparse.name" in pax:
            return pax["GNU.sparse.name"].decode("utf-8", "backslashreplace")
        if "path" in pax:
            return pax["path"].decode("utf-8", "backslashreplace")
        if "name" in self.pending:
            return self.pending["name"]
        name = _text(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345] and block[156:157] not in (b"S", b"L", b"K"):
            name = _text(block[345:500]) + "/" + name
        return name

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
        digest = self.hasher.hexdigest() if complete and cur["digest_ok"] and self.hasher else None
        member = Member(cur["name"], cur["type"], cur["size"], cur["mode"], cur["mtime"],
                        cur["header_offset"], cur["data_offset"], digest, cur["linkname"],
                        cur["sparse_size"])
        self.members.append(member)
        self._starts.append(member.header_offset)
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

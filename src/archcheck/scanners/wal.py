"""PostgreSQL WAL segments inside an archive: page headers and record CRCs (formats.md 3.9, 6.3 rows 6-7).

A segment streams past once, in pieces of any size. Nothing is kept but the page header or
record header being assembled and a running CRC-32C, so memory does not depend on the segment
or record size (a record's CRC is computed over its data as the data passes, then over the
header's first 20 bytes, as ``xlogreader.c`` does).

The end of valid WAL is not corruption: a segment is pre-filled with zeros or is a recycled
older segment, so after the last record there are zero bytes or stale pages whose
``xlp_pageaddr`` belongs to an older segment. A record header that is zero or does not fit
(``xl_tot_len`` out of range, ``xl_prev`` not the previous record) is taken as the end of WAL
unless the next page is a page of this segment (its ``xlp_pageaddr`` is right): then WAL goes on
past it, and the break is reported as ``WAL_RECORD_INVALID`` and reading resumes at that page.
"""
from __future__ import annotations

import re
import struct
from typing import Any

import crc32c

from . import Found, format_lsn

SEG_SIZE = 16 * 1024 * 1024
XLOG_BLCKSZ = 8192
SHORT_HEADER, LONG_HEADER = 24, 40  # SizeOfXLogShortPHD, SizeOfXLogLongPHD
RECORD_HEADER = 24  # SizeOfXLogRecord
MAXALIGN = 8
MAX_RECORD = 1020 * 1024 * 1024  # XLogRecordMaxSize (PG 16+); bigger is never written

XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
XLP_BKP_REMOVABLE = 0x0004
XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008
XLP_ALL_FLAGS = 0x000F  # released versions up to 18 (formats.md 3.9)

RM_XLOG_ID, XLOG_SWITCH = 0, 0x40

# XLOG_PAGE_MAGIC per major version (formats.md 3.9)
MAGICS = {9: 0xD093, 10: 0xD097, 11: 0xD098, 12: 0xD101, 13: 0xD106, 14: 0xD10D, 15: 0xD110,
          16: 0xD113, 17: 0xD116, 18: 0xD118}
KNOWN_MAGICS = frozenset(MAGICS.values())

SEGMENT_NAME = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(?:\.partial)?")

PAGE = struct.Struct("<HHIQI")  # magic, info, tli, pageaddr, rem_len
LONG = struct.Struct("<QII")  # sysid, seg_size, xlog_blcksz (at 24)
RECORD = struct.Struct("<IIQBB2xI")  # tot_len, xid, prev, info, rmid, crc

# where the record reader is
ALIGN, HEADER, DATA, SKIP, LOST, END, SWITCHED = range(7)


def segment_name_info(name: str, seg_size: int = SEG_SIZE) -> tuple[int, int] | None:
    """(timeline, segment number) for a WAL segment file name ("TTTTTTTTXXXXXXXXYYYYYYYY",
    optionally with a directory or a ``.partial`` suffix); None if it is not one."""
    m = SEGMENT_NAME.fullmatch(name.rsplit("/", 1)[-1])
    if m is None:
        return None
    per_log = 0x100000000 // seg_size
    timeline, log, seg = (int(g, 16) for g in m.groups())
    if timeline == 0 or seg >= per_log:
        return None
    return timeline, log * per_log + seg


def segment_name(timeline: int, segno: int, seg_size: int = SEG_SIZE) -> str:
    per_log = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def segments_needed(start_lsn: int, end_lsn: int, timeline: int, seg_size: int = SEG_SIZE) -> list[str]:
    """The segment file names holding the WAL from start_lsn to end_lsn on one timeline. An
    end exactly on a segment boundary belongs to the segment before (as XLByteToPrevSeg)."""
    last = end_lsn - 1 if end_lsn > start_lsn and end_lsn % seg_size == 0 else end_lsn
    return [segment_name(timeline, segno, seg_size)
            for segno in range(start_lsn // seg_size, max(start_lsn, last) // seg_size + 1)]


class WalSegmentScanner:
    """One WAL segment file, checked as it streams past.

    After close(): ``sysid`` (from the long header), ``timeline`` (from the file name),
    ``first_lsn`` / ``first_prev`` (the first record that starts in this segment and its
    ``xl_prev``, to chain with the segment before), ``last_lsn`` (end of the last record whose
    CRC matched, i.e. its start + xl_tot_len; None if none), ``end_lsn`` / ``end_reason`` (where
    and why reading stopped before the end of the file: "zero record header", "XLOG_SWITCH",
    "recycled: ...", ...; None when records ran to the end of the file; a segment whose first
    page is zero or belongs to an older segment is an unused, pre-allocated or recycled file:
    nothing in it is checked and ``end_lsn`` is its start), ``records`` (records whose CRC was
    compared) and, with ``keep_lsns=True``, ``record_lsns`` (their LSNs).
    """

    def __init__(self, name: str, size: int, seg_size: int = SEG_SIZE, pg_major: int | None = None,
                 *, sysid: int | None = None, keep_lsns: bool = False):
        self.name, self.size, self.seg_size = name, size, seg_size
        info = segment_name_info(name, seg_size)
        self.timeline, self.segno = info if info is not None else (None, None)
        self.seg_start = (self.segno or 0) * seg_size
        self.expected_magic = MAGICS.get(pg_major) if pg_major is not None else None
        self.expected_sysid = sysid
        self.found: list[Found] = []
        self.sysid: int | None = None
        self.first_lsn: int | None = None
        self.first_prev: int | None = None
        self.last_lsn: int | None = None
        self.end_lsn: int | None = None
        self.end_reason: str | None = None
        self.open_record_lsn: int | None = None  # a record running on into the next segment
        self.records = 0
        self.record_lsns: list[int] | None = [] if keep_lsns else None
        self.pos = 0  # bytes of the member seen
        self.page_header = bytearray()
        self.state = ALIGN
        self.magic: int | None = None  # first page's magic, when no version is known
        self.last_tli = 0
        self.after_end_reported = False
        # the record being read
        self.rec_start = 0
        self.rec_header = bytearray()
        self.rec_tot = 0
        self.rec_got = 0
        self.crc = 0
        self.skip_left = 0
        self.prev_start: int | None = None  # member offset of the previous record
        self.pending: tuple[int, str] | None = None  # a break: end of WAL, or damage?

    # --- the scanner interface ------------------------------------------------------------------

    def feed(self, view: memoryview, offset: int) -> None:
        view = memoryview(view).cast("B")
        while len(view):
            in_page = self.pos % XLOG_BLCKSZ
            header_size = LONG_HEADER if self.pos < XLOG_BLCKSZ else SHORT_HEADER
            if in_page < header_size:
                take = min(len(view), header_size - in_page)
                self.page_header += view[:take]
                view, self.pos = view[take:], self.pos + take
                if len(self.page_header) == header_size:
                    self._page(self.pos - header_size, bytes(self.page_header))
                    self.page_header.clear()
                continue
            take = min(len(view), XLOG_BLCKSZ - in_page)
            self._content(view[:take])
            view = view[take:]

    def close(self, complete: bool) -> None:
        if self.size != self.seg_size:
            self.found.append(Found("WAL_SEGMENT_SIZE", 0, self.size, self._where(None),
                                    {"size": self.size, "expected": self.seg_size}))
        if self.state == LOST:  # nothing after the break to say WAL went on: the end of WAL
            self._end(*self.pending)
        elif self.state in (HEADER, DATA):
            # A record running on into the next segment (or past a truncated member) is not
            # checked here: its CRC needs the rest, which is in the next file.
            self.open_record_lsn = self._lsn(self.rec_start)

    # --- pages ----------------------------------------------------------------------------------

    def _page(self, at: int, raw: bytes) -> None:
        magic, info, tli, pageaddr, rem_len = PAGE.unpack_from(raw)
        expected = self.seg_start + at
        if self.state == LOST:
            if magic in KNOWN_MAGICS and pageaddr == expected:
                lsn, problem = self.pending
                self._invalid(lsn, problem + "; WAL goes on after it")
                self.pending = None
                self._resync(info, rem_len)
            else:
                self._end(*self.pending)
        if at == 0 and not any(raw):
            return self._end(self.seg_start, "the first page is zero: an unused segment")
        if at == 0 and magic in KNOWN_MAGICS and pageaddr < self.seg_start and pageaddr % self.seg_size == 0:
            # a recycled segment that has not been written yet: all of it is an older segment
            return self._end(self.seg_start, f"recycled: the first page is from {format_lsn(pageaddr)}")
        if self.state == ALIGN and at and (not any(raw) or pageaddr < expected):
            # the last record ended on the page boundary: a zero or stale page is the end of WAL
            self._end(expected, "zero page" if not any(raw) else f"stale page from {format_lsn(pageaddr)}")
        if self.state in (END, SWITCHED):
            self._page_after_end(at, raw, magic, info, pageaddr)
            return
        problems = []
        if self.expected_magic is not None:
            if magic != self.expected_magic:
                problems.append(f"xlp_magic {magic:04X}, expected {self.expected_magic:04X}")
        elif magic not in KNOWN_MAGICS:
            problems.append(f"unknown xlp_magic {magic:04X}")
        elif self.magic is not None and magic != self.magic:
            problems.append(f"xlp_magic {magic:04X} differs from the first page's {self.magic:04X}")
        if self.magic is None and magic in KNOWN_MAGICS:
            self.magic = magic
        if info & ~XLP_ALL_FLAGS:
            problems.append(f"undefined xlp_info bits {info & ~XLP_ALL_FLAGS:04X}")
        if at == 0:
            if not info & XLP_LONG_HEADER:
                problems.append("first page without XLP_LONG_HEADER")
            sysid, seg_size, blcksz = LONG.unpack_from(raw, 24)
            self.sysid = sysid
            if self.expected_sysid is not None and sysid != self.expected_sysid:
                problems.append(f"xlp_sysid {sysid}, expected {self.expected_sysid}")
            if seg_size != self.seg_size:
                problems.append(f"xlp_seg_size {seg_size}, expected {self.seg_size}")
            if blcksz != XLOG_BLCKSZ:
                problems.append(f"xlp_xlog_blcksz {blcksz}, expected {XLOG_BLCKSZ}")
        elif info & XLP_LONG_HEADER:
            problems.append("XLP_LONG_HEADER on a page other than the first")
        if pageaddr != expected:
            problems.append(f"xlp_pageaddr {format_lsn(pageaddr)}, expected {format_lsn(expected)}")
        # The TLI in the file name is not required: the first pages of the segment where the
        # timeline switches still carry the old one. It can't be newer, and never decreases.
        if tli == 0 or (self.timeline is not None and tli > self.timeline):
            problems.append(f"xlp_tli {tli}, file name timeline {self.timeline}")
        elif tli < self.last_tli:
            problems.append(f"xlp_tli {tli} after {self.last_tli}")
        else:
            self.last_tli = tli
        contrecord = bool(info & XLP_FIRST_IS_CONTRECORD)
        if contrecord and rem_len == 0:
            problems.append("XLP_FIRST_IS_CONTRECORD with xlp_rem_len 0")
        if at == 0:  # the start of the file: whatever continues from the segment before is skipped
            self._resync(info, rem_len)
        elif self.state in (HEADER, DATA, SKIP):
            left = self.skip_left if self.state == SKIP else (
                self.rec_tot - self.rec_got if len(self.rec_header) >= 4 else None)
            if not contrecord:
                if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD:
                    pass  # the record was abandoned at a crash and WAL goes on from this page
                elif self.state == SKIP:
                    problems.append(f"no XLP_FIRST_IS_CONTRECORD, but {left} bytes of a record remain")
                else:
                    self._invalid(self._lsn(self.rec_start), "the record goes on to a page without "
                                  "XLP_FIRST_IS_CONTRECORD")
                self._resync(info, rem_len)
            elif left is not None and rem_len != left:
                problems.append(f"xlp_rem_len {rem_len}, but {left} bytes of the record remain")
        elif contrecord:
            problems.append(f"XLP_FIRST_IS_CONTRECORD (xlp_rem_len {rem_len}) but no record goes on")
        if problems:
            self._page_problem(at, len(raw), "; ".join(problems))

    def _resync(self, info: int, rem_len: int) -> None:
        """Start reading records at a page start: skip the tail of a record begun before."""
        self.prev_start = None  # xl_prev of the next record points to a record not read
        if info & XLP_FIRST_IS_CONTRECORD and rem_len:
            self.state, self.skip_left = SKIP, rem_len
        else:
            self.state = ALIGN

    def _page_after_end(self, at: int, raw: bytes, magic: int, info: int, pageaddr: int) -> None:
        """Past the end of WAL: zero pages, stale pages of an older segment (recycled) and
        padding pages of this one (after XLOG_SWITCH) are normal; anything else is reported once."""
        if self.after_end_reported or not any(raw):
            return
        if magic in KNOWN_MAGICS and not info & ~XLP_ALL_FLAGS and pageaddr % self.seg_size == at \
                and pageaddr <= self.seg_start + at:
            return
        self.after_end_reported = True
        self._page_problem(at, len(raw), f"after the end of WAL at {format_lsn(self.end_lsn)}: neither "
                           f"zero nor a page of this or an older segment (xlp_magic {magic:04X}, "
                           f"xlp_pageaddr {format_lsn(pageaddr)})", after_end=True)

    # --- records --------------------------------------------------------------------------------

    def _content(self, view: memoryview) -> None:
        """Bytes of one page after its header."""
        while len(view):
            state = self.state
            if state == ALIGN:
                pad = -self.pos % MAXALIGN
                if pad:
                    take = min(pad, len(view))
                    view, self.pos = view[take:], self.pos + take
                    continue
                self.state, self.rec_start = HEADER, self.pos
                self.rec_header.clear()
            elif state == HEADER:
                take = min(len(view), RECORD_HEADER - len(self.rec_header))
                self.rec_header += view[:take]
                view, self.pos = view[take:], self.pos + take
                if len(self.rec_header) >= 4:
                    self.rec_tot = struct.unpack_from("<I", self.rec_header)[0]
                    self.rec_got = len(self.rec_header)
                    if self.rec_tot == 0:
                        self._break("zero record header")
                        continue
                if len(self.rec_header) == RECORD_HEADER:
                    self._record_header()
            elif state == DATA:
                take = min(len(view), self.rec_tot - self.rec_got)
                self.crc = crc32c.crc32c(view[:take], value=self.crc)
                self.rec_got += take
                view, self.pos = view[take:], self.pos + take
                if self.rec_got == self.rec_tot:
                    self._record_end()
            elif state == SKIP:
                take = min(len(view), self.skip_left)
                self.skip_left -= take
                view, self.pos = view[take:], self.pos + take
                if not self.skip_left:
                    self.state = ALIGN
            else:  # LOST, END, SWITCHED: nothing more to read on this page
                self.pos += len(view)
                return

    def _record_header(self) -> None:
        tot, _xid, prev, _info, _rmid, _crc = RECORD.unpack_from(self.rec_header)
        lsn = self._lsn(self.rec_start)
        if tot < RECORD_HEADER:
            return self._break(f"xl_tot_len {tot} is less than {RECORD_HEADER}")
        if tot > MAX_RECORD:
            return self._break(f"xl_tot_len {tot} is too large")
        if self.prev_start is not None and prev != self._lsn(self.prev_start):
            return self._break(f"xl_prev {format_lsn(prev)}, expected {format_lsn(self._lsn(self.prev_start))}")
        if self.first_lsn is None:
            self.first_lsn, self.first_prev = lsn, prev
        self.state, self.crc, self.rec_got = DATA, 0, RECORD_HEADER
        if tot == RECORD_HEADER:
            self._record_end()

    def _record_end(self) -> None:
        tot, _xid, _prev, info, rmid, stored = RECORD.unpack_from(self.rec_header)
        actual = crc32c.crc32c(bytes(self.rec_header[:20]), value=self.crc)
        lsn = self._lsn(self.rec_start)
        self.records += 1
        if self.record_lsns is not None:
            self.record_lsns.append(lsn)
        if actual != stored:
            self.found.append(Found("WAL_RECORD_CRC", self.rec_start, self.pos - self.rec_start,
                                    self._where(lsn), {"lsn": format_lsn(lsn), "expected": f"{stored:08x}",
                                                       "actual": f"{actual:08x}"}))
        else:
            self.last_lsn = lsn + tot
        self.prev_start = self.rec_start
        if rmid == RM_XLOG_ID and info & 0xF0 == XLOG_SWITCH:  # the rest of the segment is padding
            self.state, self.end_lsn, self.end_reason = SWITCHED, lsn + tot, "XLOG_SWITCH"
        else:
            self.state = ALIGN

    def _break(self, problem: str) -> None:
        """A record header that does not fit: the end of WAL unless the next page says otherwise."""
        self.state, self.pending = LOST, (self._lsn(self.rec_start), problem)

    def _end(self, lsn: int, reason: str) -> None:
        self.state, self.end_lsn, self.end_reason, self.pending = END, lsn, reason, None

    # --- findings -------------------------------------------------------------------------------

    def _lsn(self, at: int) -> int:
        return self.seg_start + at

    def _where(self, lsn: int | None) -> dict[str, Any]:
        where: dict[str, Any] = {"wal_segment": self.name}
        if lsn is not None:
            where["lsn"] = format_lsn(lsn)
        return where

    def _page_problem(self, at: int, length: int, problem: str, **extra: Any) -> None:
        self.found.append(Found("WAL_PAGE_HEADER", at, length, self._where(self._lsn(at)),
                                {"problem": problem, **extra}))

    def _invalid(self, lsn: int, problem: str) -> None:
        at = lsn - self.seg_start
        self.found.append(Found("WAL_RECORD_INVALID", at, RECORD_HEADER, self._where(lsn),
                                {"lsn": format_lsn(lsn), "problem": problem}))

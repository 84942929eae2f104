"""WAL segments (formats.md 3.9), against real PostgreSQL 15 WAL from tests/pg.py: clean segments
give no finding whatever the piece sizes, damage is named at the damaged record or page, and the
records validated are exactly those pg_waldump prints."""
from __future__ import annotations

import json
import os
import re
import struct
import tarfile
from pathlib import Path

import pytest

from archcheck.scanners import format_lsn
from archcheck.scanners.wal import SEG_SIZE, segment_name_info, segments_needed
from scanning import Scanned, scan_pieces
from pg import chown_tree, parse_lsn, pg_bin, pg_dir, run_pg

PAGE = 8192
PATTERNS = [
    [1, 777, 1 << 20],
    [SEG_SIZE],
    [PAGE],
    [3, 24, 40, 5000, 65536],
    [1, 1, 2, 8191, 131072 + 5],
]


# --------------------------------------------------------------------------- helpers

def scan(name: str, data: bytes, pattern: list[int] = PATTERNS[0], size: int | None = None,
         **kw) -> Scanned:
    """Feed `data` in pieces cycling through `pattern`, as the tar walker would."""
    return scan_pieces("wal", name, data, pattern, size=size, keep_lsns=True, **kw)


def summary(s: Scanned) -> tuple:
    return (s.records, s.record_lsns, s.last_lsn, s.end_lsn, s.end_reason, s.first_lsn,
            s.first_prev, s.sysid, s.open_record_lsn, [(f.code, f.offset, f.where, f.details) for f in s.found])


def segments_of(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name.rsplit("/", 1)[-1]: t.extractfile(m).read() for m in t
                if m.isfile() and segment_name_info(m.name)}


def wal_range(manifest: Path) -> tuple[int, int, int]:
    (r,) = json.loads(manifest.read_text())["WAL-Ranges"]
    return parse_lsn(r["Start-LSN"]), parse_lsn(r["End-LSN"]), r["Timeline"]


def record_header(data: bytes, at: int) -> tuple[int, int]:
    """(xl_tot_len, xl_prev) of the record at `at`, header not split across pages."""
    tot, _xid, prev = struct.unpack_from("<IIQ", data, at)
    return tot, prev


def flip(data: bytes, at: int, mask: int = 0x10) -> bytes:
    b = bytearray(data)
    b[at] ^= mask
    return bytes(b)


def codes(s: Scanned) -> list[str]:
    return [f.code for f in s.found]


@pytest.fixture(scope="module")
def wal(pgfx):
    out, facts = pgfx
    quiet, busy = out / "backup-tar", out / "backup-busy"
    return {
        "facts": facts,
        "quiet": segments_of(quiet / "pg_wal.tar"), "quiet_range": wal_range(quiet / "backup_manifest"),
        "busy": segments_of(busy / "pg_wal.tar"), "busy_range": wal_range(busy / "backup_manifest"),
    }


@pytest.fixture(scope="module")
def busy(wal):
    """(name, data, clean scan) of the busy backup's segment holding its End-LSN: it ends in the
    backup's XLOG_SWITCH.  pgbench is rate-limited so this is usually also the start segment, but
    a slow backup may spill into a second one, and the tests must not depend on that."""
    start, end, tli = wal["busy_range"]
    name = segments_needed(start, end, tli)[-1]
    data = wal["busy"][name]
    clean = scan(name, data)
    assert clean.end_reason == "XLOG_SWITCH", (name, clean.end_reason)
    return name, data, clean


def inside_one_page(data: bytes, lsns: list[int], seg_start: int, min_len: int = 48) -> int:
    """A record's member offset: in the middle of the segment, wholly inside one page."""
    for lsn in lsns[len(lsns) // 2:]:
        at = lsn - seg_start
        tot, _ = record_header(data, at)
        if tot >= min_len and at % PAGE + tot <= PAGE:
            return at
    raise AssertionError("no suitable record")


# --------------------------------------------------------------------------- names

def test_segment_name_info():
    assert segment_name_info("000000010000000000000004") == (1, 4)
    assert segment_name_info("pg_wal/0000000200000001000000FF") == (2, 0x1FF)
    assert segment_name_info("000000010000000000000004.partial") == (1, 4)
    assert segment_name_info("000000010000000100000003", 64 << 20) == (1, 64 + 3)
    assert segment_name_info("000000010000000000000100") is None  # only 00..FF with 16 MiB
    assert segment_name_info("00000001000000000000000a") is None  # PostgreSQL writes upper case
    assert segment_name_info("00000001.history") is None
    assert segment_name_info("000000010000000000000004.00000028.backup") is None
    assert segment_name_info("000000000000000000000004") is None  # timeline 0 does not exist


def test_segments_needed_synthetic():
    assert segments_needed(0x4000028, 0x4000100, 1) == ["000000010000000000000004"]
    assert segments_needed(0x1FF000028, 0x200000100, 3) == ["0000000300000001000000FF",
                                                            "000000030000000200000000"]
    assert segments_needed(0x4000028, 0x6000000, 1) == ["000000010000000000000004",
                                                        "000000010000000000000005"]
    assert segments_needed(0x4000028, 0x4000028, 1, seg_size=1 << 20) == ["000000010000000000000040"]


@pytest.mark.parametrize("which", ["quiet", "busy"])
def test_segments_needed_match_pg_wal_tar(wal, which):
    start, end, tli = wal[which + "_range"]
    needed, streamed = segments_needed(start, end, tli), sorted(wal[which])
    # pg_basebackup may have received a little past End-LSN, into the next segment
    nxt = segments_needed(end + SEG_SIZE, end + SEG_SIZE, tli)
    assert streamed in (needed, needed + nxt), (format_lsn(start), format_lsn(end), streamed)
    facts = wal["facts"]["backup_tar" if which == "quiet" else "backup_busy"]
    assert needed[0] == facts["start_wal_file"]


# --------------------------------------------------------------------------- clean WAL

@pytest.mark.parametrize("which", ["quiet", "busy"])
def test_clean_segments(wal, which):
    facts = wal["facts"]
    start, end, _ = wal[which + "_range"]
    sysid = int(facts["system_identifier"])
    for name, data in sorted(wal[which].items()):
        results = [summary(scan(name, data, p, pg_major=15, sysid=sysid)) for p in PATTERNS]
        assert all(r == results[0] for r in results), "the result depends on the piece sizes"
        s = scan(name, data)
        assert s.found == []
        assert s.sysid == sysid and s.timeline == 1
        assert s.records > 0 and s.last_lsn is not None
        seg_start = segment_name_info(name)[1] * SEG_SIZE
        if seg_start <= start < seg_start + SEG_SIZE:  # the segment holding the start LSN
            assert s.first_lsn <= start < s.last_lsn
            assert start in s.record_lsns  # the backup starts at a record (its checkpoint's redo)
        if seg_start <= end < seg_start + SEG_SIZE:
            # End-LSN is the end of the backup's XLOG_BACKUP_END record: a record starts right
            # after it (the backup's XLOG_SWITCH, or one written concurrently), and the WAL
            # streamed for the backup stops at that switch
            after = -(-end // 8) * 8
            if after % PAGE == 0:  # past the page header
                after += 40 if after % SEG_SIZE == 0 else 24
            assert after in s.record_lsns
            assert s.end_reason == "XLOG_SWITCH" and s.record_lsns[-1] >= end
            assert s.last_lsn == s.end_lsn > end
            assert s.open_record_lsn is None


def test_busy_segment_is_busy(busy):
    _, _, s = busy
    assert s.records > 1000  # pgbench wrote while the backup ran: full-page images and all


def test_server_pg_wal_with_recycled_segments(pgfx):
    """The stopped cluster's own pg_wal: the current segment ends in zeros; the others are
    recycled (their pages belong to older segments) and are not errors."""
    _, facts = pgfx
    pg_wal = Path(facts["main_datadir"]) / "pg_wal"
    names = sorted(n for n in os.listdir(pg_wal) if segment_name_info(n))
    assert names
    scanned = {n: scan(n, (pg_wal / n).read_bytes(), PATTERNS[3]) for n in names}
    for n, s in scanned.items():
        assert s.found == [], n
    assert any(s.records for s in scanned.values())


# --------------------------------------------------------------------------- damage

def test_flipped_bit_in_record_data(busy):
    name, data, clean = busy
    seg_start = segment_name_info(name)[1] * SEG_SIZE
    at = inside_one_page(data, clean.record_lsns, seg_start)
    damaged = flip(data, at + 30)
    for p in PATTERNS[:3]:
        s = scan(name, damaged, p)
        assert codes(s) == ["WAL_RECORD_CRC"]
        (f,) = s.found
        assert f.offset == at
        assert f.details["lsn"] == format_lsn(seg_start + at) == f.where["lsn"]
        assert f.where["wal_segment"] == name
        assert f.details["expected"] != f.details["actual"]
        assert s.records == clean.records  # reading went on
        assert s.last_lsn == clean.last_lsn


@pytest.fixture(scope="module")
def busy_start(wal):
    """(name, data, clean scan) of the segment holding the busy backup's start: its checkpoint is
    followed by full-page images, which a later segment may lack."""
    name = wal["facts"]["backup_busy"]["start_wal_file"]
    data = wal["busy"][name]
    return name, data, scan(name, data)


def test_flipped_bit_in_record_spanning_pages(busy_start):
    """A full-page image runs over page boundaries: damage on its second page is found at its start."""
    name, data, clean = busy_start
    seg_start = segment_name_info(name)[1] * SEG_SIZE
    at = next(lsn - seg_start for lsn in clean.record_lsns
              if (lsn - seg_start) % PAGE + record_header(data, lsn - seg_start)[0] > PAGE + 200)
    second_page = (at // PAGE + 1) * PAGE
    s = scan(name, flip(data, second_page + 24 + 100), PATTERNS[4])
    assert codes(s) == ["WAL_RECORD_CRC"] and s.found[0].offset == at
    assert s.found[0].length > second_page - at


def test_damaged_record_header(busy):
    """A zeroed or wrong xl_prev header in the middle: WAL goes on on the next page, so it is
    damage (not the end of WAL), and reading resumes there."""
    name, data, clean = busy
    seg_start = segment_name_info(name)[1] * SEG_SIZE
    at = inside_one_page(data, clean.record_lsns, seg_start)
    zeroed = data[:at] + bytes(24) + data[at + 24:]
    prev_damaged = flip(data, at + 9)
    for damaged in (zeroed, prev_damaged):
        s = scan(name, damaged, PATTERNS[0])
        assert codes(s) == ["WAL_RECORD_INVALID"]
        assert s.found[0].offset == at and s.found[0].details["lsn"] == format_lsn(seg_start + at)
        assert s.last_lsn == clean.last_lsn and s.end_reason == "XLOG_SWITCH"
        assert 0 < clean.records - s.records < 200  # only the rest of that page was skipped


@pytest.mark.parametrize("field,offset,value", [("xlp_magic", 0, 0xD0FF), ("xlp_pageaddr", 8, None),
                                                ("xlp_info", 2, 0x0040), ("xlp_tli", 4, 2)])
def test_damaged_page_header(busy, field, offset, value):
    name, data, clean = busy
    seg_start = segment_name_info(name)[1] * SEG_SIZE
    page = min(100, (clean.end_lsn - seg_start) // PAGE - 2)  # inside the valid WAL
    assert page >= 2, format_lsn(clean.end_lsn)
    b = bytearray(data)
    if field == "xlp_pageaddr":
        struct.pack_into("<Q", b, page * PAGE + 8, seg_start + (page + 1) * PAGE)
    elif field == "xlp_info":
        b[page * PAGE + 2] |= value
    elif field == "xlp_tli":
        struct.pack_into("<I", b, page * PAGE + 4, value)
    else:
        struct.pack_into("<H", b, page * PAGE, value)
    for pg_major in (None, 15):
        s = scan(name, bytes(b), PATTERNS[0], pg_major=pg_major)
        assert codes(s) == ["WAL_PAGE_HEADER"], s.found
        (f,) = s.found
        assert f.offset == page * PAGE and f.where["lsn"] == format_lsn(seg_start + page * PAGE)
        assert field in f.details["problem"]
        assert s.records == clean.records  # the records on it are still checked


def test_wrong_version_magic(busy):
    name, data, _ = busy
    s = scan(name, data, PATTERNS[1], pg_major=16)
    assert set(codes(s)) == {"WAL_PAGE_HEADER"}
    assert "D113" in s.found[0].details["problem"] and s.found[0].offset == 0


def test_first_page_long_header(busy):
    name, data, _ = busy
    b = bytearray(data)
    struct.pack_into("<I", b, 32, 1 << 20)  # xlp_seg_size
    s = scan(name, bytes(b), PATTERNS[2], sysid=1234)
    assert codes(s) == ["WAL_PAGE_HEADER"] and s.found[0].offset == 0
    assert "xlp_seg_size" in s.found[0].details["problem"] and "xlp_sysid" in s.found[0].details["problem"]


def test_truncated_segment(busy):
    name, data, _ = busy
    cut = data[:SEG_SIZE // 2 + 1234]
    s = scan(name, cut, PATTERNS[0])
    assert codes(s) == ["WAL_SEGMENT_SIZE"]
    assert s.found[0].details == {"size": len(cut), "expected": SEG_SIZE}


def test_a_record_across_a_page_ends_after_the_page_header(busy):
    """The end of a record split over pages counts the page header between its pieces."""
    name, data, clean = busy
    seg_start = segment_name_info(name)[1] * SEG_SIZE
    for lsn in clean.record_lsns[len(clean.record_lsns) // 2:]:
        at = lsn - seg_start
        if at % PAGE + 24 > PAGE:
            continue  # the header itself is split
        tot, _ = record_header(data, at)
        if PAGE < at % PAGE + tot <= 2 * PAGE - 24:
            break  # crosses exactly one boundary
    else:
        raise AssertionError("no record across one page boundary")
    end = at + tot + 24  # the next page's short header
    b = bytearray(data)
    b[end:] = bytes(len(b) - end)  # WAL ends right after it
    s = scan(name, bytes(b))
    assert s.found == [] and s.record_lsns[-1] == lsn
    assert s.last_lsn == seg_start + end
    assert s.end_lsn == seg_start + -(-end // 8) * 8


def test_stale_tail_is_not_an_error(busy):
    """After XLOG_SWITCH, pages of an older segment (recycling) and zeros are normal."""
    name, data, clean = busy
    seg_start = segment_name_info(name)[1] * SEG_SIZE
    b = bytearray(data)
    first_free = clean.end_lsn - seg_start
    garbage = min(200, -first_free % PAGE)  # none when WAL ends on a page boundary
    b[first_free:first_free + garbage] = os.urandom(garbage)  # garbage after the switch record
    for page in range(first_free // PAGE + 1, SEG_SIZE // PAGE, 3):
        source = 1 + page % (first_free // PAGE - 1)  # a page of real WAL
        b[page * PAGE:(page + 1) * PAGE] = data[source * PAGE:(source + 1) * PAGE]
        struct.pack_into("<Q", b, page * PAGE + 8, seg_start - 2 * SEG_SIZE + page * PAGE)
    s = scan(name, bytes(b), PATTERNS[0])
    assert s.found == [] and summary(s)[:5] == summary(clean)[:5]
    # but a page claiming to be from a later segment there is reported (once)
    page = SEG_SIZE // PAGE - 10
    struct.pack_into("<Q", b, page * PAGE + 8, seg_start + SEG_SIZE + page * PAGE)
    s = scan(name, bytes(b), PATTERNS[0])
    assert codes(s) == ["WAL_PAGE_HEADER"] and s.found[0].offset == page * PAGE
    assert s.found[0].details["after_end"] is True


# --------------------------------------------------------------------------- pg_waldump

def _waldump_lsns(directory: Path, name: str) -> list[int]:
    cp = run_pg("pg_waldump", "-p", directory, name, check=False)
    lsns = [parse_lsn(m[1]) for m in re.finditer(r"lsn: ([0-9A-F]+/[0-9A-F]+),", cp.stdout)]
    assert lsns, cp.stderr
    return lsns


@pytest.mark.skipif(pg_bin("pg_waldump") is None, reason="pg_waldump not installed")
def test_pg_waldump_agrees(wal, pgfx, tmp_path):
    _, facts = pgfx
    work = pg_dir(tmp_path / "wal", 0o755)
    pg_wal = Path(facts["main_datadir"]) / "pg_wal"
    own = {n: (pg_wal / n).read_bytes() for n in os.listdir(pg_wal) if segment_name_info(n)}
    checked = 0
    for segments in (wal["quiet"], wal["busy"], own):
        for name, data in segments.items():
            s = scan(name, data, PATTERNS[0])
            if not s.records:  # a recycled segment: pg_waldump finds no record either
                continue
            (work / name).write_bytes(data)
            chown_tree(work)
            assert _waldump_lsns(work, name) == s.record_lsns, name
            (work / name).unlink()
            checked += 1
    assert checked >= 3

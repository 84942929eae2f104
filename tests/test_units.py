"""Pure functions against the format facts (formats.md), with known vectors. The core's own
(tar numbers, pax records, header checksums, frame headers) are Rust unit tests under
native/core; the tar walk is reached here through archcheck._native."""
from __future__ import annotations

import pickle
import json

import pytest

from archcheck import _native
from archcheck.findings import CATALOGUE, Finding, Location, verdict
from archcheck.layers.members import Member
from archcheck.layers.raw import combine
from archcheck.reports import safe_text
from archcheck.segments import plan_segments, segments_overlapping
from archcheck.layers.zstd import Frame
from archcheck.worker import SegmentResult

MiB = 1024 * 1024

# The contract: codes are append-only and keep their category, severity and layer.
FROZEN_CODES = {
    "SOURCE_READ_ERROR": ("transient", "error", "raw"),
    "SOURCE_UNSTABLE": ("transient", "error", "raw"),
    "ZSTD_BAD_MAGIC": ("corruption", "error", "zstd"),
    "ZSTD_TRAILING_GARBAGE": ("corruption", "error", "zstd"),
    "ZSTD_RESERVED_BIT": ("corruption", "error", "zstd"),
    "ZSTD_RESERVED_BLOCK": ("corruption", "error", "zstd"),
    "ZSTD_BLOCK_TOO_LARGE": ("corruption", "error", "zstd"),
    "ZSTD_TRUNCATED_FRAME": ("corruption", "error", "zstd"),
    "ZSTD_DECODE_ERROR": ("corruption", "error", "zstd"),
    "ZSTD_CHECKSUM_MISMATCH": ("corruption", "error", "zstd"),
    "ZSTD_CONTENT_SIZE_MISMATCH": ("corruption", "error", "zstd"),
    "ZSTD_SEEK_TABLE_MISMATCH": ("corruption", "error", "zstd"),
    "ZSTD_DICTIONARY_REQUIRED": ("unverified", "warning", "zstd"),
    "ZSTD_LEGACY_FRAME": ("unverified", "warning", "zstd"),
    "ZSTD_NO_CHECKSUM": ("info", "info", "zstd"),
    "ZSTD_LARGE_WINDOW": ("info", "info", "zstd"),
    "ZSTD_SINGLE_FRAME": ("info", "info", "zstd"),
    "TAR_HEADER_CHECKSUM": ("corruption", "error", "tar"),
    "TAR_BAD_NUMBER": ("corruption", "error", "tar"),
    "TAR_TRUNCATED": ("corruption", "error", "tar"),
    "TAR_MISSING_END": ("corruption", "error", "tar"),  # was "warning" until 0.3: it always failed the run
    "TAR_END_MARKER_DAMAGED": ("warning", "warning", "tar"),
    "GZIP_BAD_HEADER": ("corruption", "error", "gzip"),
    "GZIP_HEADER_CRC": ("corruption", "error", "gzip"),
    "GZIP_DECODE_ERROR": ("corruption", "error", "gzip"),
    "GZIP_TRUNCATED": ("corruption", "error", "gzip"),
    "GZIP_CRC_MISMATCH": ("corruption", "error", "gzip"),
    "GZIP_SIZE_MISMATCH": ("corruption", "error", "gzip"),
    "GZIP_TRAILING_DATA": ("drift", "warning", "gzip"),
    "XZ_BAD_HEADER": ("corruption", "error", "xz"),
    "XZ_DECODE_ERROR": ("corruption", "error", "xz"),
    "XZ_TRUNCATED": ("corruption", "error", "xz"),
    "XZ_BAD_FOOTER": ("corruption", "error", "xz"),
    "XZ_BAD_INDEX": ("corruption", "error", "xz"),
    "XZ_MEMORY_LIMIT": ("unverified", "warning", "xz"),
    "XZ_NO_CHECK": ("info", "info", "xz"),
    "XZ_UNSUPPORTED_CHECK": ("warning", "warning", "xz"),
    "XZ_TRAILING_DATA": ("drift", "warning", "xz"),
    "LZ4_BAD_HEADER": ("corruption", "error", "lz4"),
    "LZ4_DECODE_ERROR": ("corruption", "error", "lz4"),
    "LZ4_BLOCK_CHECKSUM": ("corruption", "error", "lz4"),
    "LZ4_CONTENT_CHECKSUM": ("corruption", "error", "lz4"),
    "LZ4_SIZE_MISMATCH": ("corruption", "error", "lz4"),
    "LZ4_TRUNCATED": ("corruption", "error", "lz4"),
    "LZ4_NO_CHECKSUM": ("info", "info", "lz4"),
    "LZ4_TRAILING_DATA": ("drift", "warning", "lz4"),
    "BZIP2_BAD_HEADER": ("corruption", "error", "bzip2"),
    "BZIP2_DECODE_ERROR": ("corruption", "error", "bzip2"),
    "BZIP2_TRUNCATED": ("corruption", "error", "bzip2"),
    "BZIP2_TRAILING_DATA": ("drift", "warning", "bzip2"),
    "AGE_BAD_HEADER": ("corruption", "error", "age"),
    "AGE_CHUNK_AUTH": ("corruption", "error", "age"),
    "AGE_TRUNCATED": ("corruption", "error", "age"),
    "AGE_NOT_DECRYPTED": ("unverified", "warning", "age"),
    "TAR_LONE_ZERO_BLOCK": ("drift", "warning", "tar"),
    "TAR_TRAILING_DATA": ("drift", "warning", "tar"),
    "TAR_PAX_MALFORMED": ("corruption", "error", "tar"),
    "TAR_ORPHAN_EXTENSION": ("corruption", "error", "tar"),
    "TAR_RESYNC": ("info", "info", "tar"),
    "TAR_NOT_TAR": ("info", "info", "tar"),
    "FINDINGS_LIMITED": ("info", "info", "run"),
    "ZSTD_SIZE_NOTE_MISMATCH": ("corruption", "error", "zstd"),
    "TAR_EMPTY": ("drift", "warning", "tar"),
    "TAR_MEMBERS_AFTER_END": ("corruption", "error", "tar"),
    "TAR_BAD_SPARSE_MAP": ("corruption", "error", "tar"),
}


def test_finding_codes_are_a_contract():
    for code, (category, severity, layer) in FROZEN_CODES.items():
        spec = CATALOGUE[code]
        assert (spec.category.value, spec.severity.value, spec.layer) == (category, severity, layer), code
    assert set(CATALOGUE) >= set(FROZEN_CODES)


def test_every_code_is_documented():
    from pathlib import Path
    doc = (Path(__file__).parents[1] / "docs" / "findings.md").read_text()
    for code in CATALOGUE:
        assert f"`{code}`" in doc, code


def test_objects_crossing_processes_round_trip_through_pickle_and_json():
    loc = Location("a.tar", byte_range=(5, 10), frame=2, member="x", member_offset=3)
    finding = Finding.of("TAR_TRUNCATED", loc, what="x", missing=7)
    assert pickle.loads(pickle.dumps(finding)) == finding
    assert Finding.from_json(json.loads(json.dumps(finding.to_json()))) == finding
    member = Member("a", "file", 1, 0o644, 0, 0, 512, "ab")
    assert pickle.loads(pickle.dumps(member)) == member
    frame = Frame(3, "zstd", 0, 100, window=1 << 20, content_size=None, has_checksum=True)
    for obj in (SegmentResult(1, "n", ("aa",)), frame):
        assert pickle.loads(pickle.dumps(obj)) == obj


def test_verdict_order():
    loc = Location("a")
    corrupt = Finding.of("TAR_TRUNCATED", loc, what="x", missing=1)
    transient = Finding.of("SOURCE_READ_ERROR", loc, start=0, end=1, error="EIO")
    drift = Finding.of("TAR_TRAILING_DATA", loc, length=3)
    assert verdict([corrupt, transient]) == "corrupt"
    assert verdict([transient, drift]) == "incomplete"
    assert verdict([drift]) == "intact"
    assert verdict([], complete=False) == "incomplete"


def test_segments_are_deterministic_and_cover_the_file():
    plan = plan_segments(100 * MiB + 5, 16 * MiB)
    assert [(s.offset, s.length) for s in plan][-1] == (96 * MiB, 4 * MiB + 5)
    assert sum(s.length for s in plan) == 100 * MiB + 5
    assert len({s.nonce for s in plan}) == len(plan)
    assert [s.index for s in segments_overlapping(plan, 17 * MiB, 33 * MiB)] == [1, 2]


def test_tree_root_is_over_leaves():
    assert combine(["00" * 32, "11" * 32]) != combine(["11" * 32, "00" * 32])


def test_safe_text_neutralises_escape_codes():
    text = safe_text("a\x1b[31mred\x07\u202eb")
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[31mred" in text


def _walk(data: bytes) -> tuple[list[Member], list[tuple]]:
    """The core's tar walk over ``data``: its members and findings."""
    walker = _native.TarWalker("xxh3-128")
    walker.feed(data, 0, 0)
    walker.finish(len(data), False)
    walker.flush()
    taken = walker.take_members()
    rows = json.loads(taken[0]) if taken else []
    return [Member(*row) for row in rows], list(walker.take_findings())


def test_twelve_digit_size_fields_are_read_whole():
    """Some writers fill all 12 bytes of the size field with digits, no terminator."""
    import xxhash as xx
    block = bytearray(512)
    block[0:5] = b"file1"
    block[124:136] = b"000000001000"  # 512 in octal, 12 digits
    block[156:157] = b"0"
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\x00 ".encode()
    data = bytes(block) + b"x" * 512 + bytes(1024)
    members, findings = _walk(data)
    assert [(m.name, m.size, m.digest) for m in members] == [("file1", 512, xx.xxh3_128_hexdigest(b"x" * 512))]
    assert findings == []


def _ustar_header(name: bytes, flag: bytes, length: int) -> bytes:
    block = bytearray(512)
    block[0:len(name)] = name
    block[124:136] = b"%011o\x00" % length
    block[156:157] = flag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _with_pax_size(size: bytes, content: bytes) -> bytes:
    """A member holding ``content`` whose pax header says ``size``, then the end marker."""
    record = b" size=" + size + b"\n"
    record = str(len(record) + 2).encode() + record
    return (_ustar_header(b"p", b"x", len(record)) + record.ljust(512, b"\0")
            + _ustar_header(b"f", b"0", len(content)) + content.ljust(512, b"\0") + bytes(1024))


@pytest.mark.parametrize("size", [b"-1536", b"+5", b"5_0", b"", b"0x10"])
def test_pax_size_that_is_not_a_size_is_malformed_not_a_hang(size):
    _, findings = _walk(_with_pax_size(size, b"hello"))
    assert "TAR_PAX_MALFORMED" in [code for code, *_ in findings]


@pytest.mark.parametrize("size", [b"9223372036854775808", b"18446744073709551622"])
def test_a_pax_size_of_2_63_or_more_is_a_bad_number_not_wrapped(size):
    """2^64 + 6 once wrapped to 6: the member read as whole and the archive as intact."""
    data = _with_pax_size(size, b"hello\n")
    assert int(data[512:514]) == len(b" size=" + size + b"\n") + 2  # a whole record
    _, findings = _walk(data)
    assert [(code, start, end) for code, start, end, *_ in findings][:1] == [("TAR_BAD_NUMBER", 1024, 1536)]


def test_a_late_autosave_never_overwrites_a_later_save(fx, tmp_path):
    """The autosave writes in a thread; the final save may happen while it does. Whatever
    order the writes land in, the manifest on disk is the latest snapshot."""
    import asyncio
    from archcheck.manifest import Manifest, load
    from archcheck.pipeline import Run, RunOptions
    from archcheck.sources import open_source
    source = open_source(fx / "gnu.tar")
    identity = asyncio.run(source.identity())
    manifest = Manifest("d/0001", identity, "tar", {}, [])
    path = tmp_path / "manifest.json"
    run = Run(source, manifest, path, RunOptions(("tar",), 8 << 20, 64 << 20, 1, 1 << 31, "xxh3-128"))
    early = run._snapshot()  # an autosave's snapshot, taken while running
    manifest.status = "complete"
    run.save()  # the run ends
    run._write(*early)  # the autosave's thread finishes last
    assert load(path).status == "complete"


def test_a_deadline_passed_before_the_layers_start_leaves_no_coroutine_unawaited(fx, tmp_path):
    """A deadline that ends the run before its layers begin (a slow start, a late resume)
    stops it as "stopped", and prints no "coroutine was never awaited" warning on stderr,
    where it broke the JSON event log."""
    import asyncio
    import gc
    import time
    import warnings
    from archcheck.manifest import Manifest, SegmentRecord
    from archcheck.pipeline import Run, RunLimits, RunOptions
    from archcheck.segments import plan_segments
    from archcheck.sources import open_source
    source = open_source(fx / "gnu.tar")
    identity = asyncio.run(source.identity())
    manifest = Manifest("d/0001", identity, "tar", {}, [SegmentRecord.planned(s) for s in plan_segments(source.size, 8 << 20)])
    options = RunOptions(("raw", "tar"), 8 << 20, 64 << 20, 1, 1 << 31, "xxh3-128")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(Run(source, manifest, tmp_path / "manifest.json", options, limits=RunLimits(time.monotonic() - 1)).run())
        gc.collect()
    assert manifest.status == "stopped"
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_a_header_after_the_end_marker_is_found_in_any_pieces_and_across_a_checkpoint():
    """The search past the end marker keeps the bytes where a header may begin, across feeds
    and in the checkpoint."""
    first = _ustar_header(b"a", b"0", 5) + b"hello".ljust(512, b"\0") + bytes(1024)
    data = first + b"junk" * 300 + _ustar_header(b"b", b"0", 3) + b"bye".ljust(512, b"\0") + bytes(1024)
    members, whole = _walk(data)
    assert [m.name for m in members] == ["a", "b"]  # the walk goes on from the header
    found = [row for row in whole if row[0] == "TAR_MEMBERS_AFTER_END"]
    second = len(first) + 1200
    assert [(code, start, end) for code, start, end, *_ in found] == [("TAR_MEMBERS_AFTER_END", 1024, second)]
    for piece in (1, 100, 511, 512, 700):
        for cut in (None, second + 300):  # a checkpoint taken with a header half read
            walker = _native.TarWalker("xxh3-128")
            at, findings = 0, []
            while at < len(data):
                if cut is not None and at >= cut:
                    checkpoint = walker.checkpoint()
                    findings += walker.take_findings()
                    walker = _native.TarWalker("xxh3-128")
                    walker.restore(checkpoint, "[]")
                    cut, at = None, json.loads(checkpoint)["at"]
                walker.feed(data[at:at + piece], at, 0)
                at += piece
            walker.finish(len(data), False)
            assert findings + list(walker.take_findings()) == whole, (piece, cut)

"""gzip archives (.tar.gz, .gz): made by real tar, gzip and pigz, damaged at known places.

The plain tar is the reference: a .tar.gz of it must give the same members and digests, and
every integrity field gzip carries (header, deflate data, CRC-32, ISIZE) must be checked, with
the damaged gzip member named and what a restore loses said, as gzip -d behaves."""
from __future__ import annotations

import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from archcheck.api import verify
from conftest import cli, corruption, member_holding, members_of, only

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def plain(mixed_tar) -> Path:
    return mixed_tar


def _gzip(data: bytes, *args: str, tool: str = "gzip") -> bytes:
    return subprocess.run([tool, "-c", *args], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("how", ["gzip -9", "gzip -1 -n", "pigz", "two members", "gzip -n then tar"])
def test_a_tar_gz_gives_the_plain_tar_s_members_and_digests(plain, tmp_path, how):
    data = plain.read_bytes()
    if how == "pigz":
        packed = _gzip(data, "-p", "2", tool="pigz")
    elif how == "two members":  # cat a.gz b.gz: one stream, as gzip -d and tar xzf read it
        packed = _gzip(data[:len(data) // 3]) + _gzip(data[len(data) // 3:])
    elif how == "gzip -n then tar":
        packed = subprocess.run(["tar", "-C", plain.parent / "tree", "-czf", "-", "."], capture_output=True,
                                check=True).stdout
        data = subprocess.run(["gzip", "-dc"], input=packed, capture_output=True, check=True).stdout
        (tmp_path / "same.tar").write_bytes(data)
    else:
        packed = _gzip(data, *how.split()[1:])
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(packed)
    reference = verify(tmp_path / "same.tar" if how == "gzip -n then tar" else plain, state=tmp_path / "s1")
    result = verify(archive, state=tmp_path / "s2")
    assert (result.verdict, result.exit_code, result.manifest.format) == ("intact", 0, "tar+gzip")
    assert members_of(result) == members_of(reference) and len(members_of(result)) == 13
    assert not [f for f in result.findings if f.category.value != "info"]


def test_the_crc_of_the_first_of_two_members_is_named_and_the_second_is_lost_as_gzip_loses_it(plain, tmp_path):
    data = plain.read_bytes()
    first, second = _gzip(data[:len(data) // 2]), _gzip(data[len(data) // 2:])
    damaged = bytearray(first + second)
    damaged[len(first) - 8] ^= 0x01  # the first member's stored CRC-32
    archive = tmp_path / "crc.tar.gz"
    archive.write_bytes(bytes(damaged))
    assert subprocess.run(["gzip", "-t", archive], capture_output=True).returncode == 1
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == (["GZIP_CRC_MISMATCH"], 1)
    finding = only(result, "GZIP_CRC_MISMATCH")
    assert finding.location.byte_range == (0, len(first)) and dict(finding.details)["gzip_member"] == 0
    assert dict(finding.details)["detail"].startswith(f"gzip member 0: CRC-32 of its {len(data) // 2} bytes is ")
    assert "gzip member 0" in cli("verify", archive, "--state-dir", tmp_path / "c").stdout


def test_a_file_cut_inside_a_member_is_truncated_there_and_no_tar_damage_is_claimed(plain, tmp_path):
    packed = _gzip(plain.read_bytes())
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(packed[:len(packed) * 6 // 10])
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == (["GZIP_TRUNCATED"], 1)
    finding = only(result, "GZIP_TRUNCATED")
    details = dict(finding.details)
    assert details["error"] == "the file ends inside gzip member 0 (its deflate data)"
    assert finding.location.byte_range == (0, archive.stat().st_size) and details["gzip_member"] == 0
    # where good output ends is where gzip -dc's output ends, and a restore loses the rest
    good = subprocess.run(["gzip", "-dc", archive], capture_output=True).stdout
    assert finding.location.uncompressed_offset == len(good)
    assert details["restore_loses"].endswith("and every member after it to the end of the archive")
    assert finding.location.member == member_holding(plain, len(good))


def test_a_flipped_byte_in_the_deflate_data_fails_the_run_at_its_member(plain, tmp_path):
    packed = bytearray(_gzip(plain.read_bytes()))
    outcomes = set()
    for at in (len(packed) // 4, len(packed) // 2, len(packed) * 3 // 4):
        damaged = bytearray(packed)
        damaged[at] ^= 0x55
        archive = tmp_path / f"flip{at}.tar.gz"
        archive.write_bytes(bytes(damaged))
        assert subprocess.run(["gzip", "-t", archive], capture_output=True).returncode == 1
        result = verify(archive, state=tmp_path / f"s{at}")
        gzip_codes = [c for c in corruption(result) if c.startswith("GZIP_")]
        assert result.exit_code == 1 and len(gzip_codes) == 1, result.findings
        [code] = gzip_codes
        assert code in ("GZIP_DECODE_ERROR", "GZIP_CRC_MISMATCH", "GZIP_SIZE_MISMATCH")
        finding = only(result, code)
        details = dict(finding.details)
        assert details["gzip_member"] == 0
        if code == "GZIP_DECODE_ERROR":  # placed at the deflate block the inflater failed in
            start, end = finding.location.byte_range
            assert details["deflate_block_type"] in ("stored", "fixed Huffman", "dynamic Huffman")
            assert 10 <= start < end <= len(packed) and details["deflate_block"] >= 0
            assert details["deflate_block_output"] <= finding.location.uncompressed_offset
        else:  # the member decoded: which of its bytes is wrong, no field says
            assert finding.location.byte_range[0] == 0 and "deflate_block" not in details
        outcomes.add(code)
    assert outcomes  # what a flip does depends on the bit: any of them is named at its member


def _flushed_gzip(first: bytes, second: bytes) -> tuple[bytes, int]:
    """One gzip member (zlib, as gzip writes it) with a full flush after ``first``: the flush
    ends its block with an empty stored block (00 00 ff ff), so the blocks of ``second``
    start at a known byte."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    head = packer.compress(first) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + packer.compress(second) + packer.flush(), len(head)


def test_a_deflate_block_damaged_in_its_header_is_named_with_its_bytes_and_output(plain, tmp_path):
    data = plain.read_bytes()
    split = len(data) // 2
    packed, boundary = _flushed_gzip(data[:split], data[split:])
    assert packed[boundary - 4:boundary] == b"\x00\x00\xff\xff"
    whole = tmp_path / "whole.tar.gz"
    whole.write_bytes(packed)
    assert subprocess.run(["gzip", "-t", whole]).returncode == 0 and verify(whole, state=tmp_path / "w").exit_code == 0
    damaged = bytearray(packed)
    damaged[boundary] |= 0b110  # the block's type: 3, which no block may have
    archive = tmp_path / "damaged.tar.gz"
    archive.write_bytes(bytes(damaged))
    assert subprocess.run(["gzip", "-t", archive], capture_output=True).returncode == 1
    with pytest.raises(zlib.error, match="invalid block type"):  # zlib's own word for it
        zlib.decompressobj(31).decompress(bytes(damaged))
    result = verify(archive, state=tmp_path / "d")
    finding = only(result, "GZIP_DECODE_ERROR")
    details = dict(finding.details)
    assert result.exit_code == 1 and details["error"] == "gzip member 0: invalid block type"
    assert finding.location.byte_range[0] == boundary and details["deflate_block_output"] == split
    assert details["deflate_block_type"] == "reserved type 3" and details["deflate_block"] >= 1
    assert finding.location.uncompressed_offset == split and finding.location.member == member_holding(plain, split)
    text = cli("verify", archive, "--state-dir", tmp_path / "t").stdout
    assert f"deflate block {details['deflate_block']}" in text


def test_bytes_after_the_last_member_are_a_warning_and_zeros_are_nothing(plain, tmp_path):
    packed = _gzip(plain.read_bytes())
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(packed + b"\x00\x00garbage")
    assert subprocess.run(["gzip", "-t", junk], capture_output=True).returncode == 2  # a warning
    result = verify(junk, state=tmp_path / "s1")
    finding = only(result, "GZIP_TRAILING_DATA")
    assert finding.severity.value == "warning" and finding.location.byte_range == (len(packed), len(packed) + 9)
    assert dict(finding.details) == {"length": 9, "nonzero": 7} and (result.verdict, result.exit_code) == ("intact", 0)
    padded = tmp_path / "padded.tar.gz"
    padded.write_bytes(packed + bytes(10240))
    result = verify(padded, state=tmp_path / "s2")
    assert (result.verdict, [f.code for f in result.findings if f.layer == "gzip"]) == ("intact", [])


def _with_header_crc(packed: bytes, good: bool) -> bytes:
    """gzip -n output (10-byte header, no name) with FHCRC set and a CRC-16 after the header."""
    import zlib
    header = bytearray(packed[:10])
    header[3] |= 0x02
    crc = zlib.crc32(bytes(header)) & 0xFFFF
    return bytes(header) + (crc if good else crc ^ 1).to_bytes(2, "little") + packed[10:]


def test_the_header_crc_and_flags_are_checked(plain, tmp_path):
    packed = _gzip(plain.read_bytes(), "-n")
    for name, data, expected in [("good", _with_header_crc(packed, True), []),
                                 ("badcrc", _with_header_crc(packed, False), ["GZIP_HEADER_CRC"]),
                                 ("reserved", packed[:3] + bytes([packed[3] | 0x80]) + packed[4:], ["GZIP_BAD_HEADER"]),
                                 ("method", packed[:2] + b"\x07" + packed[3:], ["GZIP_BAD_HEADER"])]:
        archive = tmp_path / f"{name}.tar.gz"
        archive.write_bytes(data)
        result = verify(archive, state=tmp_path / name)
        assert corruption(result) == expected, name
        assert subprocess.run(["gzip", "-t", archive], capture_output=True).returncode == (0 if not expected else 1)
    method = only(verify(tmp_path / "method.tar.gz", state=tmp_path / "m2"), "GZIP_BAD_HEADER")
    assert dict(method.details)["error"] == "gzip member 0: compression method 7 is not deflate (8)"
    assert method.location.byte_range == (0, 3)  # up to the method byte, however the file was read


def test_a_stored_name_of_any_length_is_read_as_gzip_reads_it(plain, mixed_reference, tmp_path):
    """gzip -t and pigz -t take a name of any length (FNAME): so does the header's reader,
    which scans it without keeping it (it refused one over 64 KiB as a damaged header)."""
    import gzip
    archive = tmp_path / "named.tar.gz"
    with open(archive, "wb") as f, gzip.GzipFile(filename="n" * 300_000, mode="wb", fileobj=f, mtime=0) as g:
        g.write(plain.read_bytes())
    assert subprocess.run(["gzip", "-t", archive], capture_output=True).returncode == 0
    result = verify(archive, state=tmp_path / "s")
    assert (result.verdict, members_of(result)) == ("intact", members_of(mixed_reference))


def test_a_lone_gz_of_text_is_gzip_content(tmp_path):
    archive = tmp_path / "notes.gz"
    archive.write_bytes(_gzip(b"just some notes, not a tar\n" * 100))
    result = verify(archive, state=tmp_path / "s")
    assert (result.verdict, result.exit_code, result.manifest.format) == ("intact", 0, "gzip")
    assert only(result, "TAR_NOT_TAR").severity.value == "info"


def _bgzf_members(packed: bytes) -> list[tuple[int, int]]:
    """(start, end) of each BGZF member, from its BSIZE (SAM/BAM spec 4.1), read plainly here."""
    import struct
    spans, pos = [], 0
    while pos < len(packed):
        end = pos + struct.unpack_from("<H", packed, pos + 16)[0] + 1
        spans.append((pos, end))
        pos = end
    return spans


@pytest.fixture(scope="module")
def twice(plain, tmp_path_factory) -> Path:
    """A tar of the mixed tree twice over (about 12 MiB, half of it random bytes)."""
    import shutil
    base = tmp_path_factory.mktemp("twice")
    for copy in ("a", "b"):
        shutil.copytree(plain.parent / "tree", base / copy)
    subprocess.run(["tar", "-C", base, "-cf", base / "twice.tar", "a", "b"], check=True)
    return base / "twice.tar"


@pytest.fixture(scope="module")
def bgzf(twice) -> bytes:
    """As bgzip writes it: members of 64 KiB of output, more than one run's worth."""
    return subprocess.run(["bgzip", "-c"], input=twice.read_bytes(), capture_output=True, check=True).stdout


def test_a_bgzf_file_decodes_its_runs_of_members_in_parallel(twice, bgzf, tmp_path):
    from archcheck.manifest import frame_rows
    reference = verify(twice, state=tmp_path / "s1")
    archive = tmp_path / "a.tar.bgz"
    archive.write_bytes(bgzf)
    result = verify(archive, state=tmp_path / "s2")
    assert (result.verdict, result.exit_code, result.manifest.format) == ("intact", 0, "tar+gzip")
    assert members_of(result) == members_of(reference) and not [f for f in result.findings if f.category.value != "info"]
    rows = [dict(zip(result.manifest.stream.frame_table["fields"], row))
            for row in frame_rows(result.manifest, result.manifest_path)]
    members = _bgzf_members(bgzf)
    assert len(rows) >= 2 and {r["kind"] for r in rows} == {"gzip-members"}
    assert rows[0]["offset"] == 0 and rows[-1]["end"] == len(bgzf)
    assert all(a["end"] == b["offset"] and b["offset"] in {s for s, _ in members} for a, b in zip(rows, rows[1:]))


def test_a_flipped_bit_in_a_bgzf_member_names_that_member(bgzf, tmp_path):
    members = _bgzf_members(bgzf)
    k = next(i for i, (start, _) in enumerate(members) if start > 5 * MiB)  # past the first run (4 MiB)
    start, end = members[k]
    damaged = bytearray(bgzf)
    damaged[start + 300] ^= 0x20
    archive = tmp_path / "bad.tar.bgz"
    archive.write_bytes(bytes(damaged))
    assert subprocess.run(["gzip", "-t", archive], capture_output=True).returncode == 1
    result = verify(archive, state=tmp_path / "s")
    assert result.exit_code == 1 and len(corruption(result)) == 1
    finding = next(f for f in result.findings if f.category.value == "corruption")
    assert finding.code in ("GZIP_DECODE_ERROR", "GZIP_CRC_MISMATCH")
    assert dict(finding.details)["gzip_member"] == k
    assert start == finding.location.byte_range[0] and finding.location.byte_range[1] <= end


@pytest.mark.parametrize("change", ["cut", "appended"])
def test_a_bgzf_file_that_does_not_walk_to_its_end_decodes_as_gzip_reads_it(bgzf, tmp_path, change):
    archive = tmp_path / "changed.tar.bgz"
    archive.write_bytes(bgzf[:len(bgzf) - 1000] if change == "cut" else bgzf + b"not a member")
    result = verify(archive, state=tmp_path / "s")
    expected = {"cut": ("GZIP_TRUNCATED", 1), "appended": ("GZIP_TRAILING_DATA", 0)}[change]
    assert ([f.code for f in result.findings if f.code.startswith("GZIP")], result.exit_code) == (
        [expected[0]], expected[1])


def test_a_failed_read_while_placing_the_deflate_block_leaves_the_finding_at_its_member(plain, tmp_path):
    """The deflate walk reads the member again; a read that fails then costs the block's name,
    never the finding or the run."""
    from archcheck.layers.decoding import READ_SIZE
    from archcheck.layers.stream import StreamCheck
    from archcheck.sources import open_source

    data = plain.read_bytes()
    packed, boundary = _flushed_gzip(data[: len(data) // 2], data[len(data) // 2:])
    damaged = bytearray(packed)
    damaged[boundary] |= 0b110
    archive = tmp_path / "damaged.tar.gz"
    archive.write_bytes(bytes(damaged))
    reader = open_source(archive).ref().open()
    real, walking = reader.pread, threading.current_thread()

    def no_second_reads(offset, length):
        # the lane reads READ_SIZE pieces; the deflate walk reads from the member's start to the failure
        if threading.current_thread() is not walking and offset == 0 and length != READ_SIZE:
            raise OSError(5, "the store went away")
        return real(offset, length)

    reader.pread = no_second_reads
    result = StreamCheck(reader, "x", codec="gzip", check_tar=True, threads=1).run()
    reader.close()
    [finding] = [f for f in result.findings if f.code == "GZIP_DECODE_ERROR"]
    details = dict(finding.details)
    assert details["gzip_member"] == 0 and "deflate_block" not in details
    assert finding.location.byte_range[0] == 0  # the member's bytes, as before the walk

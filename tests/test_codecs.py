"""xz, lz4 and bzip2 archives (.tar.xz, .tar.lz4, .tar.bz2): made by the real tools (xz, pixz,
lz4, bzip2, lbzip2) and damaged at known places, as test_gzip.py does for gzip.

The plain tar is the reference: each compressed copy must give its members and digests, every
integrity field the format carries must be checked, and damage is named at the format's member
(xz stream, lz4 frame, bzip2 stream) with what a restore loses, as the tool's own -d behaves."""
from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from archcheck.api import resume, verify
from archcheck.layers import xz
from conftest import cli, corruption, member_holding, member_offsets, members_of, only, unhurried

MiB = 1024 * 1024

MAKERS = {  # the tools' usual invocations; each reads the tar on stdin and writes stdout
    "xz": ["xz", "-c"], "xz -T2": ["xz", "-T2", "--block-size=1MiB", "-c"], "pixz": ["pixz"],
    "lz4": ["lz4", "-c"], "lz4 linked": ["lz4", "-BD", "-BX", "-B4", "--content-size", "-c"],
    "bzip2": ["bzip2", "-c"], "lbzip2": ["lbzip2", "-n", "2", "-c"], "gzip -1": ["gzip", "-1", "-c"],
    "gzip members": ["split", "-b", "1M", "--filter", "gzip -1", "-"],  # decoded on two threads (relay.py)
}
CODEC = {"xz": "xz", "xz -T2": "xz", "pixz": "xz", "lz4": "lz4", "lz4 linked": "lz4", "bzip2": "bzip2",
         "lbzip2": "bzip2", "gzip -1": "gzip", "gzip members": "gzip"}
UNIT = {"xz": "xz_stream", "lz4": "lz4_frame", "bzip2": "bzip2_stream"}
TEST = {"xz": ["xz", "-t"], "lz4": ["lz4", "-t"], "bzip2": ["bzip2", "-t"]}
DECODE = {"xz": ["xz", "-dc"], "lz4": ["lz4", "-dc"], "bzip2": ["bzip2", "-dc"]}


@pytest.fixture(scope="module")
def plain(mixed_tar) -> Path:
    return mixed_tar


@pytest.fixture(scope="module")
def reference(mixed_reference):
    return mixed_reference


def _pack(data: bytes, maker: str) -> bytes:
    return subprocess.run(MAKERS[maker], input=data, capture_output=True, check=True).stdout


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _twice(tar: Path) -> bytes:
    """The tar's members twice over in one archive, the first copy's end marker dropped (after
    a marker they would be members tar does not restore)."""
    import tarfile
    with tarfile.open(tar) as t:
        last = t.getmembers()[-1]
    data = tar.read_bytes()
    return data[:last.offset_data + -(-last.size // 512) * 512] + data


def _tool_test(codec: str, archive: Path) -> int:
    return subprocess.run([*TEST[codec], archive], capture_output=True).returncode


@pytest.mark.parametrize("maker", list(MAKERS))
def test_each_tool_s_archive_gives_the_plain_tar_s_members_and_digests(plain, reference, tmp_path, maker):
    archive = _write(tmp_path, "a.tar.x", _pack(plain.read_bytes(), maker))
    result = verify(archive, state=tmp_path / "s")
    assert (result.verdict, result.exit_code, result.manifest.format) == ("intact", 0, f"tar+{CODEC[maker]}")
    assert members_of(result) == members_of(reference) and len(members_of(result)) == 13
    # pixz's own index of the members after the tar's end is no stray data
    assert not [f for f in result.findings if f.category.value != "info"]


@pytest.mark.parametrize("codec", ["xz", "lz4", "bzip2"])
def test_two_streams_back_to_back_are_one_archive_as_the_tools_read_it(plain, reference, tmp_path, codec):
    data = plain.read_bytes()
    third = len(data) // 3
    padding = bytes(8) if codec == "xz" else b""  # xz's stream padding
    packed = _pack(data[:third], codec) + padding + _pack(data[third:], codec)
    archive = _write(tmp_path, "two", packed)
    assert _tool_test(codec, archive) == 0
    result = verify(archive, state=tmp_path / "s")
    assert (result.verdict, result.exit_code) == ("intact", 0)
    assert members_of(result) == members_of(reference)


def _xz_check_field(packed: bytes) -> int:
    """The first byte of a one-block xz stream's CRC-64 (it ends where the index starts)."""
    backward = (struct.unpack_from("<I", packed, len(packed) - 8)[0] + 1) * 4
    return len(packed) - 12 - backward - 8


def _lz4_first_block_checksum(packed: bytes) -> int:
    """Where the first block's checksum is, in an `lz4 -BX` frame."""
    descriptor = 2 + (8 if packed[4] & 0x08 else 0) + 1  # a content size only when lz4 knew it
    size = struct.unpack_from("<I", packed, 4 + descriptor)[0] & 0x7FFFFFFF
    return 4 + descriptor + 4 + size


HEADER_FLIP = {"xz": (7, 0x01, "XZ_BAD_HEADER", (0, 12)), "lz4": (4, 0x08, "LZ4_BAD_HEADER", (0, 15)),
               "bzip2": (3, 0x10, "BZIP2_BAD_HEADER", (0, 7))}


@pytest.mark.parametrize("codec", ["xz", "lz4", "bzip2"])
def test_a_flipped_bit_in_the_header_is_named_at_the_first_member(plain, tmp_path, codec):
    at, mask, code, byte_range = HEADER_FLIP[codec]
    damaged = bytearray(_pack(plain.read_bytes(), codec))
    damaged[at] ^= mask
    archive = _write(tmp_path, "hdr", bytes(damaged))
    assert _tool_test(codec, archive) != 0
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == ([code], 1)
    finding = only(result, code)
    assert finding.location.byte_range == byte_range and dict(finding.details)[UNIT[codec]] == 0
    assert finding.location.uncompressed_offset == 0


def test_a_flipped_xz_check_is_found_after_all_the_content_came_out(plain, tmp_path):
    packed = bytearray(_pack(plain.read_bytes(), "xz"))
    packed[_xz_check_field(packed)] ^= 0x01
    archive = _write(tmp_path, "check.tar.xz", bytes(packed))
    assert _tool_test("xz", archive) == 1
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == (["XZ_DECODE_ERROR"], 1)
    finding = only(result, "XZ_DECODE_ERROR")
    assert finding.location.uncompressed_offset == plain.stat().st_size
    assert finding.location.byte_range[0] == 0 and dict(finding.details)["xz_stream"] == 0


def test_lz4_block_and_content_checksums_are_each_checked(plain, tmp_path):
    data = plain.read_bytes()
    linked = bytearray(_pack(data, "lz4 linked"))
    linked[_lz4_first_block_checksum(linked)] ^= 0x01
    archive = _write(tmp_path, "block.tar.lz4", bytes(linked))
    assert _tool_test("lz4", archive) != 0
    result = verify(archive, state=tmp_path / "s1")
    assert (corruption(result), result.exit_code) == (["LZ4_BLOCK_CHECKSUM"], 1)
    finding = only(result, "LZ4_BLOCK_CHECKSUM")
    assert finding.location.uncompressed_offset == 0  # the first block is not decoded
    assert "block 0: xxHash32 of its bytes is" in dict(finding.details)["error"]
    plain_lz4 = bytearray(_pack(data, "lz4"))
    plain_lz4[-2] ^= 0x01  # the content checksum
    archive = _write(tmp_path, "content.tar.lz4", bytes(plain_lz4))
    assert _tool_test("lz4", archive) != 0
    result = verify(archive, state=tmp_path / "s2")
    assert (corruption(result), result.exit_code) == (["LZ4_CONTENT_CHECKSUM"], 1)
    finding = only(result, "LZ4_CONTENT_CHECKSUM")
    assert finding.location.byte_range == (0, len(plain_lz4)) and dict(finding.details)["lz4_frame"] == 0
    assert len(dict(finding.details)["members"]) == 10 + 1  # the first ten named, and how many more


def test_a_flipped_bzip2_block_crc_names_the_member_being_decoded(plain, tmp_path):
    """The blocks' CRCs no longer combine to the stream's: no block found can be trusted, and
    the stream decodes whole, as bzip2 -d reads it."""
    packed = bytearray(_pack(plain.read_bytes(), "bzip2"))
    packed[10] ^= 0x01  # the first block's CRC-32, after "BZh9" and the block magic
    archive = _write(tmp_path, "crc.tar.bz2", bytes(packed))
    assert _tool_test("bzip2", archive) == 2  # bzip2 -t: a data integrity error
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == (["BZIP2_DECODE_ERROR"], 1)
    finding = only(result, "BZIP2_DECODE_ERROR")
    good = subprocess.run(DECODE["bzip2"], input=bytes(packed), capture_output=True).stdout
    assert finding.location.uncompressed_offset >= len(good)  # bzip2 -d keeps back its last piece
    assert finding.location.member == member_holding(plain, finding.location.uncompressed_offset)
    assert dict(finding.details)["restore_loses"].endswith("and every member after it to the end of the archive")


def _bzip2_blocks(packed: bytes, work: Path) -> list[Path]:
    """The file's blocks, each a file of its own, as bzip2recover splits it."""
    work.mkdir()
    (work / "a.bz2").write_bytes(packed)
    subprocess.run(["bzip2recover", "a.bz2"], cwd=work, capture_output=True, check=True)
    return sorted(work.glob("rec*a.bz2"))


def _bzip2_block_starts(packed: bytes, tmp_path: Path) -> list[int]:
    """Where each block's output starts."""
    starts, at = [], 0
    for part in _bzip2_blocks(packed, tmp_path / "recover"):
        starts.append(at)
        at += len(subprocess.run(["bzip2", "-dc", part], capture_output=True, check=True).stdout)
    return starts


def _bzip2_block_output(packed: bytes, block: int, tmp_path: Path) -> bytes:
    """What bzip2 -d writes of one block, whether or not its CRC matches."""
    part = _bzip2_blocks(packed, tmp_path / "recover-damaged")[block]
    return subprocess.run(["bzip2", "-dc", part], capture_output=True).stdout


def test_a_damaged_bzip2_block_is_placed_at_its_first_byte_and_its_member_has_no_digest(plain, tmp_path):
    """libbzip2 checks a block's CRC after writing all of it: none of a block that fails may
    reach the tar walk, which would take its garbage for content (a digest of it, offsets past it)."""
    packed = _pack(plain.read_bytes(), "bzip2")
    damaged = bytearray(packed)
    damaged[len(packed) // 2] ^= 0x10
    archive = _write(tmp_path, "block.tar.bz2", bytes(damaged))
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == (["BZIP2_DECODE_ERROR"], 1)
    finding = only(result, "BZIP2_DECODE_ERROR")
    block = dict(finding.details)["bzip2_block"]
    starts = _bzip2_block_starts(packed, tmp_path)
    start = starts[block]
    assert block > 0 and finding.location.uncompressed_offset == start
    assert finding.location.member == member_holding(plain, start)
    digests = {m["name"]: m.get("digest") for m in result.members()}
    assert digests[finding.location.member] is None
    # bzip2 states no block's size: members after it are placed by the output the damaged block
    # gave (not walked), which can be any length. bzip2 -d gives the same output, but for the
    # last piece of its 5000-byte buffer that it drops at the error
    length = starts[block + 1] - start
    gave = len(_bzip2_block_output(bytes(damaged), block, tmp_path))
    placed = {m["name"]: m["header_offset"] for m in result.members()}
    after = {name: header for name, (header, _) in member_offsets(plain).items()
             if header >= starts[block + 1] and name in placed}
    [shift] = {placed[name] - header for name, header in after.items()}
    assert 0 <= shift - (gave - length) < 5000


def test_a_one_block_bzip2_file_is_decoded_by_its_block(tmp_path):
    """A tar under bzip2's 900 kB block is one block: it decodes as a block too, so damage in it
    is the block's, at uncompressed offset 0, and none of its garbage reaches the tar walk.
    (Decoded as a whole stream, the walk took the garbage for content: 'not a tar archive', the
    format plain bzip2, a loss placed past the tar's end.)"""
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(1, 4):
        (tree / f"f{i}.txt").write_text("".join(f"{n}\n" for n in range(15000 * i)))
    subprocess.run(["tar", "-C", tmp_path, "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
                    "--numeric-owner", "-cf", tmp_path / "a.tar", "t"], check=True)
    tar = (tmp_path / "a.tar").read_bytes()
    packed = _pack(tar, "bzip2")
    assert len(tar) > 300_000 and len(_bzip2_blocks(packed, tmp_path / "recover")) == 1
    result = verify(_write(tmp_path, "whole.tar.bz2", packed), state=tmp_path / "s")
    assert (result.verdict, result.manifest.format) == ("intact", "tar+bzip2")
    assert members_of(result) == members_of(verify(tmp_path / "a.tar", state=tmp_path / "s0"))
    damaged = bytearray(packed)
    damaged[len(packed) // 2] ^= 0x10
    archive = _write(tmp_path, "one.tar.bz2", bytes(damaged))
    assert _tool_test("bzip2", archive) == 2
    result = verify(archive, state=tmp_path / "s1")
    assert (corruption(result), result.exit_code, result.manifest.format) == (["BZIP2_DECODE_ERROR"], 1, "tar+bzip2")
    assert [f.code for f in result.findings] == ["BZIP2_DECODE_ERROR"]  # no TAR_NOT_TAR of its garbage
    finding = only(result, "BZIP2_DECODE_ERROR")
    assert dict(finding.details)["bzip2_block"] == 0 and finding.location.uncompressed_offset == 0
    assert finding.location.byte_range == (4, len(packed) - 10)  # the block: after "BZh9", before the end marker
    assert members_of(result) == []


DATA_CODES = {"xz": {"XZ_DECODE_ERROR"}, "lz4": {"LZ4_DECODE_ERROR", "LZ4_CONTENT_CHECKSUM"},
              "bzip2": {"BZIP2_DECODE_ERROR"}}


@pytest.mark.parametrize("codec", ["xz", "lz4", "bzip2"])
def test_a_flipped_byte_in_the_compressed_data_fails_the_run_at_its_member(plain, tmp_path, codec):
    packed = _pack(plain.read_bytes(), codec)
    for at in (len(packed) // 3, len(packed) * 2 // 3):
        damaged = bytearray(packed)
        damaged[at] ^= 0x55
        archive = _write(tmp_path, f"flip{at}", bytes(damaged))
        assert _tool_test(codec, archive) != 0
        result = verify(archive, state=tmp_path / f"s{at}")
        [code] = corruption(result)  # tar damage from bad output is listed on the codec's finding
        assert code in DATA_CODES[codec] and result.exit_code == 1
        finding = only(result, code)
        details, (start, end) = dict(finding.details), finding.location.byte_range
        if codec == "bzip2":  # its blocks, found by their magic, decode alone: the damaged one is named
            assert details["bzip2_block"] > 0 and start <= at < end
            assert details["error"] == f"bzip2 block {details['bzip2_block']}: its data does not decode, or its CRC-32 does not match"
        else:
            assert details[UNIT[codec]] == 0 and start == 0


@pytest.mark.parametrize("codec", ["xz", "lz4", "bzip2"])
def test_a_file_cut_inside_a_member_is_truncated_where_the_tool_s_output_ends(plain, tmp_path, codec):
    packed = _pack(plain.read_bytes(), codec)
    archive = _write(tmp_path, "cut", packed[:len(packed) * 6 // 10])
    assert _tool_test(codec, archive) != 0
    result = verify(archive, state=tmp_path / "s")
    code = f"{codec.upper()}_TRUNCATED"
    assert (corruption(result), result.exit_code) == ([code], 1)
    finding = only(result, code)
    details = dict(finding.details)
    assert details["error"].startswith(f"the file ends inside {UNIT[codec].replace('_', ' ')} 0 (")
    assert finding.location.byte_range == (0, archive.stat().st_size)
    good = subprocess.run(DECODE[codec], input=archive.read_bytes(), capture_output=True).stdout
    ours = finding.location.uncompressed_offset
    if codec == "bzip2":  # bzip2 -d writes in 5,000-byte pieces and drops the piece it was filling
        assert len(good) <= ours < len(good) + 5000
    else:
        assert ours == len(good)
    if ours:
        assert finding.location.member == member_holding(plain, ours)


TOOL_ON_TRAILING = {"xz": 1, "lz4": 1, "bzip2": 0}  # what the tools' -t say of bytes after the end


@pytest.mark.parametrize("codec", ["xz", "lz4", "bzip2"])
def test_bytes_after_the_last_member_are_a_warning(plain, tmp_path, codec):
    packed = _pack(plain.read_bytes(), codec)
    archive = _write(tmp_path, "junk", packed + b"\x00\x00garbage")
    assert _tool_test(codec, archive) == TOOL_ON_TRAILING[codec]
    result = verify(archive, state=tmp_path / "s")
    finding = only(result, f"{codec.upper()}_TRAILING_DATA")
    assert finding.severity.value == "warning" and finding.location.byte_range == (len(packed), len(packed) + 9)
    assert dict(finding.details) == {"length": 9, "nonzero": 7} and (result.verdict, result.exit_code) == ("intact", 0)


def test_the_cli_names_the_xz_stream(plain, tmp_path):
    packed = bytearray(_pack(plain.read_bytes(), "xz"))
    packed[7] ^= 0x01
    archive = _write(tmp_path, "named.tar.xz", bytes(packed))
    run = cli("verify", archive, "--state-dir", tmp_path / "c")
    assert run.returncode == 1 and "XZ_BAD_HEADER" in run.stdout and "xz stream 0" in run.stdout


def _xz_blocks(packed: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each block of a one-stream xz file, from its index."""
    from archcheck.layers.xz import _index_records
    backward = (struct.unpack_from("<I", packed, len(packed) - 8)[0] + 1) * 4
    records = _index_records(packed[len(packed) - 12 - backward:len(packed) - 12])
    blocks, offset = [], 12
    for unpadded, _ in records:
        blocks.append((offset, offset + -(-unpadded // 4) * 4))
        offset = blocks[-1][1]
    return blocks


def test_the_blocks_of_a_multi_block_xz_are_checked_each_and_damage_is_named_at_its_block(plain, tmp_path):
    data = plain.read_bytes()
    packed = _pack(data, "xz -T2")
    blocks = _xz_blocks(packed)
    assert len(blocks) == -(-len(data) // MiB)  # 1 MiB blocks
    damaged = bytearray(packed)
    start, end = blocks[3]
    damaged[end - 2] ^= 0x01  # block 3's CRC-64
    archive = _write(tmp_path, "mt.tar.xz", bytes(damaged))
    assert _tool_test("xz", archive) == 1
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == (["XZ_DECODE_ERROR"], 1)
    finding = only(result, "XZ_DECODE_ERROR")
    assert dict(finding.details)["xz_block"] == 3 and finding.location.byte_range == (start, end)
    assert dict(finding.details)["error"] == "xz block 3: its compressed data, header or check is damaged"
    assert finding.location.uncompressed_offset == 4 * MiB  # the block's output came out whole, then failed its check
    assert finding.location.member == member_holding(plain, 4 * MiB - 1)
    html = tmp_path / "report.html"
    assert cli("report", "drill-1", "--format", "html", "-o", html, "--state-dir", tmp_path / "s").returncode == 1
    page = html.read_text()  # the picture's block row shows the block that failed, and only it
    assert ">xz blocks<" in page and f"xz block 3 (xz-block): bytes {start}-{end}, failed" in page
    assert page.count(", failed<") == 1


def _xz_index(packed: bytes) -> tuple[int, int]:
    """The byte range of the index of a file's one xz stream, from its footer's backward size."""
    (backward,) = struct.unpack_from("<I", packed, len(packed) - 8)
    return len(packed) - 12 - (backward + 1) * 4, len(packed) - 12


@pytest.mark.parametrize("maker", ["xz", "xz -T2"])
def test_a_damaged_xz_index_is_named_at_its_bytes_and_every_member_is_whole(plain, reference, tmp_path, maker):
    """With no index to trust, the stream decodes whole, as xz -d reads it; liblzma stops inside
    the index, and the footer after it says where the index begins: the index is named."""
    packed = _pack(plain.read_bytes(), maker)
    index = _xz_index(packed)
    for at in (index[0], index[0] + 2, index[1] - 1):  # its indicator, a record, its CRC-32
        damaged = bytearray(packed)
        damaged[at] ^= 0x01
        archive = _write(tmp_path, f"{at}.tar.xz", bytes(damaged))
        assert _tool_test("xz", archive) == 1
        result = verify(archive, state=tmp_path / f"s{at}")
        assert (corruption(result), result.exit_code) == (["XZ_BAD_INDEX"], 1), at
        finding = only(result, "XZ_BAD_INDEX")
        assert finding.location.byte_range == index and dict(finding.details)["xz_stream"] == 0
        assert finding.location.uncompressed_offset == plain.stat().st_size  # every block was good
        assert members_of(result) == members_of(reference)


def _xz_index_bytes(records: list[tuple[int, int]]) -> bytes:
    """An xz index listing ``records``, its padding and CRC-32 made as xz makes them."""
    def vli(value: int) -> bytes:
        out = bytearray()
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes(out + bytes([value]))
    body = b"\x00" + vli(len(records)) + b"".join(vli(u) + vli(c) for u, c in records)
    body += bytes(-len(body) % 4)
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("moved", [4, -4, "all but 8"])
def test_an_xz_index_that_lies_with_a_good_crc_is_named_and_no_block_is_blamed(plain, reference, tmp_path, moved):
    """Two records trade bytes of size (all but 8 of the first's: less than its own header) and
    the CRC-32 is made anew: the blocks still fill the stream, but xz -T wrote each block's sizes
    in its header, which the index no longer says. The blocks are not decoded where the index
    puts them (each would fail, intact): the stream decodes whole, as xz -d reads it, every
    member comes out, and the index is named."""
    packed = _pack(plain.read_bytes(), "xz -T2")
    start, end = _xz_index(packed)
    records = xz._index_records(packed[start:end])
    assert len(records) > 2
    if moved == "all but 8":
        moved = 8 - -(-records[0][0] // 4) * 4  # the first keeps 8 bytes, padding and all
    records[0], records[1] = (records[0][0] + moved, records[0][1]), (records[1][0] - moved, records[1][1])
    lie = _xz_index_bytes(records)
    flags = packed[end + 8:end + 10]  # the footer made anew: the index may be shorter
    footer = struct.pack("<I", len(lie) // 4 - 1) + flags
    archive = _write(tmp_path, "lie.tar.xz", packed[:start] + lie + struct.pack("<I", zlib.crc32(footer)) + footer + b"YZ")
    assert _tool_test("xz", archive) == 1
    result = verify(archive, state=tmp_path / "s")
    assert (corruption(result), result.exit_code) == (["XZ_BAD_INDEX"], 1)
    finding = only(result, "XZ_BAD_INDEX")
    assert finding.location.byte_range == (start, start + len(lie))
    assert finding.location.uncompressed_offset == plain.stat().st_size
    assert members_of(result) == members_of(reference)


def test_a_damaged_block_is_not_taken_for_the_index_or_footer(plain, tmp_path):
    """liblzma stops in the block, where the index begins when the block's check fails, or
    inside a whole index that a damaged block ran on into: no index or footer is named, and the
    failure covers the stream up to the stop."""
    packed = _pack(plain.read_bytes(), "xz")
    index_start, index_end = _xz_index(packed)
    [(unpadded, _)] = xz._index_records(packed[index_start:index_end])
    end_marker = 12 + unpadded - 8 - 1  # LZMA2's last byte, before the CRC-64: flipped, it runs on into the index
    for at in (len(packed) // 2, end_marker, index_start - 1):  # the block's data; its end; its check's last byte
        damaged = bytearray(packed)
        damaged[at] ^= 0x01
        result = verify(_write(tmp_path, f"d{at}.tar.xz", bytes(damaged)), state=tmp_path / f"s{at}")
        [code] = corruption(result)  # a block run on may also run to the file's end
        assert code in ("XZ_DECODE_ERROR", "XZ_TRUNCATED") and result.exit_code == 1, at
        assert only(result, code).location.byte_range[0] == 0


def test_a_stop_inside_a_whole_xz_index_is_not_the_index_s(plain):
    """A damaged block can make liblzma run on into the index and stop there. The index then
    holds (it parses, its CRC-32 matches, its blocks fill the stream): it is not named. A
    damaged one is."""
    packed = _pack(plain.read_bytes(), "xz")
    index_start, index_end = _xz_index(packed)

    class Reader:
        def __init__(self, data):
            self.data, self.size = data, len(data)

        def pread(self, offset, length):
            return self.data[offset:offset + length]

    assert xz.damaged_structure(Reader(packed), 0, index_start + 2) is None
    damaged = bytearray(packed)
    damaged[index_end - 1] ^= 0x01  # the index's CRC-32
    assert xz.damaged_structure(Reader(bytes(damaged)), 0, index_start + 2) == ("XZ_BAD_INDEX", (index_start, index_end))


@pytest.mark.parametrize("maker", ["xz", "xz -T2"])
def test_a_damaged_xz_footer_is_named_at_its_bytes_and_every_member_is_whole(plain, reference, tmp_path, maker):
    """liblzma calls a damaged footer a data error (or, its magic, a header's) over the whole
    stream; the index before it is whole and lists the blocks that fill the stream, so the footer
    alone is named, and the content, which came out checked, is all there."""
    packed = _pack(plain.read_bytes(), maker)
    for field, back in [("crc", 12), ("index size", 8), ("flags", 3), ("magic", 1)]:
        damaged = bytearray(packed)
        damaged[len(packed) - back] ^= 0x10
        archive = _write(tmp_path, f"{back}.tar.xz", bytes(damaged))
        assert _tool_test("xz", archive) == 1
        result = verify(archive, state=tmp_path / f"s{back}")
        assert (corruption(result), result.exit_code) == (["XZ_BAD_FOOTER"], 1), field
        finding = only(result, "XZ_BAD_FOOTER")
        assert finding.location.byte_range == (len(packed) - 12, len(packed)), field
        assert dict(finding.details)["xz_stream"] == 0
        assert finding.location.uncompressed_offset == plain.stat().st_size and finding.location.member is None
        assert members_of(result) == members_of(reference), field


# a stream decoded whole resumes by decoding again to where it stopped; xz and bzip2 blocks
# resume at a block
@pytest.mark.parametrize("maker", ["gzip -1", "gzip members", "xz", "xz -T2", "bzip2"])
def test_an_interrupted_archive_resumes_to_the_uninterrupted_result(plain, tmp_path, maker):
    archive = _write(tmp_path, "big.tar.x", _pack(_twice(plain), maker))
    clean = verify(archive, state=tmp_path / "clean")
    first = cli("verify", archive, "--deadline", "0.1s", "--state-dir", tmp_path / "s", "--no-progress",
                env={"ARCHCHECK_FAILPOINT": "slow-read", "ARCHCHECK_SAVE_INTERVAL": "0.05"})
    assert first.returncode == 3, first.stderr
    result = resume("drill-1", state=tmp_path / "s", deadline=unhurried())
    [(_, verification)] = result.verifications
    assert (verification.verdict, members_of(verification)) == ("intact", members_of(clean))


@pytest.mark.parametrize("maker", ["xz", "xz -T2"])
def test_an_xz_dictionary_over_max_window_is_unverified_not_corrupt(plain, tmp_path, maker):
    archive = _write(tmp_path, "big-dict.tar.xz", _pack(plain.read_bytes(), maker))  # -6: an 8 MiB dictionary
    result = verify(archive, state=tmp_path / "s", max_window=4 * MiB)
    assert (result.verdict, result.exit_code, corruption(result)) == ("incomplete", 3, [])
    limited = [f for f in result.findings if f.code == "XZ_MEMORY_LIMIT"]
    assert len(limited) == 1 and all(f.category.value == "unverified" and "restore_loses" not in dict(f.details)
                           for f in limited)


@pytest.mark.parametrize("codec,flags,code", [("xz", ["--check=none"], "XZ_NO_CHECK"),
                                              ("lz4", ["--no-frame-crc"], "LZ4_NO_CHECKSUM")])
def test_a_stream_written_without_its_check_says_so(plain, reference, tmp_path, codec, flags, code):
    packed = subprocess.run([codec, *flags, "-c"], input=plain.read_bytes(), capture_output=True, check=True).stdout
    result = verify(_write(tmp_path, "unchecked", packed), state=tmp_path / "s")
    assert (result.verdict, result.exit_code, members_of(result)) == ("intact", 0, members_of(reference))
    assert only(result, code).severity.value == "info"
    checked = verify(_write(tmp_path, "checked", _pack(plain.read_bytes(), codec)), state=tmp_path / "c")
    assert not [f for f in checked.findings if f.code == code]


def test_a_later_xz_stream_without_a_check_is_named_at_its_block(plain, reference, tmp_path):
    data = plain.read_bytes()
    half = len(data) // 2
    checked = _pack(data[:half], "xz")
    unchecked = subprocess.run(["xz", "--check=none", "-c"], input=data[half:], capture_output=True, check=True).stdout
    archive = _write(tmp_path, "two.tar.xz", checked + unchecked)
    result = verify(archive, state=tmp_path / "s")
    assert (result.exit_code, members_of(result)) == (0, members_of(reference))
    assert only(result, "XZ_NO_CHECK").location.byte_range == (len(checked) + 12, len(checked) + len(unchecked)
                                                                - _xz_index_and_footer(unchecked))


def test_a_later_lz4_frame_without_checksums_is_named_and_counted(plain, reference, tmp_path):
    data = plain.read_bytes()
    third = len(data) // 3
    checked = _pack(data[:third], "lz4")
    unchecked = [subprocess.run(["lz4", "--no-frame-crc", "-c"], input=part, capture_output=True, check=True).stdout
                 for part in (data[third:2 * third], data[2 * third:])]
    archive = _write(tmp_path, "three.tar.lz4", checked + unchecked[0] + unchecked[1])
    assert _tool_test("lz4", archive) == 0
    result = verify(archive, state=tmp_path / "s")
    assert (result.exit_code, members_of(result)) == (0, members_of(reference))
    finding = only(result, "LZ4_NO_CHECKSUM")
    assert finding.location.byte_range == (len(checked), len(checked) + 7)
    assert (dict(finding.details)["lz4_frame"], dict(finding.details)["members"]) == (1, 2)


def _xz_index_and_footer(packed: bytes) -> int:
    return (struct.unpack_from("<I", packed, len(packed) - 8)[0] + 1) * 4 + 12


def _with_check_id(packed: bytes, check: int) -> bytes:
    """The xz file with another check type in its stream header and footer (their CRC-32s made
    again), the stored checks left as they are: a file as a newer xz could write it."""
    out = bytearray(packed)
    for flags in (6, len(out) - 4):  # stream flags: after the header magic, before the footer magic
        out[flags + 1] = check
    struct.pack_into("<I", out, 8, zlib.crc32(bytes(out[6:8])))
    struct.pack_into("<I", out, len(out) - 12, zlib.crc32(bytes(out[len(out) - 8:len(out) - 2])))
    return bytes(out)


@pytest.mark.parametrize("maker", ["xz", "xz -T2"])
def test_a_reserved_xz_check_type_decodes_unchecked_with_a_warning(plain, reference, tmp_path, maker):
    packed = subprocess.run([*MAKERS[maker][:-1], "--check=crc32", "-c"], input=plain.read_bytes(),
                            capture_output=True, check=True).stdout
    archive = _write(tmp_path, "reserved.tar.xz", _with_check_id(packed, 2))  # ID 2: reserved, 4 bytes as CRC-32's
    tool = subprocess.run(["xz", "-t", archive], capture_output=True, text=True)
    assert tool.returncode == 2 and "Unsupported type of integrity check" in tool.stderr  # xz: a warning
    result = verify(archive, state=tmp_path / "s")
    assert (result.verdict, result.exit_code, members_of(result)) == ("intact", 0, members_of(reference))
    warned = only(result, "XZ_UNSUPPORTED_CHECK")
    assert (warned.category.value, dict(warned.details)["check"]) == ("warning", 2)
    assert warned.location.byte_range[0] == (0 if maker == "xz" else 12)  # the header, or the first block


def test_xz_stream_padding_comes_in_fours(plain, tmp_path):
    packed = _pack(plain.read_bytes(), "xz")
    for name, data in [("after", packed + bytes(3)), ("between", packed + bytes(2) + packed)]:
        archive = _write(tmp_path, name + ".tar.xz", data)
        assert _tool_test("xz", archive) == 1
        result = verify(archive, state=tmp_path / name)
        assert (corruption(result), result.exit_code) == (["XZ_DECODE_ERROR"], 1), name
        assert only(result, "XZ_DECODE_ERROR").location.byte_range[0] == len(packed)
    archive = _write(tmp_path, "fours.tar.xz", packed + bytes(8))
    assert _tool_test("xz", archive) == 0 and verify(archive, state=tmp_path / "fours").exit_code == 0


def test_zeros_after_an_lz4_frame_are_said_as_lz4_says_them(plain, tmp_path):
    packed = _pack(plain.read_bytes(), "lz4")
    archive = _write(tmp_path, "zeros.tar.lz4", packed + bytes(512))
    assert _tool_test("lz4", archive) != 0  # lz4 -t: "Stream followed by undecodable data"
    result = verify(archive, state=tmp_path / "s")
    assert dict(only(result, "LZ4_TRAILING_DATA").details) == {"length": 512, "nonzero": 0}


def test_an_lz4_file_starting_with_a_skippable_frame_is_lz4_not_zstd(plain, reference, tmp_path):
    skippable = struct.pack("<II", 0x184D2A5F, 6) + b"label!"
    archive = _write(tmp_path, "skip.tar.lz4", skippable + _pack(plain.read_bytes(), "lz4"))
    assert _tool_test("lz4", archive) == 0
    result = verify(archive, state=tmp_path / "s")
    assert (result.verdict, result.manifest.format, members_of(result)) == ("intact", "tar+lz4", members_of(reference))

"""verify() on real archives made by real tar, zstd and pzstd: clean ones first, then copies
damaged at known places. Each damage test asserts the exact code and location."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
import xxhash

from archcheck import UnsupportedArchive, verify
from archcheck.layers.zstd import walk_frames
from archcheck.manifest import frame_rows, load
from conftest import codes, maker, member_offsets

MiB = 1024 * 1024
CLEAN = ["gnu.tar", "pax.tar", "ustar.tar", "single.tar.zst", "multi.tar.zst", "long.tar.zst",
         "seekable.tar.zst"]


def pzstd_frames(path):
    """(start, end) of each data frame, read from pzstd's own skippable size hints."""
    data, pos, frames = path.read_bytes(), 0, []
    while pos < len(data):
        magic, size = struct.unpack_from("<II", data, pos)
        assert magic == 0x184D2A50 and size == 4
        (csize,) = struct.unpack_from("<I", data, pos + 8)
        frames.append((pos + 12, pos + 12 + csize))
        pos += 12 + csize
    return frames


@pytest.mark.parametrize("name", CLEAN)
def test_clean_archives_are_intact_with_every_member_and_digest(fx, index, state, name):
    result = verify(fx / name, state=state, segment_size=8 * MiB)
    assert (result.verdict, result.exit_code) == ("intact", 0)
    assert codes(result) == []
    plain = fx / (name if name.endswith(".tar") else "gnu.tar")
    listed = subprocess.run(["tar", "-tf", plain], capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    assert [m["name"] for m in result.members()] == listed
    assert result.manifest.members["count"] == len(listed)
    checked = 0
    for member in result.members():
        path = member["name"].removeprefix("./")
        if member["type"] == "file" and "sparse_size" not in member:
            assert member["digest"] == index["files"][path], path
            checked += 1
    assert checked >= 45


def test_member_digest_of_a_member_spanning_many_segments(fx, state, index):
    result = verify(fx / "gnu.tar", state=state, segment_size=8 * MiB)
    big = next(m for m in result.members() if m["name"] == "./data/big.bin")
    assert big["size"] > 3 * 8 * MiB - 8 * MiB and big["digest"] == index["files"]["data/big.bin"]
    assert len(result.manifest.segments) == 4


def test_tree_root_does_not_depend_on_segment_size(fx, tmp_path):
    roots = {verify(fx / "multi.tar.zst", state=tmp_path / str(s), segment_size=s * MiB,
                    layers=["raw"]).manifest.tree_root for s in (8, 16, 64)}
    assert len(roots) == 1 and None not in roots


def test_blake3_member_digests_on_request(fx, state):
    import blake3
    result = verify(fx / "ustar.tar", state=state, digest="blake3", layers=["tar", "members"])
    member = next(m for m in result.members() if m["name"] == "./etc/config-00.conf")
    assert member["digest"] == blake3.blake3((fx / "tree/etc/config-00.conf").read_bytes()).hexdigest()


def test_sparse_members_keep_their_logical_size(fx, state):
    for name in ("gnu.tar", "pax.tar"):
        result = verify(fx / name, state=state, layers=["tar", "members"])
        sparse = next(m for m in result.members() if m["name"] == "./data/sparse.img")
        assert sparse["sparse_size"] == 4 * MiB + 19


def test_layers_raw_only_hashes(fx, state):
    result = verify(fx / "single.tar.zst", state=state, layers=["raw"])
    assert list(result.members()) == [] and result.manifest.stream.status is None
    assert all(s.status == "done" for s in result.manifest.segments) and result.manifest.tree_root


def test_a_lone_zst_that_is_not_tar(fx, state):
    result = verify(fx / "plain.txt.zst", state=state)
    assert result.verdict == "intact" and result.manifest.format == "zstd"
    assert [f.code for f in result.findings] == ["TAR_NOT_TAR"]


def test_format_comes_from_magic_not_name(fx, state, tmp_path):
    misnamed = tmp_path / "backup.tar.gz"
    misnamed.write_bytes((fx / "multi.tar.zst").read_bytes())
    assert verify(misnamed, state=state).manifest.format == "tar+zstd"
    gzipped = tmp_path / "backup.tar.zst"  # a gzip file named as zstd is verified as gzip
    gzipped.write_bytes((fx / "ustar.tar.gz").read_bytes())
    assert verify(gzipped, state=state).manifest.format == "tar+gzip"
    xz = tmp_path / "backup.tar"  # an xz file named as tar is verified as xz
    xz.write_bytes(subprocess.run(["xz", "-0", "-c"], input=(fx / "ustar.tar").read_bytes(), capture_output=True,
                                  check=True).stdout)
    assert verify(xz, state=state).manifest.format == "tar+xz"
    zipped = tmp_path / "backup.tar.xz"
    zipped.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UnsupportedArchive, match="is zip, not a format archcheck reads"):
        verify(zipped, state=state)


def test_large_window_is_accepted_and_stated_or_refused_below_max_window(fx, state):
    result = verify(fx / "long.tar.zst", state=state)
    assert result.verdict == "intact"
    assert [f.code for f in result.findings if f.code == "ZSTD_LARGE_WINDOW"] == ["ZSTD_LARGE_WINDOW"]
    # over --max-window: a plausible window is a question of memory, not damage; the frame is
    # left unverified, named, and the run is incomplete rather than refused
    limited = verify(fx / "long.tar.zst", state=state, max_window=128 * MiB)
    assert limited.verdict == "incomplete" and limited.exit_code == 3
    [over] = [f for f in limited.findings if f.code == "ZSTD_WINDOW_OVER_LIMIT"]
    assert "needs a 2 GiB window, over --max-window 128 MiB" in over.message and over.location.frame == 0
    assert not [f for f in limited.findings if f.category.value == "corruption"]


def test_manifest_records_segments_with_nonces(fx, state):
    import json
    result = verify(fx / "gnu.tar", state=state, segment_size=8 * MiB)
    saved = json.loads(result.manifest_path.read_text())
    assert saved["schema"] == "archcheck.manifest" and saved["version"] == 2 and saved["status"] == "complete"
    # segment results are logged beside the manifest, which names the log's parts and digests
    assert saved["segments"]["count"] == 4 and saved["segments"]["log"]
    segments = load(result.manifest_path).segments
    assert [(s.offset, s.length) for s in segments][:2] == [(0, 8 * MiB), (8 * MiB, 8 * MiB)]
    assert all(len(s.nonce) == 16 and s.status == "done" and s.digest and s.read_at for s in segments)
    assert saved["archive"]["size"] == (fx / "gnu.tar").stat().st_size
    assert result.manifest_path.is_relative_to(state)


# --- damage at known places -----------------------------------------------------------------

def test_flipped_bit_in_compressed_data_names_frame_and_range(fx, state, damaged):
    frames = pzstd_frames(fx / "multi.tar.zst")
    start, end = frames[1]
    bad = damaged("multi.tar.zst", at=start + 800_000, xor=0x10)
    result = verify(bad, state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_CHECKSUM_MISMATCH"
    assert finding.location.byte_range == (start, end) and finding.location.frame == 3
    assert finding.location.uncompressed_offset == 8 * MiB  # pzstd frames hold 8 MiB each here
    assert "./data/big.bin" in dict(finding.details).get("members", ()) or finding.location.member == "./data/big.bin"
    assert result.exit_code == 1


def test_flip_in_the_frame_checksum(fx, state, damaged):
    size = (fx / "single.tar.zst").stat().st_size
    result = verify(damaged("single.tar.zst", at=size - 2, xor=0x01), state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_CHECKSUM_MISMATCH" and finding.location.byte_range == (0, size)


def test_truncated_frame(fx, state, damaged):
    frames = pzstd_frames(fx / "multi.tar.zst")
    cut = frames[1][0] + 1_000_000
    result = verify(damaged("multi.tar.zst", truncate=cut), state=state)
    corrupt = [f for f in result.findings if f.category.value == "corruption"]
    assert [f.code for f in corrupt] == ["ZSTD_TRUNCATED_FRAME"]
    loc = corrupt[0].location
    assert loc.frame == 3 and loc.byte_range[1] == cut and loc.byte_range[0] < cut
    assert loc.member == "./data/big.bin" and loc.member_offset > 0
    big = next(m for m in result.members() if m["name"] == "./data/big.bin")
    assert big["digest"] is None  # its content could not be read whole


def test_truncated_tar_inside_a_member(fx, state, damaged):
    header, data = member_offsets(fx / "gnu.tar")["./data/big.bin"]
    size = next(m for m in verify(fx / "gnu.tar", state=state, layers=["tar"]).members()
                if m["name"] == "./data/big.bin")["size"]
    cut = data + 1_000_000
    result = verify(damaged("gnu.tar", truncate=cut), state=state)
    assert codes(result) == ["TAR_TRUNCATED"]
    finding = result.findings[0] if result.findings[0].code == "TAR_TRUNCATED" else \
        next(f for f in result.findings if f.code == "TAR_TRUNCATED")
    assert finding.location.byte_range == (cut, cut)
    assert finding.location.member == "./data/big.bin" and finding.location.member_offset == 1_000_000
    assert dict(finding.details) == {"what": "./data/big.bin", "missing": size - 1_000_000 + (-size % 512)}


def test_truncated_tar_at_a_member_boundary_has_no_end_marker(fx, state, damaged):
    header, _ = member_offsets(fx / "gnu.tar")["./etc/config-10.conf"]
    result = verify(damaged("gnu.tar", truncate=header), state=state)
    assert codes(result) == ["TAR_MISSING_END"] and result.exit_code == 1
    assert result.findings[0].location.byte_range == (header, header)
    assert result.findings[0].severity.value == "error"  # what the exit code says


def test_broken_header_checksum_then_resync(fx, state, damaged):
    offsets = member_offsets(fx / "gnu.tar")
    header, _ = offsets["./etc/config-05.conf"]
    result = verify(damaged("gnu.tar", at=header + 10, xor=0x01), state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "TAR_HEADER_CHECKSUM"
    assert finding.location.byte_range == (header, header + 512)
    names = [m["name"] for m in result.members()]
    assert "./etc/config-05.conf" not in names and "./etc/config-06.conf" in names
    resync = next(f for f in result.findings if f.code == "TAR_RESYNC")
    assert resync.location.byte_range == (header, offsets["./etc/config-06.conf"][0])


@pytest.mark.parametrize("compress", [None, ["zstd", "-q", "-c"], ["gzip", "-c"]])
@pytest.mark.parametrize("at, xor", [(257, 0x20), (5, 0x01)])  # ustar's u, a byte of the name
def test_a_damaged_first_header_is_corruption_not_another_format(fx, state, tmp_path, compress, at, xor):
    """tar refuses the archive ("does not look like a tar archive"); it was taken for a lone
    compressed file (or no archive at all), intact."""
    data = bytearray((fx / "gnu.tar").read_bytes())
    data[at] ^= xor
    bad = tmp_path / "first.tar"
    bad.write_bytes(data)
    if compress:
        bad = tmp_path / "first.tar.z"
        bad.write_bytes(subprocess.run([*compress], input=bytes(data), capture_output=True, check=True).stdout)
    assert subprocess.run(["tar", "-tf", str(bad)], capture_output=True).returncode != 0
    offsets = member_offsets(fx / "gnu.tar")
    second = sorted(header for header, _ in offsets.values())[1]
    result = verify(bad, state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "TAR_HEADER_CHECKSUM" and result.verdict == "corrupt"
    resync = next(f for f in result.findings if f.code == "TAR_RESYNC")
    if compress:
        assert finding.location.uncompressed_offset == resync.location.uncompressed_offset == 0
        assert dict(resync.details)["length"] == second
    else:
        assert finding.location.byte_range == (0, 512) and resync.location.byte_range == (0, second)
    assert len(list(result.members())) == len(offsets) - 1  # the walk went on at the second header


def _set_size(path, header, size_field: bytes):
    with open(path, "r+b") as f:
        f.seek(header)
        block = bytearray(f.read(512))
        block[124:136] = size_field
        block[148:156] = b" " * 8
        block[148:156] = f"{sum(block):06o}\x00 ".encode()
        f.seek(header)
        f.write(block)


def test_altered_size_field_misaligns_the_next_header(fx, state, damaged):
    offsets = member_offsets(fx / "gnu.tar")
    header, data = offsets["./etc/config-05.conf"]
    bad = damaged("gnu.tar")
    _set_size(bad, header, b"%011o\x00" % 2048)  # grows into the next member's content
    result = verify(bad, state=state)
    corrupt = [f for f in result.findings if f.category.value == "corruption"]
    assert [f.code for f in corrupt] == ["TAR_HEADER_CHECKSUM"]
    assert corrupt[0].location.byte_range == (data + 2048, data + 2048 + 512)


def test_size_field_that_is_not_a_number(fx, state, damaged):
    header, _ = member_offsets(fx / "gnu.tar")["./etc/config-05.conf"]
    bad = damaged("gnu.tar")
    _set_size(bad, header, b"00000zz0000\x00")
    result = verify(bad, state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "TAR_BAD_NUMBER" and dict(finding.details)["field"] == "size"
    assert finding.location.byte_range == (header, header + 512)


def test_zeroed_run_inside_a_member_changes_only_that_members_digest(fx, state, damaged, index):
    _, data = member_offsets(fx / "gnu.tar")["./data/big.bin"]
    result = verify(damaged("gnu.tar", at=data + 4096, data=bytes(4096)), state=state)
    assert result.verdict == "intact"  # tar carries no content checksum: the digest is the evidence
    changed = [m["name"] for m in result.members()
               if m["type"] == "file" and "sparse_size" not in m
               and m["digest"] != index["files"][m["name"].removeprefix("./")]]
    assert changed == ["./data/big.bin"]


def test_zeroed_run_inside_compressed_member_data(fx, state, damaged):
    start, end = pzstd_frames(fx / "multi.tar.zst")[0]
    result = verify(damaged("multi.tar.zst", at=start + 2_000_000, data=bytes(4096)), state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code in ("ZSTD_CHECKSUM_MISMATCH", "ZSTD_DECODE_ERROR")
    assert finding.location.frame == 1 and finding.location.byte_range[0] >= start - 4
    assert finding.location.byte_range[1] <= end
    assert result.exit_code == 1


def test_damage_does_not_hide_later_frames(fx, state, damaged):
    frames = pzstd_frames(fx / "multi.tar.zst")
    bad = damaged("multi.tar.zst", at=frames[0][0] + 500_000, xor=0x40)
    with open(bad, "r+b") as f:
        f.seek(frames[2][0] + 500_000)
        byte = f.read(1)[0]
        f.seek(frames[2][0] + 500_000)
        f.write(bytes([byte ^ 0x40]))
    result = verify(bad, state=state)
    corrupt = [f for f in result.findings if f.category.value == "corruption"]
    assert sorted(f.location.frame for f in corrupt) == [1, 5]


def test_trailing_garbage_after_the_last_frame(fx, state, tmp_path):
    bad = tmp_path / "garbage.tar.zst"
    good = (fx / "single.tar.zst").read_bytes()
    bad.write_bytes(good + b"not a frame at all" * 10)
    result = verify(bad, state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_TRAILING_GARBAGE" and finding.location.byte_range == (len(good), len(good) + 180)


def raw_frame(declared: int, content: bytes) -> bytes:
    """A single-segment frame that says it holds ``declared`` bytes: one raw block of
    ``content``, then the right checksum of ``content``."""
    block_header = (1 | len(content) << 3).to_bytes(3, "little")  # last, raw
    checksum = struct.pack("<I", xxhash.xxh64_intdigest(content) & 0xFFFFFFFF)
    return struct.pack("<IBB", 0xFD2FB528, 0x24, declared) + block_header + content + checksum


@pytest.mark.parametrize("content, code, byte_range", [
    # libzstd ends a frame on an empty last block without comparing its size: archcheck does
    (b"", "ZSTD_CONTENT_SIZE_MISMATCH", (32, 45)),
    (b"0123456789", "ZSTD_DECODE_ERROR", (38, 51)),  # libzstd's own check: the block's range
])
def test_a_frame_that_holds_less_than_its_header_says(state, tmp_path, content, code, byte_range):
    first = subprocess.run(["zstd", "-q", "-c"], input=b"first frame\n" * 50, capture_output=True, check=True).stdout
    last = subprocess.run(["zstd", "-q", "-c"], input=b"last frame\n" * 50, capture_output=True, check=True).stdout
    assert len(first) == 32
    bad = tmp_path / "short.zst"
    bad.write_bytes(first + raw_frame(64, content) + last)
    assert subprocess.run(["zstd", "-t", "-q", str(bad)], capture_output=True).returncode != 0
    result = verify(bad, state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert (finding.code, finding.location.frame, finding.location.byte_range) == (code, 1, byte_range)
    assert finding.location.uncompressed_offset == 600


def test_a_legacy_frame_between_frames_is_named_and_the_next_frame_is_not_lost(fx, state, tmp_path):
    """A frame of zstd's legacy format is not checked (unverified), and it is not a frame of
    the walk: the frame after it decodes as any other."""
    good = (fx / "multi.tar.zst").read_bytes()
    at = pzstd_frames(fx / "multi.tar.zst")[0][1]  # where the second frame's size note begins
    legacy = struct.pack("<I", 0xFD2FB527) + bytes(60)  # the v0.7 magic
    bad = tmp_path / "legacy.tar.zst"
    bad.write_bytes(good[:at] + legacy + good[at:])
    clean = verify(fx / "multi.tar.zst", state=state)
    result = verify(bad, state=state)
    [finding] = [f for f in result.findings if f.code == "ZSTD_LEGACY_FRAME"]
    # up to the next zstd frame: the search for it passes over pzstd's size note (12 bytes)
    assert finding.location.byte_range == (at, at + 64 + 12) and finding.location.frame is None
    assert [f.code for f in result.findings if f.category.value != "info"] == ["ZSTD_LEGACY_FRAME"]
    assert [m["digest"] for m in result.members()] == [m["digest"] for m in clean.members()]


def test_bytes_after_the_tar_end_marker(fx, state, tmp_path):
    bad = tmp_path / "appended.tar"
    good = (fx / "gnu.tar").read_bytes()
    bad.write_bytes(good + b"junk" * 100)
    result = verify(bad, state=state)
    assert result.verdict == "intact"
    [finding] = [f for f in result.findings if f.code == "TAR_TRAILING_DATA"]
    assert dict(finding.details)["length"] == 400 and finding.location.byte_range[0] == len(good)


def test_two_tars_joined_with_cat_lose_the_second_to_a_restore(fx, state, tmp_path):
    """`cat a.tar b.tar`: tar -x stops at a.tar's end marker, exits 0 and restores nothing of
    b.tar. Corruption, from the marker to b.tar's first header; b.tar's members are walked."""
    joined = tmp_path / "joined.tar"
    first = (fx / "gnu.tar").read_bytes()
    joined.write_bytes(first + (fx / "ustar.tar").read_bytes())
    result = verify(joined, state=state)
    assert result.verdict == "corrupt" and result.exit_code == 1
    assert codes(result) == ["TAR_MEMBERS_AFTER_END"]
    [finding] = result.findings
    details = dict(finding.details)
    import tarfile
    with tarfile.open(fx / "gnu.tar") as t:
        last = t.getmembers()[-1]
    marker = last.offset_data + -(-last.size // 512) * 512  # after the last member's data
    assert first[marker:].strip(b"\0") == b"" and len(first) > marker + 1024
    second = (fx / "ustar.tar").read_bytes()[:100].rstrip(b"\0").decode()  # the name as its header has it
    assert (details["marker"], details["offset"], details["name"]) == (marker, len(first), second)
    assert finding.location.byte_range == (marker, len(first))
    each = [verify(fx / name, state=state, layers=["tar", "members"]).members() for name in ("gnu.tar", "ustar.tar")]
    assert [m["digest"] for m in result.members()] == [m["digest"] for part in each for m in part]
    tar = subprocess.run(["tar", "-tf", joined], capture_output=True, text=True)
    assert tar.returncode == 0 and tar.stdout.splitlines() == subprocess.run(
        ["tar", "-tf", fx / "gnu.tar"], capture_output=True, text=True, check=True).stdout.splitlines()


def test_zeros_written_over_a_tar_are_not_its_end(fx, state, tmp_path):
    """64 KiB of zeros from a member's header on read as an end marker; the walk goes on at
    the next header after them, so damage further on is found too."""
    good = (fx / "gnu.tar").read_bytes()
    offsets = sorted(header for header, _ in member_offsets(fx / "gnu.tar").values())
    hit = next(h for h in offsets if h > len(good) // 3)
    after = next(h for h in offsets if h >= hit + 65536)
    later = next(h for h in offsets if h > after)
    damaged = bytearray(good[:hit] + bytes(65536) + good[hit + 65536:])
    damaged[later + 10] ^= 0x01  # a header's name: its checksum fails
    path = tmp_path / "zeroed.tar"
    path.write_bytes(bytes(damaged))
    result = verify(path, state=state)
    assert result.verdict == "corrupt"
    assert codes(result) == ["TAR_MEMBERS_AFTER_END", "TAR_HEADER_CHECKSUM"]
    gap, checksum = [f for f in result.findings if f.category.value != "info"]
    assert (dict(gap.details)["marker"], dict(gap.details)["offset"]) == (hit, after)
    assert gap.location.byte_range == (hit, after) and checksum.location.byte_range[0] == later


def test_raw_digest_matches_blake3_of_the_leaves(fx, state):
    import blake3
    data = (fx / "single.tar.zst").read_bytes()
    result = verify(fx / "single.tar.zst", state=state, layers=["raw"], segment_size=8 * MiB)
    leaves = [blake3.blake3(data[i:i + 8 * MiB]).hexdigest() for i in range(0, len(data), 8 * MiB)]
    assert [leaf for s in result.manifest.segments for leaf in s.leaves] == leaves
    assert result.manifest.tree_root == blake3.blake3(b"".join(bytes.fromhex(x) for x in leaves)).hexdigest()


def test_member_digests_match_xxhsum_style_hash(fx, state):
    result = verify(fx / "ustar.tar", state=state, layers=["tar", "members"])
    member = next(m for m in result.members() if m["name"] == "./data/exactly-512")
    assert member["digest"] == xxhash.xxh3_128((fx / "tree/data/exactly-512").read_bytes()).hexdigest()


def test_frame_table_records_every_frame(fx, state):
    result = verify(fx / "multi.tar.zst", state=state, layers=["zstd"])
    table = result.manifest.stream.frame_table
    rows = [dict(zip(table["fields"], row)) for row in frame_rows(result.manifest, result.manifest_path)]
    assert [r["kind"] for r in rows] == ["skippable", "zstd"] * 4
    data_rows = [r for r in rows if r["kind"] == "zstd"]
    assert [(r["offset"], r["end"]) for r in data_rows] == pzstd_frames(fx / "multi.tar.zst")
    assert data_rows[0]["uncompressed_start"] == 0
    assert all(a["uncompressed_end"] == b["uncompressed_start"] for a, b in zip(data_rows, data_rows[1:]))
    assert data_rows[-1]["uncompressed_end"] == (fx / "gnu.tar").stat().st_size


def _many_small_frames(tmp_path, count=2500):
    """One frame per input file, as zstd writes them (`zstd -c a b ...`); and the files' sizes."""
    files = []
    for i in range(count):
        piece = tmp_path / f"piece{i:04d}"
        piece.write_bytes(b"piece %d " % i * (i % 7 + 1))
        files.append(piece)
    archive = tmp_path / "many.zst"
    with open(archive, "wb") as out:
        subprocess.run(["zstd", "-q", "-c", *files], stdout=out, check=True)
    return archive, [f.stat().st_size for f in files]


def test_many_small_frames_each_have_a_row_in_the_frame_table(state, tmp_path):
    """More frames than a worker sends rows of at once: every row arrives, in order."""
    archive, sizes = _many_small_frames(tmp_path)
    result = verify(archive, state=state, layers=["zstd"])
    assert (result.verdict, codes(result)) == ("intact", [])
    table = result.manifest.stream.frame_table
    rows = [dict(zip(table["fields"], row)) for row in frame_rows(result.manifest, result.manifest_path)]
    assert [r["kind"] for r in rows] == ["zstd"] * len(sizes)
    assert rows[0]["offset"] == 0 and rows[-1]["end"] == archive.stat().st_size
    assert all(a["end"] == b["offset"] for a, b in zip(rows, rows[1:]))
    assert [r["uncompressed_end"] - r["uncompressed_start"] for r in rows] == sizes


def test_the_frame_walk_reads_small_frames_a_window_at_a_time(state, tmp_path):
    """A frame's header and block headers are read from one window, not one call each; damage
    inside a window is still found at its frame and bytes."""
    archive, sizes = _many_small_frames(tmp_path)
    reads = []

    class Counting:
        def __init__(self, data):
            self.data, self.size = data, len(data)

        def pread(self, offset, length):
            reads.append(length)
            return self.data[offset:offset + length]

    frames = walk_frames(Counting(archive.read_bytes()), "x", 1 << 27, [])
    assert len(frames) == len(sizes) and all(f.intact for f in frames)
    assert len(reads) < len(sizes) // 20
    frame = frames[1000]
    block = frame.offset + frame.header_length
    data = bytearray(archive.read_bytes())
    data[block] |= 0x06  # block type 3: reserved
    bad = tmp_path / "bad.zst"
    bad.write_bytes(bytes(data))
    result = verify(bad, state=state, layers=["zstd"])
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_RESERVED_BLOCK" and finding.location.byte_range == (block, block + 3)
    assert finding.location.frame == 1000


def test_seekable_table_checksums_are_checked(fx, state, damaged):
    result = verify(fx / "seekable.tar.zst", state=state)
    assert result.manifest.stream.summary.seekable and result.manifest.stream.summary.checksummed_frames == 7
    size = (fx / "seekable.tar.zst").stat().st_size
    table_start = size - 9 - 7 * 12  # entries: compressed size, decompressed size, checksum
    bad = damaged("seekable.tar.zst", at=table_start + 2 * 12 + 8, xor=0xFF)
    result = verify(bad, state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_SEEK_TABLE_MISMATCH" and finding.location.frame == 2
    assert finding.location.uncompressed_offset == 2 * 4 * MiB


def test_a_seek_table_at_odds_with_the_frames_judges_none_of_them(fx, state, tmp_path):
    """The table is read before the walk gets to it, and its word on each frame is taken while
    decoding; but a table the walk finds at odds with the frames says nothing of any frame.
    Here it lists frames 2 and 3 as one (its sizes still add up): frames 2 to 6 disagree with
    it, which is not a finding of theirs; the table is, once."""
    data = (fx / "seekable.tar.zst").read_bytes()
    count = 7
    table = data[-(8 + count * 12 + 9):]
    entries = [list(struct.unpack_from("<III", table, 8 + i * 12)) for i in range(count)]
    entries[2:4] = [[entries[2][0] + entries[3][0], entries[2][1] + entries[3][1], entries[2][2]]]
    short = b"".join(struct.pack("<III", *e) for e in entries) + struct.pack("<IBI", count - 1, 0x80, 0x8F92EAB1)
    archive = tmp_path / "merged-table.tar.zst"
    archive.write_bytes(data[:-len(table)] + struct.pack("<II", 0x184D2A5E, len(short)) + short)
    result = verify(archive, state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_SEEK_TABLE_MISMATCH" and finding.location.frame == 7
    assert dict(finding.details)["detail"] == "table lists 6 frames, the file has 7"
    assert result.manifest.stream.summary.checksummed_frames == 0
    assert "ZSTD_NO_CHECKSUM" in [f.code for f in result.findings]
    # nor does the frame table call a frame checked by it once frame 2's mismatch has settled
    # the walk (the frames have no checksums of their own; the rows of frames 0 to 2 may have
    # left before the walk said so)
    table = result.manifest.stream.frame_table
    rows = [dict(zip(table["fields"], row)) for row in frame_rows(result.manifest, result.manifest_path)]
    assert len(rows) == 8 and not any(row["checksummed"] for row in rows[3:])


def test_seekable_table_that_disagrees_with_the_frames(fx, state, damaged):
    size = (fx / "seekable.tar.zst").stat().st_size
    table_start = size - 9 - 7 * 12
    result = verify(damaged("seekable.tar.zst", at=table_start + 12, xor=0x01), state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_SEEK_TABLE_MISMATCH" and finding.location.frame == 1
    assert "table says" in finding.message
    # the frame itself was walked and decoded: no content is lost, no member is cut
    assert [f.code for f in result.findings] == ["ZSTD_SEEK_TABLE_MISMATCH"]


def test_a_damaged_seek_table_count_reads_no_more_than_the_table(fx):
    """The table is read before the walk: a count with a high bit flipped must not make that a
    read of the whole object."""
    from archcheck.layers.zstd import read_seek_table
    from archcheck.sources import open_source
    data = bytearray((fx / "seekable.tar.zst").read_bytes())
    data[-9 + 2] ^= 0x01  # the count's third byte: 65536 more entries than there are
    reader = open_source(fx / "seekable.tar.zst").ref().open()
    read = []
    reader.pread = lambda offset, length: read.append(length) or bytes(data[offset:offset + length])
    try:
        assert read_seek_table(reader) is None and sum(read) <= 9 + 8
        data[-9 + 2] ^= 0x01
        assert len(read_seek_table(reader)) == 7
    finally:
        reader.close()


def test_findings_stop_growing_at_the_limit(state, tmp_path):
    hostile = tmp_path / "hostile.zst"  # 30,000 frame headers with the reserved bit set
    hostile.write_bytes(b"\x28\xb5\x2f\xfd\x08" * 30_000)
    result = verify(hostile, state=state)
    assert result.verdict == "corrupt"
    kept = [f for f in result.findings if f.code == "ZSTD_RESERVED_BIT"]
    [limited] = [f for f in result.findings if f.code == "FINDINGS_LIMITED"]
    assert len(kept) == 10_000 and dict(limited.details)["by_code"].startswith("19999 ZSTD_RESERVED_BIT")


def _frame_header_length(descriptor: int) -> int:
    """Magic and frame header, from the frame header descriptor (RFC 8878 3.1.1.1.1)."""
    single = descriptor >> 5 & 1
    content_size = (single, 2, 4, 8)[descriptor >> 6]
    return 4 + 1 + (1 - single) + (0, 1, 2, 4)[descriptor & 3] + content_size


def test_broken_block_header_in_a_pzstd_frame(fx, state, damaged):
    """pzstd's size notes let the frame walk skip block headers; the decoding thread walks them."""
    data = (fx / "multi.tar.zst").read_bytes()
    start, end = pzstd_frames(fx / "multi.tar.zst")[1]
    block = start + _frame_header_length(data[start + 4])
    result = verify(damaged("multi.tar.zst", at=block, data=b"\xff\xff\xff"), state=state)
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.code == "ZSTD_RESERVED_BLOCK" and finding.location.byte_range == (block, block + 3)
    assert finding.location.frame == 3 and finding.location.member is not None
    names = [m["name"] for m in result.members()]
    assert "./etc/config-00.conf" in names  # frames before and after still verified
    assert names[-1].startswith("./link-to") or names[-1].startswith("./hardlink")


def test_pzstd_size_note_that_disagrees_with_the_blocks(fx, state, damaged):
    start, end = pzstd_frames(fx / "multi.tar.zst")[0]
    note = start - 4  # the 4-byte note of frame 1's compressed size, inside the skippable frame
    size = int.from_bytes((fx / "multi.tar.zst").read_bytes()[note:note + 4], "little")
    bad = damaged("multi.tar.zst", at=note, data=(size + 12 + pzstd_frames(fx / "multi.tar.zst")[1][1]
                                                       - pzstd_frames(fx / "multi.tar.zst")[1][0]).to_bytes(4, "little"))
    result = verify(bad, state=state)
    codes_found = [f.code for f in result.findings if f.category.value == "corruption"]
    assert codes_found == ["ZSTD_SIZE_NOTE_MISMATCH"]


def test_empty_archives(state, tmp_path):
    zeros = tmp_path / "zeroed.tar"  # an empty archive, or a backup that was zeroed out
    zeros.write_bytes(bytes(20 * 512))
    result = verify(zeros, state=state)
    assert result.verdict == "intact" and [f.code for f in result.findings] == ["TAR_EMPTY"]
    empty = tmp_path / "empty.zst"
    empty.write_bytes(bytes.fromhex("28B52FFD2400010000 99E9D851".replace(" ", "")))
    result = verify(empty, state=state)
    assert result.verdict == "intact" and [f.code for f in result.findings] == ["TAR_NOT_TAR"]


def test_checksum_mismatch_does_not_lose_the_members_after_it(fx, state, tmp_path, index):
    """A restore stops at a frame whose checksum fails (zstd -d): the member it ends in has no
    digest, and the walk goes on through the frames after it."""
    tar_file = tmp_path / "plain.tar"
    subprocess.run(["tar", "-cf", tar_file, *maker.TAR_FLAGS, "-C", fx / "tree", "etc", "deep"], check=True)
    tar = tar_file.read_bytes()
    cut_in = next(name for name, (header, data) in sorted(member_offsets(tar_file).items(), key=lambda m: m[1])
                  if header >= 100_000 and tarfile_size(tar_file, name) >= 1024)
    cut = member_offsets(tar_file)[cut_in][1] + 512  # frame 1 ends inside that member's data
    pieces = [tar[:60_000], tar[60_000:cut]] + [tar[i:i + 60_000] for i in range(cut, len(tar), 60_000)]
    frames = [subprocess.run(["zstd", "-q", "-c", "--check"], input=piece, capture_output=True, check=True).stdout
              for piece in pieces]
    frames[1] = frames[1][:-1] + bytes([frames[1][-1] ^ 1])
    archive = tmp_path / "checksum.tar.zst"
    archive.write_bytes(b"".join(frames))
    result = verify(archive, state=state)
    corrupt = [f for f in result.findings if f.category.value == "corruption"]
    assert [(f.code, f.location.frame) for f in corrupt] == [("ZSTD_CHECKSUM_MISMATCH", 1)]
    listed = subprocess.run(["tar", "-tf", "-"], input=tar, capture_output=True, check=True).stdout.decode().split("\n")
    members = list(result.members())
    assert members[-1]["name"] == listed[-2]  # the walk reached the last member
    for member in members:  # a digest is right, or absent where content went missing; never wrong
        if member["type"] == "file" and member["digest"] is not None:
            assert member["digest"] == index["files"][member["name"]], member["name"]
    assert [m["name"] for m in members if m["type"] == "file" and m["digest"] is None] == [cut_in]


def tarfile_size(tar: Path, name: str) -> int:
    import tarfile
    with tarfile.open(tar) as t:
        return t.getmember(name).size

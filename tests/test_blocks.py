"""Damage located to the zstd block (issue 11, point 6), on archives made by real zstd and pzstd:
the block that failed, its compressed bytes, where good output ends, the member there, and
what a restore loses. Where good output ends is asked of the zstd tool itself, by decoding the
archive cut just before the damaged block."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from archcheck.api import verify
from conftest import cli, member_offsets
from test_verify import pzstd_frames


def _header_length(descriptor: int) -> int:
    """Magic and frame header, from the frame header descriptor (RFC 8878 3.1.1.1.1)."""
    single = descriptor >> 5 & 1
    return 4 + 1 + (1 - single) + (0, 1, 2, 4)[descriptor & 3] + (single, 2, 4, 8)[descriptor >> 6]


def _blocks(data: bytes, start: int) -> list[tuple[int, int, int]]:
    """(start, end, type) of each block of the frame at ``start`` (RFC 8878 3.1.1.2)."""
    at, found = start + _header_length(data[start + 4]), []
    while True:
        header = int.from_bytes(data[at:at + 3], "little")
        kind, size = header >> 1 & 3, header >> 3
        found.append((at, at + 3 + (1 if kind == 1 else size), kind))
        at = found[-1][1]
        if header & 1:
            return found


def _decoded_length(data: bytes) -> int:
    """How much the zstd tool decodes of ``data`` (whole frames and then whole blocks)."""
    run = subprocess.run(["zstd", "-dc"], input=data, capture_output=True)
    return len(run.stdout)


def _damage_block(src: Path, dst: Path, frame_start: int, pick) -> tuple[int, int, int, int]:
    """Break the literals header of a compressed block of the frame at ``frame_start``, chosen
    by ``pick`` from the frame's compressed blocks: (block index, start, end, good output end)."""
    data = bytearray(src.read_bytes())
    blocks = _blocks(data, frame_start)
    index = pick([i for i, (_, _, kind) in enumerate(blocks) if kind == 2 and 0 < i < len(blocks) - 1])
    start, end, _ = blocks[index]
    good = _decoded_length(bytes(data[:start]))
    data[start + 3] ^= 0xFF  # the literals section header: libzstd rejects the block
    dst.write_bytes(bytes(data))
    return index, start, end, good


def _member_at(tar: Path, offset: int) -> tuple[str, int, list[tarfile.TarInfo]]:
    """The member whose content holds an uncompressed offset, the offset in it, and all members."""
    with tarfile.open(tar) as t:
        members = t.getmembers()
    [member] = [m for m in members if m.offset_data <= offset < m.offset_data + m.size]
    return member.name, offset - member.offset_data, members


def _plain(fx: Path, tmp_path: Path, name: str) -> Path:
    tar = tmp_path / "plain.tar"
    tar.write_bytes(subprocess.run(["zstd", "-dc", fx / name], capture_output=True, check=True).stdout)
    return tar


def test_a_bad_block_of_a_single_frame_is_named_with_what_a_restore_loses(fx, tmp_path):
    archive = tmp_path / "single.tar.zst"
    index, start, end, good = _damage_block(fx / "single.tar.zst", archive, 0, lambda ok: ok[len(ok) // 2])
    member, inside, _ = _member_at(_plain(fx, tmp_path, "single.tar.zst"), good)
    result = verify(archive, state=tmp_path / "s")
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    details = dict(finding.details)
    assert finding.code == "ZSTD_DECODE_ERROR" and details["block"] == index
    loc = finding.location
    assert (loc.byte_range, loc.frame, loc.uncompressed_offset) == ((start, end), 0, good)
    assert (loc.member, loc.member_offset) == (member, inside)
    assert details["restore_loses"] == (f"{member} from byte {inside} on, and every member after it "
                                        "to the end of the archive")
    assert "walk_resumes_at" not in details  # one frame: nothing after the bad block is read
    text = cli("verify", archive, "--state-dir", tmp_path / "t").stdout
    assert f"bytes {start}-{end}, frame 0, zstd block {index}, uncompressed offset {good}" in text
    assert f"a restore loses {member} from byte {inside} on" in text


def test_a_bad_block_of_one_frame_of_many_loses_that_frame_and_the_walk_goes_on(fx, tmp_path):
    frames = pzstd_frames(fx / "multi.tar.zst")
    assert len(frames) >= 3
    frame_start, frame_end = frames[1]  # the second data frame; pzstd's skippable notes between
    archive = tmp_path / "multi.tar.zst"
    index, start, end, good = _damage_block(fx / "multi.tar.zst", archive, frame_start, lambda ok: ok[0])
    data = (fx / "multi.tar.zst").read_bytes()
    frame_output_end = _decoded_length(data[:frame_end])
    member, inside, members = _member_at(_plain(fx, tmp_path, "multi.tar.zst"), good)
    resumes = next(m for m in members if m.offset >= frame_output_end)
    result = verify(archive, state=tmp_path / "s")
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    details, loc = dict(finding.details), finding.location
    assert finding.code == "ZSTD_DECODE_ERROR" and details["block"] == index
    assert (loc.byte_range, loc.frame, loc.uncompressed_offset) == ((start, end), 3, good)
    assert (loc.member, loc.member_offset) == (member, inside)
    assert details["restore_loses"] == (f"{member} from byte {inside} on, and every member after it to the end "
                                        f"of frame 3 (archive bytes {frame_start}-{frame_end})")
    # offsets after a lost frame count the output decoded (the rest of a frame without its
    # content size is of unknown length), as the member records do
    walked = {m["name"]: m for m in result.members()}
    lost = frame_output_end - good  # the output of the frame from the bad block on
    assert walked[resumes.name]["header_offset"] == resumes.offset - lost
    resumed = f"{resumes.name} (uncompressed offset {walked[resumes.name]['header_offset']})"
    assert details["walk_resumes_at"] == resumed
    assert list(walked)[-1] == members[-1].name  # the members after the lost frame are verified
    text = cli("verify", archive, "--state-dir", tmp_path / "t").stdout
    assert f"the walk resumes at {resumed}" in text


def _sized_frames(data: bytes, piece: int) -> list[bytes]:
    """zstd frames of ``piece`` bytes each that state their content size."""
    return [subprocess.run(["zstd", "-q", "-c", f"--stream-size={len(data[at:at + piece])}"], input=data[at:at + piece],
                           capture_output=True, check=True).stdout for at in range(0, len(data), piece)]


def test_offsets_after_a_lost_frame_that_states_its_size_are_exact(mixed_tar, tmp_path):
    """Frames that state their content size (zstd of a file does): what follows a frame that
    failed starts where the frames say, so members after it keep their true offsets."""
    piece = 2 * 1024 * 1024
    frames = _sized_frames(mixed_tar.read_bytes(), piece)
    whole = tmp_path / "whole.tar.zst"
    whole.write_bytes(b"".join(frames))
    archive = tmp_path / "sized.tar.zst"
    _damage_block(whole, archive, len(frames[0]), lambda ok: ok[len(ok) // 2])  # (the first holds random bytes: raw blocks)
    result = verify(archive, state=tmp_path / "s")
    [finding] = [f for f in result.findings if f.category.value == "corruption"]
    assert finding.location.frame == 1
    true = member_offsets(mixed_tar)
    walked = {m["name"]: m["header_offset"] for m in result.members()}
    after = [name for name, (header, _) in true.items() if header >= 2 * piece]
    assert after and all(walked[name] == true[name][0] for name in after)
    assert dict(finding.details)["walk_resumes_at"] == f"{after[0]} (uncompressed offset {true[after[0]][0]})"


@pytest.mark.parametrize("lie", [1 << 60, (1 << 64) - 2])
def test_a_content_size_no_frame_could_hold_is_not_followed(mixed_tar, tmp_path, lie):
    """A frame that decodes whole but states a size its bytes could never hold (a lie, or
    damage in the field): offsets after it count the output decoded, which is all of it."""
    frames = _sized_frames(mixed_tar.read_bytes(), 2 * 1024 * 1024)
    frame = frames[1]
    descriptor = frame[4]
    assert descriptor == 0xA4  # a 4-byte size, a single segment (its window is its size), a checksum
    # the header rewritten with a 2 MiB window and an 8-byte size: the frame stays decodable
    header = frame[:4] + bytes([0xC4, (21 - 10) << 3]) + lie.to_bytes(8, "little")
    archive = tmp_path / "lie.tar.zst"
    archive.write_bytes(b"".join([frames[0], header + frame[5 + 4:], *frames[2:]]))
    result = verify(archive, state=tmp_path / "s")
    assert result.verdict == "corrupt" and {f.location.frame for f in result.findings if f.category.value == "corruption"} == {1}
    true = {name.rstrip("/"): header for name, (header, _) in member_offsets(mixed_tar).items()}
    walked = {m["name"].rstrip("/"): m["header_offset"] for m in result.members()}
    # libzstd holds back the frame's last block (128 KiB) when its size does not match: the
    # members in it are lost, and those after are placed that much early, not 2^60 bytes late
    lost = {n for n, header in true.items() if 4 * 1024 * 1024 - 128 * 1024 <= header < 4 * 1024 * 1024}
    assert walked.keys() == true.keys() - lost and all(true[n] - 128 * 1024 <= walked[n] <= true[n] for n in walked)


def test_damage_deep_in_a_frame_decoded_while_it_is_walked_is_found_as_before(tmp_path):
    """A 40 MiB frame is handed to a lane open, before the walk has found its end, and the walk
    follows it a lead ahead (16 MiB): damage past that lead is found as by a walk that ended
    first, whether the decoder finds it (a broken literals header) or the walk (a block of the
    reserved type: the decoder is fed what a walk that ended first gave it, up to the next
    frame magic the walk looks for after the damage)."""
    import random
    (tmp_path / "in").mkdir()
    rng = random.Random(5)
    words = [rng.randbytes(rng.randrange(2, 9)) for _ in range(4096)]
    for i in range(56):  # noise and text by turns: raw blocks and compressed ones
        text = b" ".join(rng.choices(words, k=1 << 16))[:1 << 19]
        (tmp_path / "in" / f"f{i:02d}.bin").write_bytes(rng.randbytes(1 << 19) + text)
    tar = tmp_path / "big.tar"
    subprocess.run(["tar", "-cf", tar, "-C", tmp_path / "in", "."], check=True)
    subprocess.run(["zstd", "-q", "-1", tar, "-o", tmp_path / "big.tar.zst"], check=True)
    data = (tmp_path / "big.tar.zst").read_bytes()
    assert len(data) > 32 * 1024 * 1024
    blocks = _blocks(data, 0)

    def deep(ok: list[int]) -> int:
        return min(ok, key=lambda i: abs(blocks[i][0] - 30 * 1024 * 1024))

    decoded = tmp_path / "decoded.tar.zst"
    index, start, end, good = _damage_block(tmp_path / "big.tar.zst", decoded, 0, deep)
    member, inside, _ = _member_at(tar, good)
    [finding] = [f for f in verify(decoded, state=tmp_path / "s1").findings if f.category.value == "corruption"]
    assert (finding.code, dict(finding.details)["block"]) == ("ZSTD_DECODE_ERROR", index)
    loc = finding.location
    assert (loc.byte_range, loc.uncompressed_offset, loc.member, loc.member_offset) == ((start, end), good,
                                                                                        member, inside)

    walked = tmp_path / "walked.tar.zst"
    damaged = bytearray(data)
    at = blocks[index][0]
    damaged[at] |= 0b110  # the block type: reserved, which the walk finds in the header
    walked.write_bytes(bytes(damaged))
    good = _decoded_length(data[:at])
    member, inside, _ = _member_at(tar, good)
    [finding] = [f for f in verify(walked, state=tmp_path / "s2").findings if f.category.value == "corruption"]
    assert (finding.code, dict(finding.details)["block"]) == ("ZSTD_RESERVED_BLOCK", index)
    loc = finding.location
    assert (loc.byte_range, loc.frame, loc.uncompressed_offset) == ((at, at + 3), 0, good)
    assert (loc.member, loc.member_offset) == (member, inside)

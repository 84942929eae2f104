"""A gzip file of many members decodes on two threads (layers/relay.py): the scout's work is
used only where a member truly ends at its start, and every finding is the one a serial decode
(--workers 1) makes. Files made by real gzip; damage at known places.

The relay's overlap depends on timing. The tests that must see a handoff or a dropped scout
hold the first read back until the scout has read at its candidate, so both happen every run."""
from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from archcheck.api import verify
from archcheck.layers import DEFAULT_MAX_WINDOW
from archcheck.layers import relay as relay_module
from archcheck.layers.decoding import FrameDecoders, FrameFeed
from archcheck.layers.relay import first_header, renumbered
from archcheck.layers.zstd import Frame
from archcheck.sources.local import LocalReader

MiB = 1024 * 1024


def _gzip(data: bytes, *args: str) -> bytes:
    return subprocess.run(["gzip", "-c", *args], input=data, capture_output=True, check=True).stdout


def _gunzip(path: Path) -> bytes:
    return subprocess.run(["gzip", "-dc", path], capture_output=True).stdout


class _HeldReader:
    """A file whose first read waits until some thread has read at ``scout_at``: the front is
    held back until the scout has begun there. With ``hold_scout``, the scout's reads after
    its first wait until the front has handed on to it (so what it finds is the file's)."""

    def __init__(self, path: Path, scout_at: int, hold_scout: bool = False):
        self.inner, self.scout_at, self.hold_scout = LocalReader(str(path)), scout_at, hold_scout
        self.size = self.inner.size
        self.scout_began = threading.Event()
        self.relays: list = []

    def pread(self, offset: int, length: int) -> bytes:
        if offset == self.scout_at:
            self.scout_began.set()
        elif offset == 0:
            assert self.scout_began.wait(10), "the scout never read at its candidate"
        elif offset > self.scout_at and self.hold_scout:
            deadline = time.monotonic() + 10
            while not (self.relays and self.relays[0].handoffs) and time.monotonic() < deadline:
                time.sleep(0.01)
        return self.inner.pread(offset, length)

    def reading_from(self, offset: int) -> None:
        pass


class _CountingReader(LocalReader):
    """A file that counts the bytes read from it, by every thread."""

    def __init__(self, path: str):
        super().__init__(path)
        self.read = 0

    def pread(self, offset: int, length: int) -> bytes:
        data = super().pread(offset, length)
        self.read += len(data)
        return data


def _decode(reader, threads: int = 2):
    """(output, the end event, the relay) of the file decoded as one gzip frame."""
    relays = []
    original = relay_module.GzipRelay.run

    def run(self):
        relays.append(self)
        getattr(reader, "relays", []).append(self)
        return original(self)

    feed = FrameFeed([Frame(0, "gzip", 0, reader.size)])
    decoders = FrameDecoders(reader, feed, threads, DEFAULT_MAX_WINDOW, depth=3, chunk=256 * 1024)
    out, end = [], None
    relay_module.GzipRelay.run = run
    try:
        for event in decoders:
            if event.data is None:
                end = event
                continue
            out.append(event.data.tobytes())
            decoders.release(event)
    finally:
        relay_module.GzipRelay.run = original
    return b"".join(out), end, (relays[0] if relays else None), decoders


def _pools_whole(decoders: FrameDecoders) -> bool:
    """Every chunk a pool made is back in it: nothing dropped was kept."""
    return all(free.qsize() == made for free, made in zip(decoders.free, decoders.made))


@pytest.fixture(scope="module")
def two_members(tmp_path_factory) -> tuple[Path, int]:
    """Two gzip members of random bytes, the first over 2 MiB (a scout looks 1 MiB past the
    front's first read), the second over 1 MiB (a read)."""
    rnd = random.Random(5)
    first = _gzip(rnd.randbytes(int(2.5 * MiB)))
    path = tmp_path_factory.mktemp("relay") / "two.gz"
    path.write_bytes(first + _gzip(rnd.randbytes(2 * MiB)))
    return path, len(first)


def test_plausible_headers_are_found_and_messages_renumbered():
    header = _gzip(b"x")[:10]
    assert first_header(b"junk" + header) == 4
    assert first_header(b"\x1f\x8b\x08\xe0" + bytes(6)) is None  # reserved flags
    assert first_header(b"\x1f\x8b\x08\x00" + bytes(4) + b"\x07\x03") is None  # no writer's XFL
    assert first_header(header[:9]) is None  # not whole
    assert renumbered("gzip member 1: CRC-32 of ...", 1, 3) == "gzip member 4: CRC-32 of ..."
    assert renumbered("the file ends inside gzip member 0 (its trailer)", 0, 12) == \
        "the file ends inside gzip member 12 (its trailer)"
    assert renumbered("gzip member 11: x", 1, 3) == "gzip member 11: x"


def test_the_scout_s_members_follow_where_a_member_ends_at_its_start(two_members):
    path, boundary = two_members
    reader = _HeldReader(path, boundary)
    out, end, relay, decoders = _decode(reader)
    assert out == _gunzip(path)
    assert relay.handoffs == 1
    assert (end.error, end.trailing, end.compressed_pos) == (None, None, path.stat().st_size)
    assert _pools_whole(decoders)


@pytest.mark.parametrize("damage", ["crc", "cut"])
def test_damage_in_the_scout_s_member_is_named_as_the_file_s_member(two_members, tmp_path, damage):
    path, boundary = two_members
    data = bytearray(path.read_bytes())
    if damage == "crc":
        data[-8] ^= 1  # the second member's stored CRC-32
    else:
        data = data[:-1000]
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(bytes(data))
    out, end, relay, _ = _decode(_HeldReader(damaged, boundary, hold_scout=True))
    serial_out, serial_end, _, _ = _decode(LocalReader(str(damaged)), threads=1)
    assert relay.handoffs == 1 and out == serial_out
    assert (end.error_code, end.error, end.block.index, end.block.start, end.block.end) == (
        serial_end.error_code, serial_end.error, serial_end.block.index, serial_end.block.start, serial_end.block.end)
    assert end.block.index == 1 and end.block.start == boundary
    assert end.error.startswith("gzip member 1:" if damage == "crc" else "the file ends inside gzip member 1 ")


def test_a_gz_file_stored_inside_a_member_is_not_taken_for_the_next_member(tmp_path):
    """gzip stores incompressible data as it is: a .gz file inside the tar is a whole gzip
    member inside the deflate data, at a plausible header that is no member's start."""
    for seed in range(20):  # one whose .gz lies within one stored block (of at most 64 KiB)
        rnd = random.Random(seed)
        inner = _gzip(rnd.randbytes(5000))
        packed = _gzip(rnd.randbytes(int(2.2 * MiB)) + inner + rnd.randbytes(400_000), "-1")
        candidate = 2 * MiB + first_header(packed[2 * MiB:])
        if packed[candidate:candidate + len(inner)] == inner:
            break
    assert packed[candidate:candidate + len(inner)] == inner  # the scout decodes a whole member there
    path = tmp_path / "stored.gz"
    path.write_bytes(packed)
    out, end, relay, decoders = _decode(_HeldReader(path, candidate))
    assert out == _gunzip(path)
    assert relay.handoffs == 0 and (end.error, end.trailing) == (None, None)
    assert _pools_whole(decoders)


@pytest.fixture(scope="module")
def many_members(mixed_tar, tmp_path_factory) -> tuple[Path, list[int]]:
    """The mixed tar as `split -b 512K --filter=gzip` writes it: one member per 512 KiB."""
    path = tmp_path_factory.mktemp("many") / "many.tar.gz"
    with open(path, "wb") as out:
        subprocess.run(["split", "-b", "512K", "--filter", "gzip -6", mixed_tar], stdout=out, check=True)
    data = path.read_bytes()
    starts, at = [], 0
    while (found := first_header(data[at:])) is not None:
        starts.append(at + found)
        at += found + 1
    return path, starts


def _as_serial(result) -> list[tuple]:
    """What a finding says, but the compressed range of tar damage: it comes from the pieces
    output was handed on in, which differ where a scout's output follows."""
    return [(f.code, f.message, f.details, f.location.member, f.location.uncompressed_offset,
             None if f.layer == "tar" else f.location.byte_range) for f in result.findings]


@pytest.mark.parametrize("damage", ["clean", "deflate", "crc", "cut", "header", "junk between", "appended"])
def test_a_many_member_file_gives_the_serial_decode_s_findings(many_members, tmp_path, damage):
    path, starts = many_members
    data = bytearray(path.read_bytes())
    if damage == "deflate":
        data[(starts[3] + starts[4]) // 2] ^= 0x10
    elif damage == "crc":
        data[starts[6] - 8] ^= 1
    elif damage == "cut":
        data = data[:starts[7] + 3000]
    elif damage == "header":
        data[starts[4] + 3] |= 0x80
    elif damage == "junk between":
        data[starts[4]:starts[4]] = b"\x1f\x8b\x08junk"
    elif damage == "appended":
        data += b"garbage after the end\n"
    archive = tmp_path / f"{damage}.tar.gz"
    archive.write_bytes(bytes(data))
    serial = verify(archive, state=tmp_path / "serial", workers=1)
    relayed = verify(archive, state=tmp_path / "relayed", workers=2)
    assert (relayed.verdict, relayed.exit_code) == (serial.verdict, serial.exit_code)
    assert _as_serial(relayed) == _as_serial(serial)
    damaged = [f for f in relayed.findings if f.category.value == "corruption" and f.layer == "gzip"]
    member = {"deflate": 3, "crc": 5, "cut": 7, "header": 4, "junk between": 4}.get(damage)
    assert [dict(f.details)["gzip_member"] for f in damaged] == ([member] if member is not None else [])
    if damage in ("crc", "cut", "header"):  # the member's bytes, numbered in the file
        assert damaged[0].location.byte_range[0] == starts[member]


def test_a_file_of_one_member_decodes_as_before(mixed_tar, tmp_path):
    """pigz and tar czf write one member: the scout finds no header; the file is read once to
    decode and once scanned ahead (from the page cache), no more."""
    path = tmp_path / "one.tar.gz"
    path.write_bytes(_gzip(mixed_tar.read_bytes()))
    reader = _CountingReader(str(path))
    out, end, relay, _ = _decode(reader)
    assert out == mixed_tar.read_bytes() and relay.handoffs == 0 and end.error is None
    assert reader.read <= 2 * os.path.getsize(path)  # read once to decode, once scanned ahead


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    """One member of a tar-like run of small .gz files, which gzip stores as they are: a
    plausible header every 23 KB, none a member's start."""
    rnd = random.Random(7)
    path = tmp_path_factory.mktemp("dense") / "dense.gz"
    path.write_bytes(_gzip(b"".join(rnd.randbytes(20_000) + _gzip(rnd.randbytes(3000)) for _ in range(300)), "-1"))
    return path


@pytest.mark.parametrize("inside", ["small .gz files", "fake headers"])
def test_headers_everywhere_inside_the_data_change_nothing(dense, tmp_path, inside):
    """Candidates everywhere (stored .gz files, or data made of fake member headers): the
    output is the file's, no scout's work is used, every chunk goes back to its pool, and the
    file is read about twice (the front, and the scan ahead)."""
    path = dense
    if inside == "fake headers":
        rnd = random.Random(8)
        path = tmp_path / "fake.gz"
        path.write_bytes(_gzip(b"".join(b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\x03" + rnd.randbytes(200)
                                        for _ in range(30_000)), "-1"))
    reader = _CountingReader(str(path))
    out, end, relay, decoders = _decode(reader)
    assert out == _gunzip(path) and relay.handoffs == 0 and end.error is None
    assert reader.read < 2.5 * path.stat().st_size, reader.read / path.stat().st_size
    assert _pools_whole(decoders)


def test_a_scout_starts_a_read_past_the_front_and_reads_little_unconfirmed(dense, monkeypatch):
    """What bounds a scout's work on hostile files, step by step: its candidate is at least
    MIN_AHEAD past the front's reads, its first read is FIRST_READ, and unconfirmed it reads
    nothing past SPECULATIVE_SPAN or past the members (it waits for the front)."""
    reader = LocalReader(str(dense))
    feed = FrameFeed([Frame(0, "gzip", 0, reader.size)])
    decoders = FrameDecoders(reader, feed, 2, DEFAULT_MAX_WINDOW, depth=3, chunk=256 * 1024)
    relay = relay_module.GzipRelay(decoders, feed.get(0), 0)  # (its threads are not started)
    relay.front.reading_to = 300_000
    data = dense.read_bytes()
    expected = 300_000 + relay_module.MIN_AHEAD
    expected += first_header(data[expected:])
    scout = relay._scout(1)
    assert (scout.start, relay.front.target, scout.confirmed) == (expected, expected, False)
    assert relay._next_read(scout, scout.start, past_members=False) == relay_module.FIRST_READ
    assert relay._next_read(scout, scout.start + 100, past_members=False) == relay_module.READ_SIZE
    monkeypatch.setattr(relay_module, "SPECULATIVE_SPAN", 2 * relay_module.READ_SIZE)
    for pos, past in [(scout.start + 100, True), (scout.start + 2 * relay_module.READ_SIZE, False)]:
        threading.Timer(0.3, lambda: setattr(scout, "dropped", True)).start()
        started = time.monotonic()
        assert relay._next_read(scout, pos, past_members=past) is None  # waited, then dropped
        assert time.monotonic() - started >= 0.25
        scout.dropped = False
    scout.confirmed = True
    assert relay._next_read(scout, scout.start + 100, past_members=True) == relay_module.READ_SIZE


def test_a_stop_ends_both_threads_at_their_next_piece(tmp_path):
    """A stop (a deadline, Ctrl-C) ends a relayed decode at the next piece: no relay thread
    decodes on in the background."""
    from archcheck.layers.stream import StreamCheck, StreamStopped

    size = 48 * MiB
    path = tmp_path / "many.gz"
    with open(path, "wb") as out:
        subprocess.run(["split", "-b", "4M", "--filter", "gzip -1", "-"], input=random.Random(9).randbytes(size),
                       stdout=out, check=True)
    reader = LocalReader(str(path))
    stop = threading.Event()
    check = StreamCheck(reader, "x", codec="gzip", check_tar=False, threads=2, stop=stop,
                        on_progress=lambda offset: offset >= 4 * MiB and stop.set())
    with pytest.raises(StreamStopped):
        check.run()
    assert 4 * MiB <= check.uoff < size // 2
    assert not [t for t in threading.enumerate() if t.name.startswith(("archcheck-lane", "archcheck-relay"))]


def test_a_read_that_fails_ahead_is_said_by_the_front_and_no_thread_dies_loudly(many_members, monkeypatch):
    """The scout reads ahead: a read there that fails (the object changed under the run) ends
    its scouting quietly, and the front, reading the same bytes, hands the failure on."""
    from archcheck.errors import SourceChanged

    path, starts = many_members
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)

    class ChangedAfter(LocalReader):
        def pread(self, offset, length):
            if offset + length > starts[6]:
                raise SourceChanged("replaced")
            return super().pread(offset, length)

    _, end, _, _ = _decode(ChangedAfter(str(path)))
    assert end.failure is not None and end.failure.changed and not died

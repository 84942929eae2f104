"""GNU sparse maps, on archives made by the real tar (old GNU and pax 0.0, 0.1, 1.0): intact
ones stay intact, and a map damaged at known bytes is reported with its code, member and the
byte range of the header or map. Where GNU tar refuses the damage too, that is asserted."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from archcheck import verify

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")

REAL = 10 * 1024 * 1024
TWO = {5_000_000: b"hello", 8_000_000: b"world"}  # two data regions: the map fits in the header
MANY = {i * 65536 + 100: b"x" for i in range(30)}  # 30 regions: old GNU needs extension blocks


def _sparse_file(path: Path, writes: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(REAL)
        for at, data in writes.items():
            f.seek(at)
            f.write(data)
    return path


def _tar(tmp: Path, name: str, writes: dict, *options: str) -> Path:
    src = tmp / f"src-{name}"
    src.mkdir()
    _sparse_file(src / "sp", writes)
    out = tmp / f"{name}.tar"
    subprocess.run(["tar", *options, "-S", "-C", src, "-cf", out, "sp"], check=True)
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sparse")
    out = {"gnu": _tar(tmp, "gnu", TWO, "--format=gnu"), "gnu-many": _tar(tmp, "gnu-many", MANY, "--format=gnu")}
    for version in ("0.0", "0.1", "1.0"):
        out[f"pax-{version}"] = _tar(tmp, f"pax-{version}", TWO, "--format=pax", f"--sparse-version={version}")
    return out


def _gnu_tar_refuses(path: Path, tmp: Path) -> bool:
    into = tmp / "extract"
    into.mkdir()
    return subprocess.run(["tar", "-xf", path, "-C", into], capture_output=True).returncode != 0


def _with_checksum(data: bytearray, at: int = 0) -> bytearray:
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\0 " % sum(data[at:at + 512])
    return data


def _octal(n: int) -> bytes:
    return b"%011o\0" % n


def _entry(i: int) -> int:
    """Where entry i of an old GNU map lies: four in the header, then 21 per extension block."""
    return 386 + 24 * i if i < 4 else 512 * (1 + (i - 4) // 21) + 24 * ((i - 4) % 21)


def _gnu(edits: list[tuple[int, bytes]]):
    def damage(data: bytearray) -> bytearray:
        for at, value in edits:
            data[at:at + len(value)] = value
        return _with_checksum(data)  # the header's own checksum holds: only the map lies
    return damage


def _pax(old: bytes, new: bytes):
    def damage(data: bytearray) -> bytearray:
        at = data.index(old)
        data[at:at + len(old)] = new
        return data  # no checksum covers an extended header's body or a 1.0 map
    return damage


def _map_1_0(text: bytes):
    def damage(data: bytearray) -> bytearray:
        data[1536:2048] = text.ljust(512, b"\0")
        return data
    return damage


def _entries_many(data: bytes) -> list[tuple[int, int]]:
    return [(int(data[_entry(i):_entry(i) + 11], 8), int(data[_entry(i) + 12:_entry(i) + 23], 8)) for i in range(31)]


# (archive, damage, code, byte range, a piece of the detail, GNU tar refuses it too)
CASES = {
    "gnu-offset-huge": ("gnu", _gnu([(386, b"77777777777\0")]), "TAR_BAD_SPARSE_MAP", (0, 512),
                        "entry 0 (4096 bytes at 8589934591) reaches past the real size 10485760", True),
    "gnu-offset-not-octal": ("gnu", _gnu([(386, b"zzzzzzzzzzz\0")]), "TAR_BAD_NUMBER", (0, 512),
                             "'field': 'sparse offset 0'", True),
    "gnu-numbytes-negative": ("gnu", _gnu([(398, b"\xff" * 12)]), "TAR_BAD_NUMBER", (0, 512),
                              "'field': 'sparse numbytes 0'", True),
    "gnu-realsize-not-octal": ("gnu", _gnu([(483, b"zzzzzzzzzzz\0")]), "TAR_BAD_NUMBER", (0, 512),
                               "'field': 'realsize'", True),
    "gnu-past-real-size": ("gnu", _gnu([(434, _octal(REAL - 10)), (446, _octal(20))]), "TAR_BAD_SPARSE_MAP",
                           (0, 512), "entry 2 (20 bytes at 10485750) reaches past the real size", True),
    "gnu-unsorted": ("gnu", _gnu([(386, _octal(7999488)), (410, _octal(4997120))]), "TAR_BAD_SPARSE_MAP",
                     (0, 512), "entry 1 starts at 4997120, before the end of the entry before it (8003584)", False),
    "gnu-overlap": ("gnu", _gnu([(410, _octal(4997220))]), "TAR_BAD_SPARSE_MAP", (0, 512),
                    "out of order or overlapping", False),
    "gnu-sum-more": ("gnu", _gnu([(398, _octal(8192))]), "TAR_BAD_SPARSE_MAP", (0, 512),
                     "the entries need 12288 bytes of data, more than the 8192", True),
    "gnu-sum-less": ("gnu", _gnu([(398, _octal(2048))]), "TAR_BAD_SPARSE_MAP", (0, 512),
                     "the entries hold 6144 bytes of data, the member stores 8192", False),
    # entry 5 lies in the first extension block, which no checksum guards
    "gnu-extension-unsorted": ("gnu-many", _gnu([(_entry(5), _octal(4 * 65536))]), "TAR_BAD_SPARSE_MAP",
                               (512, 1024), "entry 5 starts at 262144", False),
    "pax-0.0-not-a-number": ("pax-0.0", _pax(b"offset=4997120", b"offset=49971zz"), "TAR_PAX_MALFORMED", (0, 1024),
                             "GNU.sparse.offset is not a number: '49971zz'", True),
    "pax-0.0-overlap": ("pax-0.0", _pax(b"offset=7999488", b"offset=4997130"), "TAR_BAD_SPARSE_MAP", (0, 1024),
                        "entry 1 starts at 4997130", False),
    "pax-0.0-sum": ("pax-0.0", _pax(b"numbytes=4096", b"numbytes=2048"), "TAR_BAD_SPARSE_MAP", (0, 1024),
                    "the entries hold 6144 bytes of data, the member stores 8192", False),
    "pax-0.0-count": ("pax-0.0", _pax(b"numblocks=3", b"numblocks=2"), "TAR_BAD_SPARSE_MAP", (0, 1024),
                      "GNU.sparse.numblocks says 2, the map holds 3 entries", True),
    "pax-0.1-not-a-number": ("pax-0.1", _pax(b"map=4997120,", b"map=49971zz,"), "TAR_PAX_MALFORMED", (0, 1024),
                             "GNU.sparse.map value is not a number", True),
    "pax-0.1-unsorted": ("pax-0.1", _pax(b"map=4997120,4096,7999488", b"map=7999488,4096,4997120"),
                         "TAR_BAD_SPARSE_MAP", (0, 1024), "out of order or overlapping", False),
    "pax-0.1-past-real-size": ("pax-0.1", _pax(b",10485760,0\n", b",10485760,9\n"), "TAR_BAD_SPARSE_MAP", (0, 1024),
                               "entry 2 (9 bytes at 10485760) reaches past the real size 10485760", False),
    "pax-1.0-not-a-number": ("pax-1.0", _map_1_0(b"3\n49971zz\n4096\n7999488\n4096\n10485760\n0\n"),
                             "TAR_BAD_SPARSE_MAP", (1536, 1544), "byte 7 of the map is 0x7a", True),
    "pax-1.0-count-overflow": ("pax-1.0", _map_1_0(b"99999999999999999999999\n4997120\n4096\n"),
                               "TAR_BAD_SPARSE_MAP", (1536, 1555), "the number at byte 0 of the map is over 2^63-1", True),
    "pax-1.0-count-huge": ("pax-1.0", _map_1_0(b"9999999999\n4997120\n4096\n"), "TAR_BAD_SPARSE_MAP", (1536, 1547),
                           "the map says 9999999999 entries, more than the member's 8704 bytes can hold", True),
    "pax-1.0-needs-more-than-stored": ("pax-1.0", _map_1_0(b"3\n4997120\n8192\n7999488\n4096\n10485760\n0\n"),
                                       "TAR_BAD_SPARSE_MAP", (1536, 1564), "the entries need 12288 bytes", False),
    "pax-1.0-past-real-size": ("pax-1.0", _map_1_0(b"3\n4997120\n4096\n10485000\n4096\n10485760\n0\n"),
                               "TAR_BAD_SPARSE_MAP", (1536, 1565), "entry 1 (4096 bytes at 10485000) reaches past", False),
    "pax-1.0-unsorted": ("pax-1.0", _map_1_0(b"3\n7999488\n4096\n4997120\n4096\n10485760\n0\n"), "TAR_BAD_SPARSE_MAP",
                         (1536, 1564), "out of order or overlapping", False),
}


@pytest.mark.parametrize("kind", ["gnu", "gnu-many", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_sparse_archives_made_by_tar_are_intact(made, tmp_path, kind):
    result = verify(made[kind], state=tmp_path / "state")
    assert (result.verdict, result.exit_code, [f.code for f in result.findings]) == ("intact", 0, [])
    [member] = result.members()
    assert (member["name"], member["sparse_size"]) == ("sp", REAL)


def test_the_many_region_archive_has_extension_blocks(made):
    data = made["gnu-many"].read_bytes()
    assert data[482] == 1 and _entries_many(data)[5][0] == 5 * 65536  # what the damage below assumes


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_map_is_reported_where_it_lies(made, tmp_path, case):
    kind, damage, code, byte_range, detail, gnu_refuses = CASES[case]
    broken = tmp_path / "broken.tar"
    original = bytearray(made[kind].read_bytes())
    damaged = damage(bytearray(original))
    assert damaged != original and len(damaged) == len(original)
    broken.write_bytes(damaged)
    result = verify(broken, state=tmp_path / "state")
    assert (result.exit_code, [f.code for f in result.findings]) == (1, [code])
    [finding] = result.findings
    assert (finding.location.member, finding.location.byte_range) == ("sp", byte_range)
    assert detail in str(dict(finding.details))
    assert [m["name"] for m in result.members()] == ["sp"]  # the walk went on to the end marker
    if gnu_refuses:
        assert _gnu_tar_refuses(broken, tmp_path)

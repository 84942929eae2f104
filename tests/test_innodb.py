"""InnoDB tablespaces (the core's scan/innodb.rs) against real files from MariaDB
(fixtures/innodb/make_innodb.sh: full_crc32 and crc32 formats, a ROW_FORMAT=COMPRESSED and a
PAGE_COMPRESSED table, and a crc32 ibdata1), damaged at known places."""
from __future__ import annotations

import gzip
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from scanning import scan_pieces

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "innodb"
NAMES = sorted(str(p.relative_to(FIXTURES))[:-3] for p in FIXTURES.glob("*/*.gz"))
IBD = [n for n in NAMES if n.endswith(".ibd")]
PS = 16384
_cache: dict[str, bytes] = {}


def load(name: str) -> bytes:
    if name not in _cache:
        _cache[name] = gzip.decompress((FIXTURES / f"{name}.gz").read_bytes())
    return _cache[name]


def scan(data: bytes, piece: int | None = None, name: str = "t.ibd", complete: bool = True):
    return scan_pieces("innodb", name, data, [piece or max(len(data), 1)], complete=complete)


def fold(data: bytes) -> int:
    """ut_fold_binary, low 32 bits: written here from InnoDB's ut0rnd, to make legacy pages."""
    f = 0
    for b in data:
        f = (((((f ^ b ^ 1653893711) << 8) & 0xFFFFFFFF) + f) ^ 1463735687) + b & 0xFFFFFFFF
    return f


def summary(found) -> set[tuple[str, int]]:
    return {(f.code, f.where["page"]) for f in found}


def damaged(name: str, *changes: tuple[int, int]) -> bytes:
    """XOR the byte at each offset with the given mask."""
    data = bytearray(load(name))
    for at, mask in changes:
        data[at] ^= mask
    return bytes(data)


def test_fixtures_are_there():
    assert {"full_crc32/orders.ibd", "crc32/orders.ibd", "crc32/zipped.ibd", "full_crc32/packed.ibd",
            "crc32/ibdata1"} <= set(NAMES)
    assert scan(load("full_crc32/orders.ibd")).full_crc32
    assert not scan(load("crc32/orders.ibd")).full_crc32
    zipped = scan(load("crc32/zipped.ibd"))
    assert (zipped.page_size, zipped.logical) == (8192, 16384)


@pytest.mark.parametrize("name", NAMES)
def test_clean_fixtures_give_no_findings(name):
    data = load(name)
    scanner = scan(data)
    assert scanner.found == []
    assert scanner.pages * scanner.page_size == len(data)


@pytest.mark.parametrize("piece", [1, 777, 65536])
@pytest.mark.parametrize("name", NAMES)
def test_piece_sizes_do_not_matter(name, piece):
    if piece == 1 and len(load(name)) > 1 << 20:
        piece = 3  # the 10 MB ibdata1 one byte at a time is slow for nothing
    data = damaged(name, (3 * PS // 2 + 100, 0x40), (len(load(name)) - 1, 1))
    assert scan(data, piece).found == scan(data).found
    assert scan(load(name), piece).found == []


@pytest.mark.parametrize("fmt", ["crc32", "full_crc32"])
def test_damaged_body_byte(fmt):
    scanner = scan(damaged(f"{fmt}/orders.ibd", (3 * PS + 1000, 0x10)))
    assert summary(scanner.found) == {("INNODB_PAGE_CHECKSUM", 3)}
    (f,) = scanner.found
    assert (f.offset, f.length) == (3 * PS, PS)
    assert f.where == {"space": scanner.space, "page": 3} and f.details["page"] == 3
    assert "stored" in f.details and f.details["algorithm"]


@pytest.mark.parametrize("fmt", ["crc32", "full_crc32"])
def test_damaged_page_number(fmt):
    data = bytearray(load(f"{fmt}/orders.ibd"))
    data[3 * PS + 4:3 * PS + 8] = struct.pack(">I", 99)
    scanner = scan(bytes(data))
    # the page number is under every checksum, so the checksum fails as well
    assert summary(scanner.found) == {("INNODB_PAGE_NUMBER", 3), ("INNODB_PAGE_CHECKSUM", 3)}
    (number,) = [f for f in scanner.found if f.code == "INNODB_PAGE_NUMBER"]
    assert number.details == {"page": 3, "stored": 99}


def test_damaged_trailer_lsn_crc32():
    # the last 4 bytes are outside the crc32 checksum: only the LSN comparison sees this
    scanner = scan(damaged("crc32/orders.ibd", (4 * PS - 1, 0x01)))
    assert summary(scanner.found) == {("INNODB_LSN_MISMATCH", 3)}
    assert scanner.found[0].details["page"] == 3


def test_damaged_trailer_lsn_full_crc32():
    # full_crc32 keeps the LSN at ps-8, inside the checksum
    scanner = scan(damaged("full_crc32/orders.ibd", (4 * PS - 5, 0x01)))
    assert summary(scanner.found) == {("INNODB_LSN_MISMATCH", 3), ("INNODB_PAGE_CHECKSUM", 3)}


def test_damaged_space_id():
    data = bytearray(load("crc32/customers.ibd"))
    data[2 * PS + 34:2 * PS + 38] = struct.pack(">I", 4242)
    found = scan(bytes(data)).found
    assert {"stored_space": 4242}.items() <= [f for f in found if f.code == "INNODB_PAGE_NUMBER"][0].details.items()
    assert summary(found) == {("INNODB_PAGE_NUMBER", 2)}  # bytes 26..38 are outside the crc32 checksum


def test_compressed_tablespaces_are_checked():
    scanner = scan(damaged("crc32/zipped.ibd", (3 * 8192 + 500, 0x02)))
    assert summary(scanner.found) == {("INNODB_PAGE_CHECKSUM", 3)}
    assert scanner.found[0].offset == 3 * 8192
    packed = load("full_crc32/packed.ibd")
    assert struct.unpack_from(">H", packed, 3 * PS + 24)[0] & 0x8000  # really page_compressed
    assert summary(scan(damaged("full_crc32/packed.ibd", (3 * PS + 60, 0x02))).found) == {
        ("INNODB_PAGE_CHECKSUM", 3)}


@pytest.mark.parametrize("name", ["crc32/customers.ibd", "full_crc32/customers.ibd", "crc32/zipped.ibd"])
def test_all_zero_page_is_fine(name):
    data = bytearray(load(name))
    ps = scan(bytes(data)).page_size
    data[3 * ps:4 * ps] = bytes(ps)
    assert scan(bytes(data)).found == []


@pytest.mark.parametrize("fmt", ["crc32", "full_crc32"])
def test_truncated_file(fmt):
    data = load(f"{fmt}/orders.ibd")[:-100]
    scanner = scan(data)
    assert summary(scanner.found) == {("INNODB_PARTIAL_PAGE", len(data) // PS)}
    (f,) = scanner.found
    assert (f.offset, f.length, f.details) == (len(data) // PS * PS, PS - 100, {"length": PS - 100})
    assert scan(data, complete=False).found == []  # the walker reports a cut member itself


def legacy(page: bytearray) -> None:
    """Rewrite a crc32-format page with the legacy innodb checksums."""
    ps = len(page)
    new = (fold(page[4:26]) + fold(page[38:ps - 8])) & 0xFFFFFFFF
    page[0:4] = struct.pack(">I", new)
    page[ps - 8:ps - 4] = struct.pack(">I", fold(page[0:26]))


def test_legacy_and_none_checksums_are_accepted():
    data = bytearray(load("crc32/orders.ibd"))
    page = data[3 * PS:4 * PS]
    legacy(page)
    data[3 * PS:4 * PS] = page
    data[4 * PS:4 * PS + 4] = data[5 * PS - 8:5 * PS - 4] = struct.pack(">I", 0xDEADBEEF)
    assert scan(bytes(data)).found == []
    data[3 * PS + 2000] ^= 1
    data[4 * PS + 2000] ^= 1  # none accepts any content
    found = scan(bytes(data)).found
    assert summary(found) == {("INNODB_PAGE_CHECKSUM", 3)}
    assert found[0].details["algorithm"] == ["crc32", "innodb", "none"]


def test_bad_fsp_flags():
    data = bytearray(load("crc32/customers.ibd"))
    data[54:58] = struct.pack(">I", 15 << 6)  # page size code 15
    found = scan(bytes(data)).found
    assert [f.code for f in found] == ["INNODB_HEADER"]
    assert "page size" in found[0].details["problem"]
    data = bytearray(load("crc32/customers.ibd"))
    data[38:42] = struct.pack(">I", 77)  # FSP_SPACE_ID
    assert {f.code for f in scan(bytes(data)).found} == {"INNODB_HEADER", "INNODB_PAGE_CHECKSUM"}


def test_tiny_and_empty_files():
    assert [f.code for f in scan(b"").found] == ["INNODB_HEADER"]
    assert [(f.code, f.length) for f in scan(load("crc32/customers.ibd")[:40]).found] == [("INNODB_PARTIAL_PAGE", 40)]


def test_second_data_file_of_the_system_tablespace():
    """ibdata2 and further files start at a page number other than 0 and have no FSP header."""
    data = load("crc32/ibdata1")[192 * PS:]
    scanner = scan(data, 777, name="ibdata2")
    assert (scanner.base, scanner.page_size, scanner.found) == (192, PS, [])
    broken = bytearray(data)
    broken[5 * PS + 3000] ^= 4
    assert summary(scan(bytes(broken), name="ibdata2").found) == {("INNODB_PAGE_CHECKSUM", 197)}


def test_doublewrite_buffer_pages_are_skipped():
    scanner = scan(load("crc32/ibdata1"))
    assert scanner.doublewrite == [[64, 128], [128, 192]]


# --- parity with MariaDB's innochecksum -------------------------------------------------------

INNOCHECKSUM = shutil.which("innochecksum")


def innochecksum_failures(path: Path, tmp_path: Path) -> set[int]:
    """The pages innochecksum (MariaDB 10.11) calls invalid, from its log: "Fail: page::N
    invalid" (on stderr), "Fail; space::S page::N invalid (fails log sequence number check)"."""
    log = tmp_path / f"innochecksum{len(list(tmp_path.glob('*.log')))}.log"  # it keeps an old log
    run = subprocess.run([INNOCHECKSUM, "-a", "1000", "-l", str(log), str(path)], capture_output=True, text=True,
                         timeout=60)
    text = log.read_text() + run.stdout + run.stderr
    return {int(m) for m in re.findall(r"Fail[:;] (?:space::\d+ )?page::(\d+) invalid|page id mismatch space::\d+ page::(\d+)", text)
            for m in m if m}


@pytest.mark.skipif(INNOCHECKSUM is None, reason="innochecksum (mariadb-server) is not installed")
@pytest.mark.parametrize("name", IBD)
def test_parity_with_innochecksum(name, tmp_path):
    data = bytearray(load(name))
    ps = scan(bytes(data)).page_size
    path = tmp_path / Path(name).name
    path.write_bytes(data)
    assert innochecksum_failures(path, tmp_path) == set()
    data[1 * ps + 4] ^= 0x01  # page 1: page number
    data[2 * ps + ps // 2] ^= 0x80  # page 2: body
    data[4 * ps - 1] ^= 0x01  # page 3, last byte: trailer LSN or full_crc32 checksum
    # (not an all-zero page: a byte set in one is no finding for innochecksum, whose legacy
    # rule accepts checksum fields 0 with LSN 0, while the scanner sees page number 0 there)
    path.write_bytes(data)
    expected = innochecksum_failures(path, tmp_path)
    assert expected  # the tool did see the damage
    assert {f.where["page"] for f in scan(bytes(data)).found} == expected

"""Tar and zstd conformance (issue 15): archcheck agrees with the format owners' decoders (GNU
tar, bsdtar, Go's archive/tar, zstd) on the files their own tests use. Each case is built here,
byte for byte, by the oracle corpus's fixture code; the property test at the end compares the
member list with Python's tarfile on archives written by GNU tar."""
from __future__ import annotations

import importlib.util
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from archcheck.api import verify

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "fixtures" / "oracle" / "make_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

END = bytes(1024)
OK = corpus.member("a.txt", b"hello\n")


def _verify(tmp_path: Path, name: str, data: bytes, compress: bool = False):
    path = tmp_path / name
    if compress:
        data = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    path.write_bytes(data)
    return verify(path, state=tmp_path / "state")


def _the(result, code: str):
    [finding] = [f for f in result.findings if f.code == code]
    return finding


def _failing(result) -> list[str]:
    return [f.code for f in result.findings if f.category.value == "corruption"]


# --- 1. a short payload of a lone .zst that is no tar --------------------------------------------

@pytest.mark.parametrize("payload", [b"hello zstd\n", bytes(range(256)) * 2 + b"\x01" * 10, b"x"])
def test_a_short_payload_that_is_not_tar_is_zstd_content(tmp_path, payload):
    result = _verify(tmp_path, "short.zst", payload, compress=True)
    assert (result.verdict, result.exit_code, _failing(result)) == ("intact", 0, [])
    finding = _the(result, "TAR_NOT_TAR")
    assert finding.severity.value == "info" and result.manifest.format == "zstd"


def test_a_short_payload_that_starts_like_a_tar_header_is_a_truncated_tar(tmp_path):
    result = _verify(tmp_path, "cut.tar.zst", OK[:300], compress=True)
    assert (_failing(result), result.exit_code) == (["TAR_TRUNCATED"], 1)
    assert dict(_the(result, "TAR_TRUNCATED").details) == {"what": "a header", "missing": 212}


# --- 2. base-256 numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("field,shown", [(b"\x97" + bytes(11), "970000000000000000000000"),
                                         (b"\xff" * 12, "ffffffffffffffffffffffff"),
                                         (b"\x80" + b"\x7f" * 11, "807f7f7f7f7f7f7f7f7f7f7f")])
def test_a_size_that_is_not_a_gnu_number_is_a_bad_number_at_its_header(tmp_path, field, shown):
    result = _verify(tmp_path, "b256.tar", corpus._with_size(field) + OK + END)
    finding = _the(result, "TAR_BAD_NUMBER")
    assert dict(finding.details) == {"field": "size", "value": shown}
    assert finding.location.byte_range == (0, 512) and finding.severity.value == "error"
    assert [m["name"] for m in result.members()] == ["a.txt"] and result.exit_code == 1


# --- 3. NUL in pax records -------------------------------------------------------------------------

def test_a_nul_in_a_pax_key_is_malformed(tmp_path):
    result = _verify(tmp_path, "nulkey.tar", corpus.pax_member({b"pa\x00th": b"x"}) + OK + END)
    finding = _the(result, "TAR_PAX_MALFORMED")
    assert dict(finding.details) == {"detail": "record at byte 0 has a NUL in its key"}
    assert finding.location.byte_range == (0, 1024) and result.exit_code == 1


def test_a_nul_in_a_pax_path_is_a_warning_naming_what_a_restore_creates(tmp_path):
    result = _verify(tmp_path, "nulpath.tar", corpus.pax_member({b"path": b"evil\x00tail"}) + OK + END)
    finding = _the(result, "TAR_UNSAFE_PATH")
    assert finding.severity.value == "warning" and finding.category.value == "warning"
    assert dict(finding.details)["restore"] == "GNU tar cuts the name at the NUL and restores 'evil'"
    assert (result.verdict, result.exit_code) == ("intact", 0)


# --- 4. orphan extension headers of size 0 ---------------------------------------------------------

@pytest.mark.parametrize("flag,kind", [(b"L", "GNU long-name"), (b"K", "GNU long-link"), (b"x", "pax")])
def test_an_orphan_extension_header_of_size_zero_is_reported(tmp_path, flag, kind):
    result = _verify(tmp_path, "orphan.tar", OK + bytes(corpus.header("././@LongLink", 0, flag)) + END)
    finding = _the(result, "TAR_ORPHAN_EXTENSION")
    assert dict(finding.details) == {"kind": kind} and finding.location.byte_range == (1024, 1536)
    assert result.exit_code == 1


# --- 5. a stray byte in the end marker -------------------------------------------------------------

def test_a_stray_byte_in_the_end_marker_is_one_warning_and_every_member_is_whole(tmp_path):
    data = OK + bytes(512) + bytes(511) + b"\x01" + bytes(512)
    result = _verify(tmp_path, "stray.tar", data)
    assert [f.code for f in result.findings if f.layer == "tar"] == ["TAR_END_MARKER_DAMAGED"]
    finding = _the(result, "TAR_END_MARKER_DAMAGED")
    assert finding.severity.value == "warning" and finding.location.byte_range == (1536, 2048)
    assert dict(finding.details) == {"nonzero": 1}
    assert (result.verdict, result.exit_code) == ("intact", 0)
    assert [m["name"] for m in result.members()] == ["a.txt"]


# --- 6. the missing end marker: an error, as its exit code says -------------------------------------

def test_a_missing_end_marker_is_an_error_and_fails_the_run(tmp_path):
    result = _verify(tmp_path, "noend.tar", OK + OK)
    finding = _the(result, "TAR_MISSING_END")
    assert (finding.severity.value, finding.category.value, result.exit_code) == ("error", "corruption", 1)
    assert finding.location.byte_range == (2048, 2048)


# --- 7. smaller ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [b"mtime", b"atime", b"ctime"])
def test_a_pax_time_that_is_not_a_number_is_malformed(tmp_path, key):
    result = _verify(tmp_path, "mtime.tar", corpus.pax_member({key: b"999xxx9324.43"}) + OK + END)
    finding = _the(result, "TAR_PAX_MALFORMED")
    assert dict(finding.details) == {"detail": f"{key.decode()} is not a number: '999xxx9324.43'"}


def test_a_bad_time_in_a_global_pax_header_is_reported_once_at_that_header(tmp_path):
    body = b"22 mtime=999xxx9324.43\n"
    global_header = corpus.member("pax_global_header", body, b"g")
    result = _verify(tmp_path, "global.tar", global_header + OK + OK + END)
    finding = _the(result, "TAR_PAX_MALFORMED")
    assert finding.location.byte_range == (0, 1024) and [m["name"] for m in result.members()] == ["a.txt", "a.txt"]


def test_pax_times_with_fractions_and_signs_are_numbers(tmp_path):
    records = {b"mtime": b"1700000000.123456789", b"atime": b"-12.5", b"ctime": b""}  # empty: unset
    result = _verify(tmp_path, "times.tar", corpus.pax_member(records) + OK + END)
    assert (result.verdict, _failing(result)) == ("intact", [])


def test_a_frame_that_needs_a_dictionary_is_zstd_not_tar(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for i in range(40):
        (train / f"s{i}").write_bytes(b"sample %d of text the dictionary learns from\n" % i * 20)
    dictionary = tmp_path / "dict"
    subprocess.run(["zstd", "-q", "--train", *map(str, train.iterdir()), "-o", dictionary], check=True)
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "-C", train, "-cf", tar, "."], check=True)
    archive = tmp_path / "t.tar.zst"
    subprocess.run(["zstd", "-q", "-D", dictionary, tar, "-o", archive], check=True)
    result = verify(archive, state=tmp_path / "state")
    assert result.manifest.format == "zstd" and _the(result, "ZSTD_DICTIONARY_REQUIRED")


# --- the property: GNU tar's archives, as tarfile reads them -------------------------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=40).filter(
    lambda name: name.strip(".") and name != "hardlink")
MEMBERS = st.lists(st.tuples(NAMES, st.integers(0, 3), st.integers(0, 5000), st.booleans()),
                   min_size=1, max_size=6, unique_by=lambda m: m[0])


def _tree(root: Path, members) -> list[str]:
    """Files (some under a long directory path, some sparse) and a hard link to the first."""
    names = []
    for name, depth, size, sparse in members:
        folder = root.joinpath(*[f"d{depth}-{'x' * 60}"] * depth) if depth else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        with open(path, "wb") as f:
            if sparse:
                f.seek(1 << 20)
            f.write(bytes([len(name)]) * size)
        names.append(str(path.relative_to(root)))
    (root / "hardlink").hardlink_to(root / names[0])
    return names


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=MEMBERS, fmt=st.sampled_from(["ustar", "gnu", "posix"]), field=st.sampled_from(
    [(0, 100), (100, 8), (124, 12), (136, 12), (148, 8), (156, 1), (257, 6)]), noise=st.binary(min_size=12,
                                                                                               max_size=12))
def test_gnu_tar_archives_read_as_tarfile_reads_them(tmp_path_factory, members, fmt, field, noise):
    work = tmp_path_factory.mktemp("prop")
    root = work / "root"
    root.mkdir()
    _tree(root, members)
    tar = work / "a.tar"
    sparse = [] if fmt == "ustar" else ["--sparse"]  # ustar has no sparse members
    made = subprocess.run(["tar", f"--format={fmt}", *sparse, "-C", root, "-cf", tar, "."], capture_output=True)
    if made.returncode != 0:  # ustar cannot hold some long names: GNU tar says so, and we skip
        assert fmt == "ustar" and b"too long" in made.stderr, made.stderr
        return
    with tarfile.open(tar) as t:  # tarfile drops a directory's trailing slash
        expected = [(m.name.rstrip("/"), m.size if not m.issparse() else None) for m in t]
        headers = [m.offset for m in t]
    result = verify(tar, state=work / "s1")
    got = [(m["name"].rstrip("/") or ".", m.get("size") if not m.get("sparse_size") else None)
           for m in result.members()]
    assert [name for name, _ in got] == [name for name, _ in expected] and result.exit_code == 0
    assert [s for _, s in got] == [s for _, s in expected]
    # one header field overwritten with noise: findings, no traceback, one at that header
    at = headers[len(headers) // 2]
    start, length = field
    data = bytearray(tar.read_bytes())
    data[at + start:at + start + length] = noise[:length]
    if bytes(data) == tar.read_bytes():
        return
    broken = work / "b.tar"
    broken.write_bytes(bytes(data))
    result = verify(broken, state=work / "s2")
    assert result.exit_code in (0, 1)
    places = [f.location.byte_range for f in result.findings if f.layer == "tar" and f.location.byte_range]
    if result.exit_code == 1:
        assert any(s <= at < e or s == at for s, e in places), (places, at)

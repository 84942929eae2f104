"""A local archive is read in place: the raw layer's leaves and a plain tar's walk take the
file's pages, mapped, instead of a copy out of the page cache into Python bytes (the copy cost
as much as the BLAKE3 hash: 35% of the samples each in `perf record` of `--layers raw`). The
core reads any buffer, with the GIL released."""
from __future__ import annotations

import json
import mmap
import os
import subprocess

import blake3
import pytest
import xxhash

from archcheck import _native
from archcheck.layers import LEAF_SIZE, raw
from archcheck.layers.stream import StreamCheck
from archcheck.sources.local import LocalReader

MiB = 1024 * 1024


def _no_copies(reader: LocalReader) -> LocalReader:
    def pread(offset: int, length: int) -> bytes:
        raise AssertionError(f"copied {length} bytes at {offset} out of the page cache")
    reader.pread = pread
    return reader


def test_raw_leaves_are_hashed_from_the_files_pages(tmp_path):
    data = os.urandom(2 * LEAF_SIZE + 12345)
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    with _no_copies(LocalReader(str(path))) as reader:
        leaves = raw.leaf_digests(reader, 0, len(data))
        assert raw.leaf_digests(reader, LEAF_SIZE, LEAF_SIZE) == leaves[1:2]
        with pytest.raises(OSError, match="read 12345 of 8388608 bytes"):
            raw.leaf_digests(reader, 2 * LEAF_SIZE, LEAF_SIZE)  # past the end: a short read
    assert leaves == [blake3.blake3(data[i:i + LEAF_SIZE]).hexdigest() for i in range(0, len(data), LEAF_SIZE)]


def test_a_plain_tar_is_walked_from_the_files_pages(tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    contents = {f"t/f{i}": os.urandom(3 * MiB + i) for i in range(3)}
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
    subprocess.run(["tar", "-C", tmp_path, "--sort=name", "-cf", tmp_path / "a.tar", "t"], check=True)
    members: list = []
    with _no_copies(LocalReader(str(tmp_path / "a.tar"))) as reader:
        result = StreamCheck(reader, "a.tar", codec="tar", check_tar=True, chunk=MiB,
                             on_members=lambda line, count: members.extend(json.loads(line))).run()
    assert not result.findings and result.member_count == 4
    digests = {m[0]: m[7] for m in members if m[1] == "file"}
    assert digests == {name: xxhash.xxh3_128_hexdigest(content) for name, content in contents.items()}


def test_the_core_reads_any_buffer_and_refuses_what_is_not_one(tmp_path):
    data = os.urandom(3 * MiB)
    (tmp_path / "b.bin").write_bytes(data)
    with open(tmp_path / "b.bin", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        expected = _native.leaf_digests(data, MiB)
        assert _native.leaf_digests(view, MiB) == expected
        assert _native.leaf_digests(bytearray(data), MiB) == expected
        assert _native.leaf_digests(view[MiB:], MiB) == expected[1:]
        view.release()  # the core holds no view past its call: the map closes
    digest = _native.ContentDigest("xxh3-128")
    digest.update(memoryview(data)[:MiB])
    digest.update(bytearray(data[MiB:]))
    assert digest.hexdigest() == xxhash.xxh3_128_hexdigest(data)
    with pytest.raises(TypeError, match="bytes-like object is required, not 'int'"):
        _native.leaf_digests(5, MiB)
    with pytest.raises(TypeError):
        _native.leaf_digests("text", MiB)

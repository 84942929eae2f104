"""A local archive is read in place: the raw layer's leaves and a plain tar's walk take the
file's pages, mapped, instead of a copy out of the page cache into Python bytes (the copy cost
as much as the BLAKE3 hash: 35% of the samples each in `perf record` of `--layers raw`). The
core reads any buffer, with the GIL released."""
from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import textwrap

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


def test_the_core_reads_read_only_buffers_and_refuses_others(tmp_path):
    """A map, a slice of one, bytes; not a bytearray, which another thread could write while
    the core reads it with the GIL released; not what is no buffer."""
    data = os.urandom(3 * MiB)
    (tmp_path / "b.bin").write_bytes(data)
    expected = _native.leaf_digests(data, MiB)
    with open(tmp_path / "b.bin", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        assert _native.leaf_digests(view, MiB) == expected
        assert _native.leaf_digests(view[MiB:], MiB) == expected[1:]
        assert _native.resident(view, mmap.PAGESIZE)  # just written: in the page cache
        view.release()  # the core holds no view past its call: the map closes
    digest = _native.ContentDigest("xxh3-128")
    digest.update(memoryview(data)[:MiB])
    digest.update(data[MiB:])
    assert digest.hexdigest() == xxhash.xxh3_128_hexdigest(data)
    with pytest.raises(TypeError, match="a read-only buffer is required"):
        _native.leaf_digests(bytearray(data), MiB)
    with pytest.raises(TypeError, match="bytes-like object is required, not 'int'"):
        _native.leaf_digests(5, MiB)
    with pytest.raises(TypeError):
        _native.leaf_digests("text", MiB)


def test_a_range_not_all_in_memory_is_read_not_mapped(tmp_path, monkeypatch):
    """Touching a mapped page whose read failed (a bad sector) kills the process (SIGBUS); pread
    fails with EIO, which is retried and reported. mincore tells a page that is in memory, read
    whole, from one that is not (here: dropped from the page cache, not yet touched), and a
    range with any page not in memory is read with pread instead; the bytes are the same."""
    path = tmp_path / "c.bin"
    data = os.urandom(4 * LEAF_SIZE)  # far more than the kernel reads ahead of a touched page
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if not _in_memory_only(path):  # (tmpfs keeps every page: nothing to drop)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            assert not _native.resident(view, mmap.PAGESIZE)
            assert view[0] == data[0]  # read in by touching
            assert _native.resident(view[:mmap.PAGESIZE], mmap.PAGESIZE) and not _native.resident(view, mmap.PAGESIZE)
            view.release()
    with LocalReader(str(path)) as reader:
        assert type(reader.read_in_place(4097, 2 * MiB)) is memoryview  # its pages read in at once
        monkeypatch.setattr(_native, "resident", lambda view, page: False)  # as after a failed read
        piece = reader.read_in_place(4097, 2 * MiB)
        assert type(piece) is bytes and piece == data[4097:4097 + 2 * MiB]
        assert raw.leaf_digests(reader, 0, len(data)) == [
            blake3.blake3(data[i:i + LEAF_SIZE]).hexdigest() for i in range(0, len(data), LEAF_SIZE)]


def _in_memory_only(path) -> bool:
    mounts = [line.split() for line in open("/proc/mounts")]
    here = max((m for m in mounts if str(path).startswith(m[1].rstrip("/") + "/")), key=lambda m: len(m[1]))
    return here[2] in ("tmpfs", "ramfs")


FEW_FILES = textwrap.dedent("""
    import json, resource, sys
    from archcheck.layers.stream import StreamCheck
    from archcheck.sources.local import LocalReader
    StreamCheck(LocalReader(sys.argv[1]), "a.tar", codec="tar", check_tar=True).run()  # what it imports on use, first
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
    members = []
    result = StreamCheck(LocalReader(sys.argv[1]), "a.tar", codec="tar", check_tar=True, threads=8, depth=8,
                         chunk=256 * 1024, on_members=lambda line, count: members.extend(json.loads(line))).run()
    print(json.dumps([[f.code for f in result.findings], {m[0]: m[7] for m in members if m[1] == "file"}]))
""")


def test_a_map_that_cannot_be_made_is_read_instead(tmp_path):
    """CPython keeps a file descriptor per mapping: eight lanes eight pieces deep, in a process
    allowed 40 files, run out of them; the pieces past that are read (pread) instead, and the
    walk is whole."""
    tree = tmp_path / "t"
    tree.mkdir()
    contents = {f"t/f{i}": os.urandom(16 * MiB + i) for i in range(8)}  # eight 16 MiB pieces: a lane each
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
    subprocess.run(["tar", "-C", tmp_path, "--sort=name", "-cf", tmp_path / "a.tar", "t"], check=True)
    run = subprocess.run([sys.executable, "-c", FEW_FILES, tmp_path / "a.tar"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    findings, digests = json.loads(run.stdout)
    assert findings == [] and digests == {name: xxhash.xxh3_128_hexdigest(c) for name, c in contents.items()}


def _as_nobody(path: str) -> str:
    """What a LocalReader of ``path`` does in a child process running as user nobody."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no test machinery, out by _exit whatever happens
        try:
            os.setuid(65534)
            with LocalReader(path) as reader:
                os.write(write, f"{reader.mappable} {type(reader.read_in_place(0, 4096)).__name__}".encode())
        finally:
            os._exit(0)
    os.close(write)
    said = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return said


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to read as another user")
def test_a_file_whose_pages_mincore_does_not_tell_is_read_not_mapped():
    """Linux tells which pages are in memory only to a process that owns the file or could write
    it; to others mincore says every page is, and a failed page would kill the process. Such a
    reader (here: user nobody, a file of root's, 0644) reads; given write access, it maps."""
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="archcheck-told-")
    try:
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "d.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(MiB))
        os.chmod(path, 0o644)
        assert _as_nobody(path) == "False bytes"
        os.chmod(path, 0o666)
        assert _as_nobody(path) == "True memoryview"
    finally:
        shutil.rmtree(folder)


def test_a_stream_check_raises_its_soft_limit_of_open_files():
    """Wherever it runs (a pool's worker, a Dask worker), the stream check's process may hold a
    map per piece in flight: its soft limit of open files goes up to the hard one."""
    script = textwrap.dedent("""
        import resource
        from archcheck.worker import check_stream
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        check_stream(None, type("Task", (), {"address": "/nonexistent/archcheck.sock", "authkey": b""})())
        print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard) and hard > 64)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (run.returncode, run.stdout.strip()) == (0, "True"), run.stderr[-2000:]

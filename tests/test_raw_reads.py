"""The raw layer reads into memory it already has: hashing a file in 8 MiB pieces again and
again costs no new page faults once the first pieces are in. Each piece is freed before the
next is read; holding the last piece while reading the next made glibc give every piece fresh
pages (2048 faults each here), which made raw hashing 20-40% slower."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

READS = textwrap.dedent("""
    import os, resource, sys, tempfile
    from archcheck import _native
    from archcheck.layers import raw
    from archcheck.sources.local import LocalReader
    PIECE = 8 << 20

    def held(reader, offset, length):  # the yardstick: the last piece still held at each read
        data = b""
        for start in range(offset, offset + length, PIECE):
            data = reader.pread(start, PIECE)
            _native.leaf_digests(data, PIECE)

    hash_all = raw.leaf_digests if sys.argv[1] == "raw" else held
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(1 << 20) * 64)
        f.flush()
        reader = LocalReader(f.name)
        hash_all(reader, 0, 64 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            hash_all(reader, 0, 64 << 20)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
PAGES_PER_PIECE = 8 * 1024 * 1024 // 4096


def faults(how: str) -> int:
    # malloc as configured by default: Dask's LocalCluster (test_dask) leaves
    # MALLOC_TRIM_THRESHOLD_=65536 in this process's environment, which returns every freed page
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    run = subprocess.run([sys.executable, "-c", READS, how], capture_output=True, text=True, check=True, env=env)
    return int(run.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the yardstick is glibc's malloc")
def test_raw_hashing_reads_into_memory_it_already_has():
    pieces = 5 * 8  # read after the first pass
    assert faults("raw") < pieces * PAGES_PER_PIECE // 20
    assert faults("held") > pieces * PAGES_PER_PIECE // 8  # what holding the last piece costs

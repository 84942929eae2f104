"""A worker keeps its freed read buffers: reading a file in 8 MiB pieces again and again costs
no new page faults once the first pieces are in (glibc's default thresholds fault in 2048 new
pages for every piece here, which made raw hashing 40% slower)."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

READS = textwrap.dedent("""
    import os, resource, sys, tempfile
    from archcheck import worker
    from archcheck.layers import raw
    from archcheck.sources.local import LocalReader
    if sys.argv[1] == "worker":
        worker.init_worker()  # what every pool worker runs first
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(1 << 20) * 64)
        f.flush()
        reader = LocalReader(f.name)
        raw.leaf_digests(reader, 0, 64 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            raw.leaf_digests(reader, 0, 64 << 20)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
PAGES_PER_PIECE = 8 * 1024 * 1024 // 4096


def faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", READS, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt")
def test_a_worker_reads_into_buffers_it_already_has():
    reads = 5 * 8  # pieces read after the first pass
    assert faults("worker") < reads * PAGES_PER_PIECE // 20
    # the yardstick: the same reads in a process that was not tuned fault far more
    assert faults("plain") > reads * PAGES_PER_PIECE // 8

"""Random damage to valid archives: never a traceback or a hang, always a documented outcome."""
from __future__ import annotations

import subprocess
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from archcheck.errors import ArchcheckError
from archcheck.layers.detect import detect_format
from archcheck.layers.stream import StreamCheck
from conftest import cli
from oracle import mutate
from oracle_run import BytesReader

HANG_LIMIT = 30


@pytest.fixture(scope="module")
def small(fx, tmp_path_factory):
    """A small tar, its single-frame zstd and a multi-frame zstd made of concatenated frames."""
    out = tmp_path_factory.mktemp("small")
    subprocess.run(["tar", "-cf", out / "small.tar", "--format=gnu", "-C", fx / "tree", "etc", "deep",
                    "data/exactly-512", "data/empty-file", "link-to-config"], check=True)
    tar = (out / "small.tar").read_bytes()
    single = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout
    frames = b"".join(subprocess.run(["zstd", "-q", "-c", "--no-check" if i % 2 else "--check"],
                                     input=tar[i:i + 40_000], capture_output=True, check=True).stdout
                      for i in range(0, len(tar), 40_000))
    return {"tar": tar, "single": single, "multi": frames}


OPS = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "zero"]),
                         st.integers(0, 10**9), st.integers(0, 10**6)), min_size=1, max_size=4)


def check_in_thread(data: bytes):
    """Run the stream check as a worker would; fail on an exception or a hang."""
    outcome = {}

    def target():
        try:
            fmt = detect_format(data[:1024], "x")
        except ArchcheckError:
            outcome["result"] = "unsupported"
            return
        try:
            outcome["result"] = StreamCheck(BytesReader(data), "x", codec=fmt,
                                            check_tar=True, threads=2).run()
        except ArchcheckError as exc:  # e.g. a mutated window over the limit: exit 2, by design
            outcome["result"] = exc
        except BaseException as exc:  # noqa: BLE001 - the defect we are looking for
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_LIMIT)
    assert not thread.is_alive(), "stream check hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.mark.parametrize("kind", ["tar", "single", "multi"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_mutated_archives_give_findings_never_exceptions(small, kind, ops):
    result = check_in_thread(mutate(small[kind], ops))
    if hasattr(result, "findings"):
        for finding in result.findings:
            assert finding.message and finding.location.archive == "x"
            finding.to_json()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["tar", "single", "multi"]), ops=OPS)
def test_mutated_archives_through_the_cli(small, tmp_path_factory, kind, ops):
    path = tmp_path_factory.mktemp("mut") / "archive"
    path.write_bytes(mutate(small[kind], ops))
    run = cli("verify", path, "--no-progress", "--state-dir", path.parent / "state", timeout=120)
    assert run.returncode in (0, 1, 3, 5)  # 5: mutated into an empty or unrecognisable file
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    if run.returncode == 5:
        assert run.stderr.count("\n") == 1 and run.stdout == ""
    else:
        assert "verdict   " in run.stdout

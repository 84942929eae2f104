"""The Dask executor (executors.py) on a LocalCluster of two worker processes, on 127.0.0.1: the
report equals the local executor's, and a worker killed mid-run loses nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ARCHCHECK, cli, comparable, verify_reported

distributed = pytest.importorskip("distributed")  # in the test extra; the skip only guards a bare install

MiB = 1024 * 1024


def verify(*args, env=None, timeout=300):
    return verify_reported(*args, "--no-progress", env=env, timeout=timeout)


def test_dask_local_reports_what_the_local_executor_reports(fx, damaged, tmp_path):
    archives = [fx / "multi.tar.zst", fx / "gnu.tar",
                damaged("multi.tar.zst", at=(fx / "multi.tar.zst").stat().st_size // 3, xor=0x20)]
    local, local_report = verify(*archives, "--segment-size", "8M", "--state-dir", tmp_path / "local")
    dask, dask_report = verify(*archives, "--segment-size", "8M", "--state-dir", tmp_path / "dask",
                               "--executor", "dask-local:2")
    assert local.returncode == dask.returncode == 1, dask.stderr
    assert comparable(dask_report) == comparable(local_report)
    drill = json.loads((tmp_path / "dask" / "drills" / "drill-1" / "drill.json").read_text())
    assert drill["options"]["executor"] == "dask-local:2" and drill["options"]["workers"] == 2


@pytest.fixture
def cluster(monkeypatch):
    """Two worker processes behind a scheduler on 127.0.0.1; their reads are slowed (the
    failpoint) so that a run lasts long enough to kill a worker in it."""
    monkeypatch.setenv("ARCHCHECK_FAILPOINT", "slow-read")  # workers inherit the environment
    monkeypatch.setenv("ARCHCHECK_SLOW_READ_SECONDS", "0.15")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        yield cluster, client


def test_a_worker_killed_mid_run_loses_nothing(cluster, fx, tmp_path):
    local, local_report = verify(fx / "gnu.tar", "--segment-size", "8M", "--state-dir", tmp_path / "local")
    assert local.returncode == 0
    cluster, client = cluster
    pids = client.run(os.getpid)  # worker address -> pid
    log = tmp_path / "events.jsonl"
    state = tmp_path / "dask"
    run = subprocess.Popen([*ARCHCHECK, "verify", str(fx / "gnu.tar"), "--segment-size", "8M", "--state-dir",
                            str(state), "--executor", f"dask://{cluster.scheduler_address.removeprefix('tcp://')}",
                            "--log-file", str(log), "--no-progress", "--report", str(state / "report.json"),
                            "--report-members"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    streaming = None
    while streaming is None and time.monotonic() < deadline:  # the worker walking the stream
        streaming = next((worker for worker, keys in client.processing().items()
                          if any("check_stream" in str(key) for key in keys)), None)
        time.sleep(0.05)
    assert streaming is not None and run.poll() is None
    time.sleep(0.5)
    os.kill(pids[streaming], signal.SIGKILL)
    out, err = run.communicate(timeout=300)
    if run.returncode != 0:  # what was verified is kept: resume finishes it
        assert run.returncode in (3, 10), out + err
        again = cli("resume", "drill-1", "--state-dir", state, "--no-progress", "--report", state / "report.json",
                    "--report-members", timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads((state / "report.json").read_text())
    assert comparable(report) == comparable(local_report)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    # the kill landed in the stream pass: it went on from its checkpoint on the other worker
    streamed = [(e["event"], e.get("status")) for e in events if e["event"].startswith("stream.")]
    assert streamed[:2] == [("stream.started", "running"), ("stream.retry", "retry")]
    assert streamed[-1] == ("stream.finished", "done")
    done = [e["segment"] for e in events if e["event"] == "segment.verified"]
    assert sorted(set(done)) == list(range(len(set(done))))  # every segment verified, each counted


def test_an_unreachable_scheduler_is_one_line(fx, tmp_path):
    r = cli("verify", fx / "gnu.tar", "--executor", "dask://127.0.0.1:9", "--state-dir", tmp_path, timeout=120,
            env={"ARCHCHECK_DASK_CONNECT_TIMEOUT": "2"})
    assert r.returncode == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    bad = cli("verify", fx / "gnu.tar", "--executor", "dask://127.0.0.1:9", "--state-dir", tmp_path,
              env={"ARCHCHECK_DASK_CONNECT_TIMEOUT": "abc"})
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "archcheck: ARCHCHECK_DASK_CONNECT_TIMEOUT must be a number of seconds above 0, not 'abc'"]
    assert cli("verify", fx / "gnu.tar", "--state-dir", tmp_path, env={"ARCHCHECK_DASK_CONNECT_TIMEOUT": "abc"}).returncode == 0


def test_a_cluster_started_early_is_started_once_and_its_failure_said_once(monkeypatch):
    """start_cluster begins on a thread; the run's first use waits for that start rather than
    trying again beside it, gets its error, and a later use tries afresh."""
    import threading
    from archcheck import executors
    from archcheck.errors import UsageError
    attempts, gate = [], threading.Event()

    def connect(spec, preload):
        attempts.append(preload)
        if len(attempts) == 1:
            gate.wait(5)  # the caller below arrives while this start is still going
            raise UsageError("cannot reach the Dask scheduler at tcp://127.0.0.1:9: refused")
        return "client"
    monkeypatch.setattr(executors, "_connect", connect)
    monkeypatch.setattr(executors, "_clients", {})
    spec = executors.ExecutorSpec("dask://127.0.0.1:9")
    executors.start_cluster(spec, ("s3://bucket/a.tar.zst",))
    threading.Timer(0.3, gate.set).start()
    with pytest.raises(UsageError, match="cannot reach"):
        executors._client(spec)
    assert attempts == [("archcheck.sources.warm_s3",)]
    assert executors._client(spec) == "client" and len(attempts) == 2
    assert executors._client(spec) == "client" and len(attempts) == 2


def test_cancelled_tasks_end_their_futures(cluster):
    """A stop cancels the cluster's tasks, queued or running: every future ends, none waits."""
    from concurrent.futures import wait
    from concurrent.futures.process import BrokenProcessPool
    from archcheck.executors import DaskPool
    _, client = cluster
    pool = DaskPool(client)
    futures = [pool.submit(time.sleep, 30) for _ in range(3)]  # two run, one is queued
    time.sleep(0.5)
    pool.shutdown(wait=False, cancel_futures=True)
    done, not_done = wait(futures, timeout=10)
    assert not not_done
    assert all(isinstance(f.exception(), BrokenProcessPool) for f in done)

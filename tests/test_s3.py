"""Archives in object storage (docs/remote.md), against a real S3 API on 127.0.0.1 (moto's
server) through a fault-injecting proxy (tests/s3fault.py): the test corpus verifies the same
through S3 as from disk; 500, 503, 429 (with and without Retry-After), stalls, resets and cut
bodies never become corruption and change nothing in the result; ranges that keep failing are
dead letters that resume reads again, exactly those; an object replaced mid-run is
SOURCE_CHANGED; and no credential reaches any output."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest

from conftest import ARCHCHECK, cli, comparable, maker, verify_reported as verify
from s3fault import ACCESS_KEY, SECRET_KEY, Fault, FaultProxy, MotoServer

MiB = 1024 * 1024
BUCKET = "backups"
CORPUS = ("gnu.tar", "pax.tar", "ustar.tar", "single.tar.zst", "multi.tar.zst", "seekable.tar.zst",
          "hostile.tar", "plain.txt.zst", "ustar.tar.gz")
QUICK = ("--request-timeout", "2s", "--retries", "5", "--no-progress")  # a stall costs 2 s, not 30


@pytest.fixture(scope="module")
def s3():
    with MotoServer() as moto, FaultProxy(moto.endpoint) as proxy:
        yield moto, proxy


@pytest.fixture
def proxy(s3):
    _, proxy = s3
    proxy.clear()
    proxy.requests.clear()
    yield proxy
    proxy.clear()


def env_of(s3, through_proxy: bool = True) -> dict[str, str]:
    moto, proxy = s3
    return moto.env(proxy.endpoint if through_proxy else None)


def test_the_corpus_verifies_the_same_through_s3_as_from_disk(s3, proxy, fx, damaged, tmp_path):
    moto, _ = s3
    single = (fx / "single.tar.zst").stat().st_size
    files = [fx / name for name in CORPUS] + [
        damaged("single.tar.zst", at=single // 2, xor=0x10),
        damaged("multi.tar.zst", truncate=(fx / "multi.tar.zst").stat().st_size - 5000),
        damaged("gnu.tar", at=512 * 3 + 100, xor=0x01),
    ]
    uris = []
    for path in files:
        moto.put(BUCKET, f"corpus/{path.name}", path)
        uris.append(f"s3://{BUCKET}/corpus/{path.name}")
    local, local_report = verify(*files, "--state-dir", tmp_path / "local", "--segment-size", "8M", "--no-progress")
    remote, remote_report = verify(*uris, "--state-dir", tmp_path / "remote", "--segment-size", "8M",
                                   *QUICK, env=env_of(s3))
    assert local.returncode == remote.returncode == 1, remote.stderr
    assert comparable(remote_report) == comparable(local_report)
    codes = {f["code"] for a in remote_report["archives"] for f in a["findings"]}
    assert {"ZSTD_DECODE_ERROR", "TAR_HEADER_CHECKSUM"} <= codes or "ZSTD_CHECKSUM_MISMATCH" in codes, codes
    for archive, uri in zip(remote_report["archives"], uris):
        assert archive["archive"]["uri"] == uri and archive["archive"]["version"].startswith("etag:")
        assert all(f["location"]["archive"] == uri for f in archive["findings"])
    assert all(r.outcome == "forwarded" for r in proxy.requests)


@pytest.mark.parametrize("fault", [
    Fault("status", status=503, retry_after="1", times=3, method="GET", ranged=True),
    Fault("status", status=429, times=3, method="GET", ranged=True),
    Fault("status", status=500, times=4, method="GET", ranged=True),
    Fault("status", status=503, times=1, method="HEAD"),
    Fault("reset", times=3, method="GET", ranged=True),
    Fault("short", cut=5000, times=3, method="GET", ranged=True),
    Fault("stall", stall=10, times=1, method="GET", ranged=True),
], ids=lambda f: f"{f.kind}-{f.status if f.kind == 'status' else ''}-{f.retry_after or ''}-{f.method}")
def test_faults_change_nothing_in_the_result(s3, proxy, fx, tmp_path, fault):
    moto, _ = s3
    moto.put(BUCKET, "faults/multi.tar.zst", fx / "multi.tar.zst")
    uri = f"s3://{BUCKET}/faults/multi.tar.zst"
    clean, clean_report = verify(uri, "--state-dir", tmp_path / "clean", "--segment-size", "8M", *QUICK,
                                 env=env_of(s3))
    assert clean.returncode == 0, clean.stderr
    proxy.requests.clear()
    proxy.add(fault)
    started = time.monotonic()
    r, report = verify(uri, "--state-dir", tmp_path / "faulty", "--segment-size", "8M", *QUICK, env=env_of(s3))
    assert r.returncode == 0, r.stderr + r.stdout
    assert comparable(report) == comparable(clean_report)  # the same, with no finding at all
    hit = [q for q in proxy.requests if q.outcome != "forwarded"]
    assert len(hit) == fault.times
    if fault.retry_after:  # each retry waited out the server's Retry-After (1 s) at least
        assert time.monotonic() - started >= 1.0
        retried = [q for q in proxy.requests if q.range == hit[0].range]
        assert len(retried) >= 2


def test_ranges_that_keep_failing_are_dead_letters_that_resume_reads_again(s3, proxy, fx, tmp_path):
    moto, _ = s3
    data = (fx / "gnu.tar").read_bytes()
    moto.put(BUCKET, "dead/gnu.tar", data)
    uri = f"s3://{BUCKET}/dead/gnu.tar"
    # the second 8 MiB block of the object never answers well: its raw segment and the stream fail
    proxy.always(Fault("status", status=503, method="GET", range_prefix=f"bytes={8 * MiB}-"))
    state, log = tmp_path / "state", tmp_path / "events.jsonl"
    # The breaker stays out of it: the stream check's reads of that range run in a worker that
    # may hash segments next, and an open breaker there would give up a healthy segment too
    # (which resume would read again) depending on scheduling alone.
    r = cli("verify", uri, "--state-dir", state, "--segment-size", "8M", "--retries", "2",
            "--retry-max-elapsed", "5s", "--breaker-threshold", "1000", "--log-file", log, "--no-progress",
            env=env_of(s3), timeout=300)
    assert r.returncode == 3, r.stderr + r.stdout
    manifest = json.loads((state / "drills" / "drill-1" / "archives" / "0001" / "manifest.json").read_text())
    events = [json.loads(line) for line in log.read_text().splitlines()]
    failed = [e for e in events if e["event"] == "segment.failed"]
    assert [e["segment"] for e in failed] == [1] and "HTTP 503" in failed[0]["error"]
    assert "after 3 attempts" in failed[0]["error"]
    findings = [f for f in events if f["event"] == "finding"]
    assert {f["category"] for f in findings} == {"transient"}  # never corruption
    assert {f["code"] for f in findings} == {"SOURCE_READ_ERROR"}
    (dead,) = manifest["dead_letters"]
    assert (dead["segment"], dead["offset"], dead["length"]) == (1, 8 * MiB, 8 * MiB)
    assert dead["attempts"] == 2 and "HTTP 503" in dead["error"]  # read twice, each with its retries
    assert next(e for e in events if e["event"] == "drill.finished")["verdict"] == "incomplete"

    proxy.clear()
    proxy.requests.clear()
    log.unlink()
    again = cli("resume", "drill-1", "--state-dir", state, "--log-file", log, "--trust-verified", "--no-progress",
                env=env_of(s3), timeout=300)
    assert again.returncode == 0, again.stderr + again.stdout
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["segment"] for e in events if e["event"] == "segment.verified"] == [1]  # exactly the dead letter
    assert next(e for e in events if e["event"] == "drill.finished")["verdict"] == "intact"


def test_an_object_replaced_mid_run_is_source_changed(s3, proxy, fx, tmp_path):
    moto, _ = s3
    moto.put(BUCKET, "moving/multi.tar.zst", fx / "multi.tar.zst")
    uri = f"s3://{BUCKET}/moving/multi.tar.zst"
    proxy.always(Fault("delay", stall=0.3, method="GET", ranged=True))  # a slow store: time to replace it
    run = subprocess.Popen([*ARCHCHECK, "verify", uri, "--state-dir", str(tmp_path / "state"), "--segment-size",
                            "8M", "--in-flight", "1", "--no-progress"], env={**os.environ, **env_of(s3)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "state" / "drills" / "drill-1" / "archives" / "0001" / "manifest.json"
    deadline = time.monotonic() + 30
    while not manifest.exists() and time.monotonic() < deadline:  # the run has begun
        time.sleep(0.05)
    seen = len(proxy.requests)
    while not any(q.range for q in proxy.requests[seen:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    moto.put(BUCKET, "moving/multi.tar.zst", (fx / "single.tar.zst").read_bytes())
    out, err = run.communicate(timeout=120)
    assert run.returncode == 3, out + err
    assert "SOURCE_CHANGED" in out and "ETag" in out, out + err
    assert "corrupt" not in out.lower().split("verdict")[-1].split("\n")[0].lower()


def test_resume_refuses_an_object_that_changed_since(s3, proxy, fx, tmp_path):
    moto, _ = s3
    moto.put(BUCKET, "later/gnu.tar", fx / "gnu.tar")
    uri = f"s3://{BUCKET}/later/gnu.tar"
    state = tmp_path / "state"
    proxy.always(Fault("delay", stall=0.5, method="GET", ranged=True))
    first = cli("verify", uri, "--state-dir", state, "--segment-size", "8M", "--deadline", "1s", "--no-progress",
                env=env_of(s3))
    assert first.returncode == 3, first.stderr
    proxy.clear()
    moto.put(BUCKET, "later/gnu.tar", (fx / "pax.tar").read_bytes())
    again = cli("resume", "drill-1", "--state-dir", state, "--no-progress", env=env_of(s3))
    assert again.returncode == 3
    assert "changed" in again.stdout + again.stderr and "ETag or version" in again.stdout + again.stderr


def _bytes_fetched(requests) -> int:
    total = 0
    for q in requests:
        if q.method == "GET" and q.range:
            first, last = q.range.removeprefix("bytes=").split("-")
            total += int(last) - int(first) + 1
    return total


def _noise_object(s3, tmp_path: Path, compress: list[str] | Callable[[Path, Path], object], key: str,
                  size: int = 40 * MiB, files: int = 1) -> tuple[Path, str]:
    """A tar of ``size`` incompressible bytes in ``files`` members, compressed by ``compress``
    (a command given input, then output path; or a function of both), on disk and in the store."""
    import random
    moto, _ = s3
    (tmp_path / "in").mkdir()
    rnd = random.Random(13)
    for i in range(files):
        (tmp_path / "in" / f"noise{i:03d}.bin").write_bytes(rnd.randbytes(size // files))
    tar = tmp_path / "noise.tar"
    subprocess.run(["tar", "-cf", tar, "-C", tmp_path / "in", "."], check=True)
    archive = tmp_path / "noise.tar.zst"
    if callable(compress):
        compress(tar, archive)
    else:
        subprocess.run([*compress, tar, "-o", archive], check=True)
    moto.put(BUCKET, key, archive)
    return archive, f"s3://{BUCKET}/{key}"


@pytest.fixture
def pzstd_object(s3, tmp_path) -> tuple[Path, str]:
    """Frames of about 3 MB, each after pzstd's note of its size."""
    return _noise_object(s3, tmp_path, ["pzstd", "-q", "-1", "-p", "2"], "twice/noise.tar.zst")


@pytest.fixture
def zstd_object(s3, tmp_path) -> tuple[Path, str]:
    """One frame, as `zstd` and `tar --zstd` write: its end is found only by walking its blocks.
    Bigger than what a reader keeps (in_flight + 1 blocks of 8 MiB for each reading thread), so
    a walk that ran to its end before decoding began would have it read twice."""
    return _noise_object(s3, tmp_path, ["zstd", "-q", "-1", "-T2"], "once/noise.tar.zst", size=96 * MiB)


@pytest.fixture
def seekable_object(s3, tmp_path) -> tuple[Path, str]:
    """zstd's seekable format: frames of 4 MiB without size notes (walked block by block), the
    checksums of their content in the table at the end, read first."""
    return _noise_object(s3, tmp_path, maker.seekable, "seekable/noise.tar.zst", size=96 * MiB, files=24)


@pytest.mark.parametrize("made_by", ["pzstd_object", "zstd_object", "seekable_object"])
def test_the_stream_check_reads_a_zstd_object_once(s3, proxy, made_by, tmp_path, request):
    """The frame walk runs beside the decoders, a little ahead of them, on the same reader: the
    blocks it fetches to find each frame are still held when the lanes decode that frame. A
    frame's blocks are walked on the bytes its decoder reads (pzstd's frames), or by the walk
    within a lead of the decoder (a single frame, decoded before the walk has found its end)."""
    archive, uri = request.getfixturevalue(made_by)
    r = cli("verify", uri, "--layers", "zstd,tar", "--state-dir", tmp_path / "s", "--no-progress", env=env_of(s3))
    assert r.returncode == 0, r.stderr
    fetched = _bytes_fetched(proxy.requests)
    # before, pzstd's frames were read 2x (the walk, then the lanes; 2.8x with the blocks walked
    # a third time), and a single frame 2x. What is over 1x: the last block, read first to look
    # for a seek table, and again at the end
    assert archive.stat().st_size <= fetched < 1.25 * archive.stat().st_size, fetched


def _gzip_members(tar: Path, out: Path) -> None:
    with open(out, "wb") as f:
        subprocess.run(["split", "-b", "8M", "--filter", "gzip -1", tar], stdout=f, check=True)


@pytest.mark.parametrize("members", ["one", "many"])
def test_the_stream_check_reads_a_gzip_object_once(s3, proxy, tmp_path, members):
    """A gzip file of many members decodes on two threads, the second reading a little ahead of
    the first, on the same reader: what it fetches ahead is still held when the first gets
    there, and what it decodes is not read again."""
    if members == "one":
        archive, uri = _noise_object(s3, tmp_path, lambda tar, out: out.write_bytes(
            subprocess.run(["gzip", "-1", "-c", tar], capture_output=True, check=True).stdout), "gz/one.tar.gz",
            size=64 * MiB)
    else:
        archive, uri = _noise_object(s3, tmp_path, _gzip_members, "gz/many.tar.gz", size=64 * MiB, files=8)
    r = cli("verify", uri, "--layers", "zstd,tar", "--state-dir", tmp_path / "s", "--no-progress", env=env_of(s3))
    assert r.returncode == 0, r.stderr
    fetched = _bytes_fetched(proxy.requests)
    assert archive.stat().st_size <= fetched < 1.25 * archive.stat().st_size, fetched


def test_a_resumed_stream_check_reads_a_single_frame_object_once(s3, proxy, tmp_path):
    """A pass stopped inside the one frame goes on from its checkpoint: decoding starts over at
    the frame's start (a zstd frame cannot be entered midway), and the walk goes beside it as on
    a first pass, not over the whole frame first (which read the object twice)."""
    archive, uri = _noise_object(s3, tmp_path, ["zstd", "-q", "-1", "-T2"], "resumed/noise.tar.zst",
                                 size=96 * MiB, files=48)
    state = tmp_path / "s"
    first = cli("verify", uri, "--layers", "zstd,tar", "--budget", "40M", "--state-dir", state, "--no-progress",
                env=env_of(s3))
    assert first.returncode == 0 and "partial" in first.stdout, first.stdout + first.stderr
    [path] = state.glob("drills/drill-1/archives/*/manifest.json")
    from archcheck.manifest import load
    assert load(path).stream.checkpoint["covered"] >= 40 * MiB
    proxy.requests.clear()
    again = cli("verify", uri, "--layers", "zstd,tar", "--state-dir", state, "--no-progress", env=env_of(s3))
    assert again.returncode == 0 and "(100%)" in again.stdout, again.stdout + again.stderr
    assert load(next(state.glob("drills/drill-2/archives/*/manifest.json"))).stream.resumed == 1
    fetched = _bytes_fetched(proxy.requests)
    assert archive.stat().st_size <= fetched < 1.25 * archive.stat().st_size, fetched  # before: 2x


def test_a_run_reads_the_objects_head_and_tail_once(s3, proxy, fx, tmp_path, monkeypatch):
    """The identity (the digests of the first and last 64 KiB) is asked for when the command
    line is checked, when the drill is scheduled, by the run and by its summaries: each HEAD
    pins the same content, so its ranges are read once. A replaced object is read again."""
    moto, _ = s3
    size = (fx / "multi.tar.zst").stat().st_size
    moto.put(BUCKET, "identity/multi.tar.zst", fx / "multi.tar.zst")
    uri = f"s3://{BUCKET}/identity/multi.tar.zst"
    r = cli("verify", uri, "--state-dir", tmp_path / "s", "--no-progress", env=env_of(s3))
    assert r.returncode == 0, r.stderr
    ranges = [q.range for q in proxy.requests if q.method == "GET" and q.range]
    assert ranges.count("bytes=0-65535") == 1 and ranges.count(f"bytes={size - 65536}-{size - 1}") == 1, ranges
    assert len([q for q in proxy.requests if q.method == "HEAD"]) >= 4  # every look pins it anew
    import asyncio
    from archcheck.sources import open_source
    for name, value in env_of(s3).items():
        monkeypatch.setenv(name, value)
    before = asyncio.run(open_source(uri).identity())
    replaced = bytearray((fx / "multi.tar.zst").read_bytes())
    replaced[100] ^= 1  # the same size, another ETag
    moto.put(BUCKET, "identity/multi.tar.zst", bytes(replaced))
    after = asyncio.run(open_source(uri).identity())
    assert after.size == before.size and after.version != before.version
    assert after.head_blake3 != before.head_blake3 and after.tail_blake3 == before.tail_blake3


def test_only_stores_that_change_the_etag_with_every_write_have_their_identity_kept():
    from archcheck.sources.remote import ObjectInfo, _content_key
    info = ObjectInfo(100, "0a1b", None, 7)
    assert _content_key("s3://b/k", "s3.amazonaws.com", info) != _content_key("s3://b/k", "minio:9000", info)
    assert _content_key("gs://b/k", "storage.googleapis.com", ObjectInfo(100, "", "17", 7))
    # a web server's strong ETag is often its size and mtime; S3's "null" version names nothing
    assert _content_key("https://h/k", "h", info) is None
    assert _content_key("s3://b/k", "e", ObjectInfo(100, "", "null", 7)) is None


def test_the_raw_layer_hashes_the_blocks_the_stream_check_reads(s3, proxy, pzstd_object, tmp_path):
    """With every layer on, the raw layer's leaves are hashed from the blocks the stream check
    fetched; after it, the raw pass reads only what is left: the object is transferred about
    once, not twice or three times, and the tree root is the file's."""
    archive, uri = pzstd_object
    local, local_report = verify(archive, "--state-dir", tmp_path / "local", "--segment-size", "8M", "--no-progress")
    remote, remote_report = verify(uri, "--state-dir", tmp_path / "remote", "--segment-size", "8M",
                                   "--no-progress", "--log-format", "json", "--log-file", tmp_path / "events.jsonl",
                                   env=env_of(s3))
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert comparable(remote_report) == comparable(local_report)
    fetched = _bytes_fetched(proxy.requests)
    assert fetched < 1.25 * archive.stat().st_size, fetched  # a raw pass of its own: 2x more
    verified = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()
                if '"segment.verified"' in line]
    assert len(verified) == 6 and {e["read_by"] for e in verified} == {"stream"}, verified
    assert all("seconds" not in e for e in verified)


def test_the_raw_layer_still_covers_an_object_whose_stream_check_fails(s3, pzstd_object, tmp_path):
    """The raw pass runs after the stream pass for an object; a stream that fails (a bug in the
    core, here a failpoint) leaves it to read everything the stream did not."""
    archive, uri = pzstd_object
    r = cli("verify", uri, "--segment-size", "8M", "--state-dir", tmp_path / "s", "--no-progress",
            env={**env_of(s3), "ARCHCHECK_FAILPOINT": "native-panic"})
    assert r.returncode == 11 and "the native core panicked" in r.stderr, r.stdout + r.stderr
    import blake3
    from archcheck.manifest import load
    [path] = (tmp_path / "s").glob("drills/*/archives/*/manifest.json")
    segments = load(path).segments
    assert len(segments) == 6 and all(r.status == "done" for r in segments), segments
    data = archive.read_bytes()
    assert [leaf for r in segments for leaf in r.leaves] == [
        blake3.blake3(data[i:i + 8 * MiB]).hexdigest() for i in range(0, len(data), 8 * MiB)]


def test_plans_list_object_globs(s3, proxy, fx, tmp_path):
    moto, _ = s3
    for day in ("2026-12-01", "2026-12-02"):
        moto.put(BUCKET, f"pg/{day}/base.tar.zst", fx / "single.tar.zst")
    moto.put(BUCKET, "pg/2026-12-02/extra/base.tar.zst", fx / "single.tar.zst")  # one level deeper: not matched
    plan = tmp_path / "fleet.yaml"
    plan.write_text(f"archives:\n  - s3://{BUCKET}/pg/*/base.tar.zst\n  - s3://{BUCKET}/none/*.tar\n"
                    "retries: 3\nin_flight: 2\nrequest_timeout: 5s\nbreaker_threshold: 7\nbreaker_cooldown: 3s\n")
    r = cli("drill", "run", plan, "--state-dir", tmp_path / "state", "--no-progress", env=env_of(s3))
    assert r.returncode == 0, r.stderr
    assert f"s3://{BUCKET}/pg/2026-12-01/base.tar.zst" in r.stdout
    assert f"s3://{BUCKET}/pg/2026-12-02/base.tar.zst" in r.stdout and "extra" not in r.stdout
    assert f"s3://{BUCKET}/none/*.tar matches no archive" in r.stderr
    drill = json.loads((tmp_path / "state" / "drills" / "drill-1" / "drill.json").read_text())
    remote = drill["options"]["remote"]
    assert remote["in_flight"] == 2 and remote["timeout"] == 5.0
    assert (remote["policy"]["attempts"], remote["policy"]["breaker_threshold"],
            remote["policy"]["breaker_cooldown"]) == (4, 7, 3.0)


def test_an_encrypted_object_verifies_the_same_as_from_disk(s3, proxy, fx, tmp_path):
    """age over S3: the header read from the object, chunks decrypted as their ranges arrive."""
    moto, _ = s3
    key = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", key], check=True, capture_output=True, text=True).stdout.strip()
    clean = subprocess.run(["age", "-r", recipient, fx / "multi.tar.zst"], check=True, capture_output=True).stdout
    start = clean.index(b"\n", clean.index(b"\n--- ") + 1) + 1 + 16
    damaged = bytearray(clean)
    damaged[start + 65552 + 100] ^= 0x04  # chunk 1
    files = []
    for name, data in (("clean.tar.zst.age", clean), ("bad.tar.zst.age", bytes(damaged))):
        files.append(tmp_path / name)
        files[-1].write_bytes(data)
        moto.put(BUCKET, f"age/{name}", files[-1])
    uris = [f"s3://{BUCKET}/age/{p.name}" for p in files]
    local, local_report = verify(*files, "-i", key, "--state-dir", tmp_path / "local", "--no-progress")
    remote, remote_report = verify(*uris, "-i", key, "--state-dir", tmp_path / "remote", *QUICK, env=env_of(s3))
    assert local.returncode == remote.returncode == 1, remote.stderr
    assert comparable(remote_report) == comparable(local_report)
    [clean_report, bad_report] = remote_report["archives"]
    assert (clean_report["verdict"], clean_report["format"]) == ("intact", "tar+zstd+age")
    assert [(f["code"], f["details"]["chunk"]) for f in bad_report["findings"] if f["category"] == "corruption"] \
        == [("AGE_CHUNK_AUTH", 1)]


def test_no_credential_reaches_any_output(s3, proxy, fx, damaged, tmp_path):
    moto, _ = s3
    moto.put(BUCKET, "secret/bad.tar", damaged("gnu.tar", at=512 * 3 + 100, xor=0x01))
    proxy.add(Fault("status", status=503, times=2, method="GET", ranged=True))
    state = tmp_path / "state"
    outputs = [tmp_path / name for name in ("junit.xml", "metrics.prom", "events.jsonl", "report.json")]
    r = cli("verify", f"s3://{BUCKET}/secret/bad.tar", "--state-dir", state, "--junit", outputs[0],
            "--prometheus", outputs[1], "--log-file", outputs[2], "--log-level", "debug", "--report", outputs[3],
            *QUICK, env=env_of(s3))
    assert r.returncode == 1, r.stderr
    html = cli("report", "drill-1", "--format", "html", "-o", tmp_path / "report.html", "--state-dir", state)
    assert html.returncode == 1
    texts = [r.stdout, r.stderr, html.stdout, html.stderr]
    texts += [p.read_text(errors="replace") for p in [*outputs, tmp_path / "report.html", *state.rglob("*")]
              if p.is_file()]
    assert len(texts) > 10
    for text in texts:
        assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_usage_errors_for_object_stores(s3, tmp_path):
    moto, _ = s3
    insecure = {k: v for k, v in env_of(s3).items() if k != "AWS_ALLOW_HTTP"}
    r = cli("verify", f"s3://{BUCKET}/x.tar", "--state-dir", tmp_path, env=insecure)
    assert r.returncode == 2 and "plain http: set AWS_ALLOW_HTTP=true" in r.stderr
    r = cli("verify", f"s3://{BUCKET}/no/such.tar", "--state-dir", tmp_path, env=env_of(s3))
    assert r.returncode == 5 and f"s3://{BUCKET}/no/such.tar: no such object" in r.stderr
    r = cli("verify", "https://user:pw@example.invalid/a.tar", "--state-dir", tmp_path)
    assert r.returncode == 2 and "credentials" in r.stderr and "pw" not in r.stderr
    r = cli("verify", "az://container/a.tar", "--state-dir", tmp_path)
    assert r.returncode == 2 and "az:// is not supported yet" in r.stderr


@pytest.mark.parametrize("etag", ["strong", "weak", "none"])
def test_an_http_url_verifies_the_same(fx, tmp_path, etag):
    """A plain URL on a static server that serves byte ranges, by ranged GETs: pinned by its
    ETag, or by its modification time when the ETag is weak (If-Match never matches one) or absent."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copyfile(fx / "single.tar.zst", root / "single.tar.zst")
    with _range_server(root, etag) as base:
        local, local_report = verify(fx / "single.tar.zst", "--state-dir", tmp_path / "local", "--no-progress")
        remote, remote_report = verify(f"{base}/single.tar.zst", "--state-dir", tmp_path / "remote",
                                       "--no-progress", env={"AWS_ALLOW_HTTP": "true"})
        assert local.returncode == remote.returncode == 0, remote.stderr
        assert comparable(remote_report) == comparable(local_report)
        r = cli("verify", f"{base}/single.tar.zst", "--state-dir", tmp_path / "refused")
        assert r.returncode == 2 and "plain http: set AWS_ALLOW_HTTP=true" in r.stderr


@contextmanager
def _range_server(root: Path, etag_kind: str = "strong"):
    import http.server
    import re
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.do_GET(head=True)

        def do_GET(self, head: bool = False):
            data = (root / self.path.lstrip("/")).read_bytes()
            digest = hashlib.md5(data).hexdigest()
            etag = {"strong": f'"{digest}"', "weak": f'W/"{digest}"', "none": ""}[etag_kind]
            if etag_kind != "strong" and self.headers.get("If-Match"):
                self.send_response(412)  # If-Match with a weak or no ETag never matches
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            start, end = (int(match[1]), int(match[2]) + 1) if match else (0, len(data))
            self.send_response(206 if match else 200)
            self.send_header("Accept-Ranges", "bytes")
            if etag:
                self.send_header("ETag", etag)
            self.send_header("Last-Modified", "Sat, 05 Dec 2026 08:00:00 GMT")
            self.send_header("Content-Length", str(end - start))
            if match:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not head:
                self.wfile.write(data[start:end])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_failing_look_at_the_object_is_not_a_change():
    """The coordinator's HEAD failing (throttled, unreachable) mid-run says nothing changed: the
    ranges are pinned and retried on their own."""
    from archcheck.errors import SourceChanged as Changed
    from archcheck.sources.remote import ObjectInfo, RemoteOptions, RemoteSource
    from archcheck.sources.resilience import Transient

    class Flaky:
        endpoint = "flaky"

        def __init__(self, *answers):
            self.answers = list(answers)

        def head(self):
            answer = self.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    pinned = ObjectInfo(100, "abc", None, 1)
    transport = Flaky(Transient("HTTP 503"), OSError(5, "HTTP 403"), ObjectInfo(100, "def", None, 2),
                      Changed("removed"))
    source = RemoteSource("s3://b/k", transport, pinned, RemoteOptions())
    assert source.changes() == "" and source.changes() == ""
    assert source.changes() == "replaced: its ETag is def, not abc"
    assert source.changes(fresh=False) == "replaced: its ETag is def, not abc"  # it stays changed


def test_workers_read_from_the_store_the_coordinator_resolved(s3, fx, monkeypatch):
    """A Dask worker on another machine has its own environment: the endpoint and region travel
    in the source ref (credentials do not: they come from the worker's own chain)."""
    import pickle
    from archcheck.sources import open_source
    moto, _ = s3
    data = (fx / "gnu.tar").read_bytes()
    moto.put(BUCKET, "ref/gnu.tar", data)
    for name, value in env_of(s3, through_proxy=False).items():
        monkeypatch.setenv(name, value)
    ref = pickle.loads(pickle.dumps(open_source(f"s3://{BUCKET}/ref/gnu.tar").ref()))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ALLOW_HTTP", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)  # a worker's environment without the store's settings
    reader = ref.open()
    try:
        assert reader.pread(1000, 4096) == data[1000:5096]
    finally:
        reader.close()
    assert "SECRET" not in repr(ref.options).upper() and SECRET_KEY not in repr(ref)


def test_a_requester_pays_bucket_is_asked_with_the_payer_header_on_every_request(s3, proxy, fx, tmp_path):
    """AWS_REQUEST_PAYER=true (obstore's name; the AWS CLI's --request-payer requester): every
    request, the listing of a glob, the HEADs and the ranges read by the workers, says that the
    reader pays (such a bucket refuses any that does not); without it, none does."""
    moto, _ = s3
    moto.put(BUCKET, "payer/multi.tar.zst", fx / "multi.tar.zst")
    plan = tmp_path / "payer.yaml"
    plan.write_text(f"archives:\n  - s3://{BUCKET}/payer/*.tar.zst\nstate_dir: {tmp_path / 'state'}\n")
    for payer, expected in (("true", "requester"), (None, None)):
        proxy.requests.clear()
        env = {**env_of(s3), **({"AWS_REQUEST_PAYER": payer} if payer else {})}
        r = cli("drill", "run", plan, "--no-progress", env=env)
        assert r.returncode == 0 and "INTACT" in r.stdout, r.stdout + r.stderr
        methods = {q.method for q in proxy.requests}
        assert {"GET", "HEAD"} <= methods and any(q.range for q in proxy.requests), methods
        assert {q.request_payer for q in proxy.requests} == {expected}


def test_a_public_bucket_is_read_unsigned_with_no_credentials(s3, proxy, fx, tmp_path):
    """AWS_SKIP_SIGNATURE=true (obstore's name; the AWS CLI's --no-sign-request): no request is
    signed and no credentials are looked for; globs list the same way. Without it, and with no
    credentials, one clear line."""
    moto, _ = s3
    moto.put(BUCKET, "public/multi.tar.zst", fx / "multi.tar.zst", ACL="public-read")
    env = {name: value for name, value in env_of(s3).items() if not name.startswith("AWS_SECRET")}
    env.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    refused = cli("verify", f"s3://{BUCKET}/public/multi.tar.zst", "--state-dir", tmp_path / "r", *QUICK, env=env)
    assert refused.returncode == 5 and "no AWS credentials" in refused.stderr, refused.stdout + refused.stderr
    plan = tmp_path / "public.yaml"
    plan.write_text(f"archives:\n  - s3://{BUCKET}/public/*.tar.zst\nstate_dir: {tmp_path / 'state'}\n")
    proxy.requests.clear()
    r = cli("drill", "run", plan, "--no-progress", env={**env, "AWS_SKIP_SIGNATURE": "true"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "INTACT" in r.stdout and "public/multi.tar.zst" in r.stdout
    assert proxy.requests and all(q.authorization is None for q in proxy.requests)

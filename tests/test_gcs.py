"""gs:// archives (docs/remote.md), against Google Cloud Storage's JSON API on 127.0.0.1
(gcp-storage-emulator, served from this process) through the fault-injecting proxy of
tests/s3fault.py: the corpus verifies the same as from disk; 503, 429, resets and cut bodies
change nothing in the result; a service account's token is sent with every request and reaches
no output; plans list gs:// globs; an object replaced since is not resumed."""
from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import cli, comparable, verify_reported as verify
from s3fault import Fault, FaultProxy

BUCKET = "backups"
CORPUS = ("gnu.tar", "pax.tar", "single.tar.zst", "multi.tar.zst", "seekable.tar.zst", "ustar.tar.gz")
QUICK = ("--request-timeout", "2s", "--retries", "5", "--no-progress")
TOKEN = "ya29.test-ACCESS-token-do-not-log-0123456789"  # tests grep outputs for it


class GcsEmulator:
    """gcp-storage-emulator's JSON API in this process, on a port the OS picks."""

    endpoint: str

    def __enter__(self) -> GcsEmulator:
        from gcp_storage_emulator.server import create_server
        self.server = create_server("127.0.0.1", 0, in_memory=True)
        self.server.start()
        port = self.server._api._httpd.server_address[1]  # bound to port 0: no window for another process
        self.endpoint = f"http://127.0.0.1:{port}"
        self._call("POST", "/storage/v1/b?project=test", json.dumps({"name": BUCKET}).encode(), "application/json")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def put(self, name: str, data_or_path: bytes | Path) -> str:
        """Upload (a new generation, if the object exists); its generation."""
        data = data_or_path if isinstance(data_or_path, bytes) else data_or_path.read_bytes()
        reply = self._call("POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={quote(name, safe='')}",
                           data, "application/octet-stream")
        return json.loads(reply)["generation"]

    def _call(self, method: str, path: str, body: bytes, content_type: str) -> bytes:
        request = urllib.request.Request(self.endpoint + path, data=body, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()


@pytest.fixture(scope="module")
def gcs():
    with GcsEmulator() as emulator, FaultProxy(emulator.endpoint) as proxy:
        yield emulator, proxy


@pytest.fixture
def proxy(gcs):
    _, proxy = gcs
    proxy.clear()
    proxy.requests.clear()
    yield proxy
    proxy.clear()


def env_of(gcs, **extra: str) -> dict[str, str]:
    _, proxy = gcs
    return {"STORAGE_EMULATOR_HOST": proxy.endpoint, "GOOGLE_APPLICATION_CREDENTIALS": "", "AWS_ALLOW_HTTP": "true",
            **extra}


def test_the_corpus_verifies_the_same_through_gcs_as_from_disk(gcs, proxy, fx, damaged, tmp_path):
    emulator, _ = gcs
    single = (fx / "single.tar.zst").stat().st_size
    files = [fx / name for name in CORPUS] + [
        damaged("single.tar.zst", at=single // 2, xor=0x10),
        damaged("gnu.tar", at=512 * 3 + 100, xor=0x01),
    ]
    uris, generations = [], []
    for path in files:
        generations.append(emulator.put(f"corpus/{path.name}", path))
        uris.append(f"gs://{BUCKET}/corpus/{path.name}")
    local, local_report = verify(*files, "--state-dir", tmp_path / "local", "--segment-size", "8M", "--no-progress",
                                 env={})
    remote, remote_report = verify(*uris, "--state-dir", tmp_path / "remote", "--segment-size", "8M", *QUICK,
                                   env=env_of(gcs))
    assert local.returncode == remote.returncode == 1, remote.stderr
    assert comparable(remote_report) == comparable(local_report)
    codes = {f["code"] for a in remote_report["archives"] for f in a["findings"]}
    assert "TAR_HEADER_CHECKSUM" in codes and codes & {"ZSTD_DECODE_ERROR", "ZSTD_CHECKSUM_MISMATCH"}, codes
    for archive, uri, generation in zip(remote_report["archives"], uris, generations):
        assert archive["archive"]["uri"] == uri and archive["archive"]["version"].endswith(f"version:{generation}")
        assert all(f["location"]["archive"] == uri for f in archive["findings"])
    ranged = [q for q in proxy.requests if q.range]
    assert ranged and all(f"ifGenerationMatch={g}" in q.path for q in ranged
                          for g in [generations[uris.index("gs://" + BUCKET + "/" + _object(q.path))]])
    assert all(q.outcome == "forwarded" and q.authorization is None for q in proxy.requests)  # an emulator: anonymous


def _object(path: str) -> str:
    from urllib.parse import unquote
    return unquote(path.split("/o/", 1)[1].split("?", 1)[0])


@pytest.mark.parametrize("fault", [
    Fault("status", status=503, retry_after="1", times=3, method="GET", ranged=True),
    Fault("status", status=429, times=3, method="GET", ranged=True),
    Fault("status", status=503, times=2, method="GET", ranged=False),
    Fault("reset", times=3, method="GET", ranged=True),
    Fault("short", cut=5000, times=3, method="GET", ranged=True),
], ids=lambda f: f"{f.kind}-{f.status if f.kind == 'status' else ''}-{f.retry_after or ''}-{f.ranged}")
def test_faults_change_nothing_in_the_result(gcs, proxy, fx, tmp_path, fault):
    emulator, _ = gcs
    emulator.put("faults/multi.tar.zst", fx / "multi.tar.zst")
    uri = f"gs://{BUCKET}/faults/multi.tar.zst"
    clean, clean_report = verify(uri, "--state-dir", tmp_path / "clean", "--segment-size", "8M", *QUICK,
                                 env=env_of(gcs))
    assert clean.returncode == 0, clean.stderr
    proxy.requests.clear()
    proxy.add(fault)
    r, report = verify(uri, "--state-dir", tmp_path / "faulty", "--segment-size", "8M", *QUICK, env=env_of(gcs))
    assert r.returncode == 0, r.stderr + r.stdout
    assert comparable(report) == comparable(clean_report)  # the same, with no finding at all
    assert len([q for q in proxy.requests if q.outcome != "forwarded"]) == fault.times


class _TokenServer:
    """Google's OAuth token endpoint, as a service account's key file names it: each POST (a
    signed JWT grant) gets TOKEN."""

    def __enter__(self) -> _TokenServer:
        grants = self.grants = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                grants.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
                body = json.dumps({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _service_account_key(path: Path, token_uri: str) -> str:
    """A service account key file (a fresh RSA key); returns the private key's PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": "0123abcd", "private_key": pem,
        "client_email": "archcheck-test@test.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}))
    return pem


def test_a_public_bucket_is_read_with_no_token_when_signatures_are_skipped(gcs, proxy, fx, tmp_path):
    """GOOGLE_SKIP_SIGNATURE=true (obstore's name): even with a key file named, no token is asked
    for and no request carries one, as for a public bucket."""
    emulator, _ = gcs
    emulator.put("public/multi.tar.zst", fx / "multi.tar.zst")
    with _TokenServer() as tokens:
        _service_account_key(tmp_path / "key.json", tokens.url)
        env = env_of(gcs, GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "key.json"), GOOGLE_SKIP_SIGNATURE="true")
        r = cli("verify", f"gs://{BUCKET}/public/multi.tar.zst", "--state-dir", tmp_path / "s", *QUICK, env=env)
    assert r.returncode == 0 and "INTACT" in r.stdout, r.stdout + r.stderr
    assert not tokens.grants and proxy.requests and all(q.authorization is None for q in proxy.requests)


def test_a_service_accounts_token_is_sent_and_reaches_no_output(gcs, proxy, damaged, tmp_path):
    emulator, _ = gcs
    emulator.put("secret/bad.tar", damaged("gnu.tar", at=512 * 3 + 100, xor=0x01))
    uri = f"gs://{BUCKET}/secret/bad.tar"
    state = tmp_path / "state"
    outputs = [tmp_path / name for name in ("junit.xml", "events.jsonl", "report.json")]
    with _TokenServer() as tokens:
        pem = _service_account_key(tmp_path / "key.json", tokens.url)
        env = env_of(gcs, GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "key.json"))
        refused = cli("verify", uri, "--state-dir", tmp_path / "refused", *QUICK, env={**env, "AWS_ALLOW_HTTP": ""})
        assert refused.returncode == 2 and "plain http: set AWS_ALLOW_HTTP=true" in refused.stderr
        assert not tokens.grants and not proxy.requests  # nothing was sent in the clear
        proxy.add(Fault("status", status=503, times=2, method="GET", ranged=True))
        r = cli("verify", uri, "--state-dir", state, "--junit", outputs[0], "--log-file", outputs[1],
                "--log-level", "debug", "--report", outputs[2], *QUICK, env=env)
    assert r.returncode == 1, r.stderr
    assert tokens.grants and all("grant_type=urn" in grant for grant in tokens.grants)
    assert proxy.requests and all(q.authorization == f"Bearer {TOKEN}" for q in proxy.requests)
    texts = [r.stdout, r.stderr] + [p.read_text(errors="replace") for p in [*outputs, *state.rglob("*")]
                                    if p.is_file()]
    secret = pem.splitlines()[5]  # a line of the key's body
    for text in texts:
        assert TOKEN not in text and secret not in text


def test_plans_list_gcs_globs(gcs, proxy, fx, tmp_path):
    emulator, _ = gcs
    for day in ("2026-12-01", "2026-12-02"):
        emulator.put(f"pg/{day}/base.tar.zst", fx / "single.tar.zst")
    emulator.put("pg/2026-12-02/extra/base.tar.zst", fx / "single.tar.zst")  # one level deeper: not matched
    plan = tmp_path / "fleet.yaml"
    plan.write_text(f"archives:\n  - gs://{BUCKET}/pg/*/base.tar.zst\n  - gs://{BUCKET}/none/*.tar\n")
    r = cli("drill", "run", plan, "--state-dir", tmp_path / "state", "--no-progress", env=env_of(gcs))
    assert r.returncode == 0, r.stderr
    assert f"gs://{BUCKET}/pg/2026-12-01/base.tar.zst" in r.stdout
    assert f"gs://{BUCKET}/pg/2026-12-02/base.tar.zst" in r.stdout and "extra" not in r.stdout
    assert f"gs://{BUCKET}/none/*.tar matches no archive" in r.stderr


def test_a_listing_that_keeps_failing_is_one_line_after_the_plans_retries(tmp_path):
    plan = tmp_path / "fleet.yaml"
    plan.write_text(f"archives:\n  - gs://{BUCKET}/pg/*/base.tar.zst\nretries: 1\n")
    closed = {"STORAGE_EMULATOR_HOST": "127.0.0.1:9", "AWS_ALLOW_HTTP": "true", "GOOGLE_APPLICATION_CREDENTIALS": ""}
    r = cli("drill", "run", plan, "--state-dir", tmp_path / "state", "--no-progress", env=closed)
    assert r.returncode == 5 and "Traceback" not in r.stderr
    assert f"cannot list gs://{BUCKET}/pg/*/base.tar.zst: listing: failed after 2 attempts" in r.stderr, r.stderr


def test_resume_refuses_an_object_replaced_since(gcs, proxy, fx, tmp_path):
    emulator, _ = gcs
    emulator.put("later/gnu.tar", fx / "gnu.tar")
    uri = f"gs://{BUCKET}/later/gnu.tar"
    state = tmp_path / "state"
    proxy.always(Fault("delay", stall=0.5, method="GET", ranged=True))
    first = cli("verify", uri, "--state-dir", state, "--segment-size", "8M", "--deadline", "1s", "--no-progress",
                env=env_of(gcs))
    assert first.returncode == 3, first.stderr
    proxy.clear()
    emulator.put("later/gnu.tar", fx / "gnu.tar")  # the same bytes, a new generation
    again = cli("resume", "drill-1", "--state-dir", state, "--no-progress", env=env_of(gcs))
    assert again.returncode == 3
    assert "changed" in again.stdout + again.stderr and "ETag or version" in again.stdout + again.stderr


def test_a_missing_object_and_a_bad_uri_are_one_clear_line(gcs, proxy, tmp_path):
    missing = cli("verify", f"gs://{BUCKET}/no/such.tar", "--state-dir", tmp_path / "a", *QUICK, env=env_of(gcs))
    assert missing.returncode == 5 and "no such object" in missing.stderr, missing.stderr
    bad = cli("verify", "gs://just-a-bucket", "--state-dir", tmp_path / "b", *QUICK, env=env_of(gcs))
    assert bad.returncode == 2 and "gs://BUCKET/OBJECT" in bad.stderr, bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr


def test_a_generation_that_no_longer_matches_is_source_changed(gcs, proxy, fx, tmp_path):
    """Google answers 412 to a range of a replaced object (ifGenerationMatch); the emulator does
    not, so the proxy answers it for one range, as Google would."""
    emulator, _ = gcs
    emulator.put("moved/multi.tar.zst", fx / "multi.tar.zst")
    proxy.add(Fault("status", status=412, times=1, method="GET", ranged=True, range_prefix="bytes=0-8388607"))
    r, report = verify(f"gs://{BUCKET}/moved/multi.tar.zst", "--state-dir", tmp_path / "s", *QUICK, env=env_of(gcs))
    assert r.returncode == 3, r.stderr + r.stdout
    [changed] = [f for a in report["archives"] for f in a["findings"] if f["code"] == "SOURCE_CHANGED"]
    assert "generation" in json.dumps(changed) and changed["category"] == "transient"
    assert not [f for a in report["archives"] for f in a["findings"] if f["category"] == "corruption"]


def test_access_denied_mid_run_is_a_dead_letter_not_corruption(gcs, proxy, fx, tmp_path):
    emulator, _ = gcs
    emulator.put("denied/gnu.tar", fx / "gnu.tar")
    proxy.always(Fault("status", status=403, method="GET", ranged=True, range_prefix="bytes=8388608-"))
    r, report = verify(f"gs://{BUCKET}/denied/gnu.tar", "--state-dir", tmp_path / "s", "--segment-size", "8M",
                       "--layers", "raw", *QUICK, env=env_of(gcs))
    assert r.returncode == 3, r.stderr + r.stdout
    [failed] = [f for a in report["archives"] for f in a["findings"] if f["code"] == "SOURCE_READ_ERROR"]
    assert failed["location"]["byte_range"] == [8 * 1024 * 1024, 16 * 1024 * 1024]
    assert "access denied (HTTP 403)" in json.dumps(failed) and failed["category"] == "transient"
    assert len([q for q in proxy.requests if q.outcome == "status 403"]) == 2  # not retried: read once, then once more


def test_object_names_are_quoted_as_the_api_wants(gcs, proxy, fx, tmp_path):
    emulator, _ = gcs
    name = "odd names/a #1 ?%20 é.tar"
    emulator.put(name, fx / "ustar.tar")
    r, report = verify(f"gs://{BUCKET}/{name}", "--state-dir", tmp_path / "s", *QUICK, env=env_of(gcs))
    assert r.returncode == 0, r.stderr + r.stdout
    assert report["archives"][0]["archive"]["uri"] == f"gs://{BUCKET}/{name}"
    assert all(_object(q.path) == name for q in proxy.requests)


def test_an_http_endpoint_in_any_case_needs_the_plain_http_switch(monkeypatch):
    from archcheck.errors import UsageError
    from archcheck.sources.gcs import api_base
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    for host in ("127.0.0.1:1", "http://127.0.0.1:1", "HTTP://127.0.0.1:1", "Http://h:1"):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
        with pytest.raises(UsageError, match="plain http"):
            api_base()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "https://user:pw@h:1")
    with pytest.raises(UsageError, match="credentials"):
        api_base()
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:1")
    assert api_base() == "http://127.0.0.1:1"


def test_a_metadata_change_is_not_a_new_archive(monkeypatch):
    """Labels, holds and Cache-Control change an object's JSON etag, metageneration and
    ``updated``; only a write changes its generation (and its crc32c with the bytes)."""
    from archcheck.sources.gcs import GcsTransport
    from archcheck.sources.remote import RemoteOptions, describe_change
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr("archcheck.sources.gcs._credentials", lambda base: None)
    resource = {"size": "100", "generation": "17", "metageneration": "1", "etag": "CKih16GjycICEAE=",
                "crc32c": "GTBOAQ==", "timeCreated": "2026-12-01T00:00:00Z", "updated": "2026-12-01T00:00:00Z"}
    transport = GcsTransport(f"gs://{BUCKET}/a.tar", RemoteOptions())
    looks = iter([resource, {**resource, "metageneration": "2", "etag": "CKih16GjycICEAI=",
                             "updated": "2026-12-05T00:00:00Z"}, {**resource, "generation": "18"}])
    monkeypatch.setattr(transport, "_json", lambda url: next(looks))
    pinned = transport.head()
    assert (pinned.size, pinned.version, pinned.etag) == (100, "17", "GTBOAQ==")
    assert describe_change(pinned, transport.head()) == ""
    assert "its version is 18, not 17" in describe_change(pinned, transport.head())


def test_a_listing_is_read_page_by_page():
    from archcheck.sources.listing import matching
    pages = {None: (["pg/a/base.tar.zst", "pg/a/x"], "t1"), "t1": (["pg/b/base.tar.zst"], "t2"),
             "t2": (["pg/b/c/base.tar.zst"], None)}
    asked = []

    def page(prefix, token):
        asked.append((prefix, token))
        return pages[token]
    assert matching("pg/*/base.tar.zst", page) == ["pg/a/base.tar.zst", "pg/b/base.tar.zst"]
    assert asked == [("pg/", None), ("pg/", "t1"), ("pg/", "t2")]
    assert matching("pg/**/base.tar.zst", lambda prefix, token: pages[token])[-1] == "pg/b/c/base.tar.zst"

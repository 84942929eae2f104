"""The S3 test harness itself: moto in server mode behind the fault-injecting proxy."""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import threading
import time

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError, ResponseStreamingError

from s3fault import ACCESS_KEY, REGION, SECRET_KEY, Fault, FaultProxy, MotoServer, Request

BUCKET = "archives"
DATA = os.urandom(300_000)  # several proxy chunks
NO_RETRIES = Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=1)


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        server.put(BUCKET, "a.tar", DATA)
        yield server


@pytest.fixture
def proxy(moto):
    with FaultProxy(moto.endpoint) as p:
        yield p


@pytest.fixture
def s3(moto, proxy):
    return moto.client(proxy.endpoint, NO_RETRIES)


def status(error: ClientError) -> int:
    return error.response["ResponseMetadata"]["HTTPStatusCode"]


def test_env(moto):
    assert moto.env() == {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                          "AWS_REGION": REGION, "AWS_ENDPOINT_URL": moto.endpoint, "AWS_ALLOW_HTTP": "true"}
    assert moto.env("http://127.0.0.1:9")["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


def test_put_from_path_returns_the_etag(moto, tmp_path):
    path = tmp_path / "b.bin"
    path.write_bytes(b"x" * 1000)
    assert moto.put("other-bucket", "b.bin", path) == hashlib.md5(b"x" * 1000).hexdigest()
    assert moto.put("other-bucket", "b.bin", b"y") == hashlib.md5(b"y").hexdigest()  # bucket exists: fine


def test_forwards_put_head_get_and_list(s3, proxy):
    body = bytes(range(256)) * 5000
    etag = s3.put_object(Bucket=BUCKET, Key="dir/c.bin", Body=body)["ETag"]
    assert etag == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=BUCKET, Key="dir/c.bin", Range="bytes=1000-1999")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 1000-1999/{len(body)}"
    assert got["Body"].read() == body[1000:2000]
    assert s3.get_object(Bucket=BUCKET, Key="a.tar")["Body"].read() == DATA
    assert s3.head_object(Bucket=BUCKET, Key="dir/c.bin")["ContentLength"] == len(body)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/c.bin"]
    assert [(r.method, r.path.split("?")[0], r.range, r.outcome) for r in proxy.requests] == [
        ("PUT", "/archives/dir/c.bin", None, "forwarded"),
        ("GET", "/archives/dir/c.bin", "bytes=1000-1999", "forwarded"),
        ("GET", "/archives/a.tar", None, "forwarded"),
        ("HEAD", "/archives/dir/c.bin", None, "forwarded"),
        ("GET", "/archives", None, "forwarded"),
    ]
    signed = proxy.requests[1]
    assert signed == Request("GET", "/archives/dir/c.bin", "bytes=1000-1999", "forwarded", signed.authorization)
    assert signed.authorization.startswith("AWS4-HMAC-SHA256 Credential=")  # the client's header, recorded
    assert "list-type=2" in proxy.requests[-1].path


@pytest.mark.parametrize("code, error, retry_after", [(503, "SlowDown", "3"), (429, "TooManyRequests", "7"),
                                                      (500, "InternalError", None)])
def test_status(s3, proxy, code, error, retry_after):
    proxy.add(Fault("status", code, retry_after=retry_after))
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=BUCKET, Key="a.tar", Range="bytes=0-9")
    assert status(caught.value) == code
    assert caught.value.response["Error"]["Code"] == error
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after") == retry_after
    # used up; and the connection it came on is still good
    assert s3.get_object(Bucket=BUCKET, Key="a.tar", Range="bytes=0-9")["Body"].read() == DATA[:10]
    assert [r.outcome for r in proxy.requests] == [f"status {code}", "forwarded"]


def test_status_on_head_has_no_body(s3, proxy):
    proxy.add(Fault("status", 503, retry_after="2"))
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=BUCKET, Key="a.tar")
    assert status(caught.value) == 503
    assert caught.value.response["Error"]["Code"] == "503"  # botocore has only the status of a HEAD
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "2"
    assert s3.head_object(Bucket=BUCKET, Key="a.tar")["ContentLength"] == len(DATA)


def test_stall_times_the_client_out(s3, proxy):
    proxy.add(Fault("stall"))
    start = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        s3.get_object(Bucket=BUCKET, Key="a.tar")
    assert 0.9 < time.monotonic() - start < 2
    assert s3.get_object(Bucket=BUCKET, Key="a.tar", Range="bytes=5-6")["Body"].read() == DATA[5:7]
    assert [r.outcome for r in proxy.requests] == ["stall", "forwarded"]


def test_reset(s3, proxy):
    proxy.add(Fault("reset"))
    with pytest.raises(ConnectionClosedError) as caught:
        s3.get_object(Bucket=BUCKET, Key="a.tar")
    reason = caught.value.kwargs["error"].args[1]
    assert isinstance(reason, ConnectionResetError) and reason.errno == errno.ECONNRESET
    assert s3.head_object(Bucket=BUCKET, Key="a.tar")["ContentLength"] == len(DATA)
    assert [r.outcome for r in proxy.requests] == ["reset", "forwarded"]


def test_short_body(s3, proxy):
    proxy.add(Fault("short", cut=1000))
    got = s3.get_object(Bucket=BUCKET, Key="a.tar")
    assert got["ContentLength"] == len(DATA)  # the full length is promised
    with pytest.raises(ResponseStreamingError, match=r"IncompleteRead\(1000 bytes read, 299000 more expected\)"):
        got["Body"].read()
    assert s3.get_object(Bucket=BUCKET, Key="a.tar")["Body"].read() == DATA


def test_short_body_sends_exactly_cut_bytes(s3, proxy):
    proxy.add(Fault("short", cut=12345))
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "a.tar"})
    host, port = proxy.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", url.removeprefix(proxy.endpoint))
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") == str(len(DATA))
    with pytest.raises(http.client.IncompleteRead) as caught:
        response.read()
    assert caught.value.partial == DATA[:12345]
    conn.close()


def test_times_and_matching(s3, proxy):
    proxy.add(Fault("status", 500, method="HEAD", times=2),
              Fault("status", 503, ranged=True),
              Fault("status", 429, path_contains="list-type=2"))
    assert s3.get_object(Bucket=BUCKET, Key="a.tar")["Body"].read() == DATA  # neither HEAD nor ranged
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            s3.head_object(Bucket=BUCKET, Key="a.tar")
        assert status(caught.value) == 500
    s3.head_object(Bucket=BUCKET, Key="a.tar")  # used up
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=BUCKET, Key="a.tar", Range="bytes=0-0")
    assert status(caught.value) == 503
    with pytest.raises(ClientError) as caught:
        s3.list_objects_v2(Bucket=BUCKET)
    assert status(caught.value) == 429
    assert s3.get_object(Bucket=BUCKET, Key="a.tar", Range="bytes=0-0")["Body"].read() == DATA[:1]
    assert [(r.method, r.range, r.outcome) for r in proxy.requests] == [
        ("GET", None, "forwarded"), ("HEAD", None, "status 500"), ("HEAD", None, "status 500"),
        ("HEAD", None, "forwarded"), ("GET", "bytes=0-0", "status 503"), ("GET", None, "status 429"),
        ("GET", "bytes=0-0", "forwarded")]


def test_first_matching_fault_wins_and_always_until_clear(s3, proxy):
    proxy.add(Fault("status", 500, method="GET"), Fault("status", 503))
    proxy.always(Fault("status", 429, method="HEAD"))
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=BUCKET, Key="a.tar")
    assert status(caught.value) == 500
    with pytest.raises(ClientError) as caught:  # 503 was queued before the endless 429
        s3.head_object(Bucket=BUCKET, Key="a.tar")
    assert status(caught.value) == 503
    for _ in range(5):
        with pytest.raises(ClientError) as caught:
            s3.head_object(Bucket=BUCKET, Key="a.tar")
        assert status(caught.value) == 429
    assert s3.get_object(Bucket=BUCKET, Key="a.tar", Range="bytes=1-1")["Body"].read() == DATA[1:2]
    proxy.clear()
    assert s3.head_object(Bucket=BUCKET, Key="a.tar")["ContentLength"] == len(DATA)
    assert [r.outcome for r in proxy.requests] == (
        ["status 500", "status 503"] + ["status 429"] * 5 + ["forwarded", "forwarded"])


def test_stopping_does_not_wait_for_a_stall(moto):
    proxy = FaultProxy(moto.endpoint)
    with proxy:
        proxy.always(Fault("stall", stall=60))
        host, port = proxy.endpoint.removeprefix("http://").split(":")
        outcome: list[BaseException] = []

        def stalled() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                conn.request("GET", f"/{BUCKET}/a.tar")
                conn.getresponse()
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion below
                outcome.append(e)

        client = threading.Thread(target=stalled)
        client.start()
        while not proxy.requests:
            time.sleep(0.01)
        start = time.monotonic()
    assert time.monotonic() - start < 1
    client.join(5)
    assert not client.is_alive()
    assert isinstance(outcome[0], http.client.RemoteDisconnected)  # closed unanswered

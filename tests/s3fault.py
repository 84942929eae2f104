"""A real S3 API on 127.0.0.1 (moto in server mode) and a fault-injecting reverse proxy to put
between it and archcheck: answers 5xx/429 (with Retry-After), stalls, resets connections and
cuts bodies short, a set number of times, for testing retries, the circuit breaker and dead letters."""
from __future__ import annotations

import http.client
import math
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ACCESS_KEY = "AKIATESTSECRETKEY01"
SECRET_KEY = "test/secret+KEY/do-not-log-0123456789"  # tests grep outputs for these
REGION = "us-east-1"

_CHUNK = 64 * 1024
# hop-by-hop: the proxy decides its own framing and keep-alive towards the client
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class MotoServer:
    """moto's S3 in this process, on a port the OS picks. moto keeps its state in process-wide
    backends, so every MotoServer (and any mock_aws) in one process shares buckets; the state is
    reset on exit."""

    endpoint: str

    def __init__(self) -> None:
        self._server: Any = None
        self._buckets: set[str] = set()
        self._client: Any = None

    def __enter__(self) -> MotoServer:
        import logging

        from moto.server import ThreadedMotoServer
        # verbose=False only quiets moto's banner: werkzeug still logs every request at INFO unless told not to
        werkzeug = logging.getLogger("werkzeug")
        if werkzeug.level == logging.NOTSET:
            werkzeug.setLevel(logging.WARNING)
        # port 0: the OS picks a free port when binding, so there is no window for another process to take it
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST"),
                                        timeout=5):
                pass
        finally:
            self._server.stop()

    def client(self, endpoint: str | None = None, config: Any = None) -> Any:
        """A boto3 S3 client for this server (or `endpoint`, e.g. a FaultProxy's) with the test credentials."""
        import boto3
        from botocore.config import Config
        path_style = Config(s3={"addressing_style": "path"})
        config = path_style.merge(config) if config else path_style
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, config=config)

    def put(self, bucket: str, key: str, data_or_path: bytes | str | Path, **extra: str) -> str:
        """Upload bytes or a file's contents, creating the bucket if needed; the ETag without
        quotes. ``extra``: more of put_object's arguments (ACL="public-read")."""
        client = self._client = self._client or self.client()  # a client costs tens of milliseconds
        if bucket not in self._buckets:
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            self._buckets.add(bucket)
        if isinstance(data_or_path, bytes):
            response = client.put_object(Bucket=bucket, Key=key, Body=data_or_path, **extra)
        else:
            with open(data_or_path, "rb") as f:
                response = client.put_object(Bucket=bucket, Key=key, Body=f, **extra)
        return response["ETag"].strip('"')

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment archcheck reads to reach this server (or `endpoint`)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ALLOW_HTTP": "true"}


@dataclass
class Fault:
    kind: str  # "status" | "stall" | "reset" | "short" | "delay"
    status: int = 503  # "status": the status answered
    retry_after: str | None = None  # "status": the Retry-After header, if any
    stall: float = 30.0  # "stall": seconds before the connection is closed unanswered; "delay": before forwarding
    cut: int = 100  # "short": body bytes sent (under the full Content-Length) before the connection is closed
    times: int = 1  # how many matching requests it hits
    method: str | None = None  # match only this method
    ranged: bool | None = None  # match only requests with (True) / without (False) a Range header
    path_contains: str | None = None  # match only paths (with the query string) containing this
    range_prefix: str | None = None  # match only Range headers starting with this ("bytes=8388608-")

    def __post_init__(self) -> None:
        if self.kind not in ("status", "stall", "reset", "short", "delay"):
            raise ValueError(f"unknown fault kind {self.kind!r}")

    def matches(self, method: str, path: str, range_: str | None) -> bool:
        return ((self.method is None or self.method.upper() == method)
                and (self.ranged is None or self.ranged == (range_ is not None))
                and (self.path_contains is None or self.path_contains in path)
                and (self.range_prefix is None or (range_ or "").startswith(self.range_prefix)))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None
    outcome: str  # "forwarded", "status 503", "stall", "reset" or "short"
    authorization: str | None = None  # the request's Authorization header
    request_payer: str | None = None  # its x-amz-request-payer header (a requester-pays bucket's)


_ERROR_CODES = {400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey", 429: "TooManyRequests",
                500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}


def _error_body(status: int) -> bytes:
    code = _ERROR_CODES.get(status) or HTTPStatus(status).phrase.replace(" ", "")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by s3fault</Message><RequestId>S3FAULT</RequestId></Error>").encode()


class FaultProxy:
    """A reverse proxy to `upstream` on 127.0.0.1 that applies queued faults to matching requests."""

    endpoint: str
    requests: list[Request]

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._faults: list[list[Any]] = []  # [fault, hits left]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self.requests = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="s3fault-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()  # wakes stalls
        self._server.shutdown()
        self._server.server_close()
        # handler threads of idle keep-alive connections wait for a next request: end them
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread:
            self._thread.join()

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend([fault, fault.times] for fault in faults)

    def always(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append([fault, math.inf])

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, method: str, path: str, range_: str | None, authorization: str | None = None,
              request_payer: str | None = None) -> Fault | None:
        """The first matching fault not used up (counted down), recording the request."""
        with self._lock:
            for slot in self._faults:
                fault, left = slot
                if left > 0 and fault.matches(method, path, range_):
                    slot[1] = left - 1
                    break
            else:
                fault = None
            outcome = "forwarded" if fault is None else (
                f"status {fault.status}" if fault.kind == "status" else fault.kind)
            self.requests.append(Request(method, path, range_, outcome, authorization, request_payer))
            return fault


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # FaultProxy.__exit__ ends the connections instead
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are expected here
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.proxy._lock:
            self.server.proxy._sockets.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        proxy = self.server.proxy
        fault = proxy._take(self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization"),
                            self.headers.get("x-amz-request-payer"))
        if fault is None:
            self._forward(None)
        elif fault.kind == "status":
            for _ in self._request_body():  # keeps the connection usable for the next request
                pass
            body = _error_body(fault.status)
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        elif fault.kind == "stall":
            proxy._stopping.wait(fault.stall)
            self.close_connection = True
        elif fault.kind == "delay":  # a slow store: answered, late
            proxy._stopping.wait(fault.stall)
            self._forward(None)
        elif fault.kind == "reset":
            # linger on with timeout 0: close() sends RST, so the client sees ECONNRESET rather than EOF
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # its reference would otherwise delay the socket's real close
            self.connection.close()
            self.close_connection = True
        else:
            self._forward(fault.cut)

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _request_body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, _CHUNK))
            if not chunk:
                raise ConnectionError("the client hung up mid-body")
            left -= len(chunk)
            yield chunk

    def _forward(self, cut: int | None) -> None:
        """Relay the request upstream and the answer back, streaming; with `cut`, only that much
        of the body is sent before the connection is closed."""
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        upstream = http.client.HTTPConnection(*self.server.proxy._upstream, timeout=60)
        try:
            # putrequest/putheader: the client's headers exactly, Host and Authorization included
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                upstream.putheader(name, value)
            upstream.endheaders(self._request_body(), encode_chunked=chunked)
            response = upstream.getresponse()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP:
                    self.send_header(name, value)
            bodiless = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
            if response.getheader("Content-Length") is None and not bodiless:
                self.send_header("Connection", "close")  # the body then ends when the connection does
                self.close_connection = True
            self.end_headers()
            if bodiless:
                return
            sent = 0
            while cut is None or sent < cut:
                chunk = response.read(_CHUNK if cut is None else min(_CHUNK, cut - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
            if cut is not None:
                self.close_connection = True
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # the client sees a cut answer (or none), as from a real store
        finally:
            upstream.close()

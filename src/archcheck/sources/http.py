"""https:// (and http:// with AWS_ALLOW_HTTP=true) through urllib3: HEAD for size and ETag,
ranged GETs with If-Match. The server must serve byte ranges."""
from __future__ import annotations

import os
from email.utils import formatdate, parsedate_to_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from ..errors import SourceChanged, SourceError, UsageError
from .remote import ObjectInfo, RemoteOptions
from .resilience import Transient, parse_retry_after

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def check_url(uri: str) -> None:
    """No secrets in a URL: archcheck writes archive URIs into manifests and reports."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise UsageError("a URL with credentials in it would be written into manifests and reports: "
                         "serve the archive without them, or from S3 with credentials in the environment")
    if parts.query:
        raise UsageError("a URL with a query (a signed URL's signature is a secret) would be written into "
                         "manifests and reports: give the archive's plain URL")
    if parts.scheme == "http" and os.environ.get("AWS_ALLOW_HTTP", "").lower() != "true":
        raise UsageError(f"{uri} is plain http: set AWS_ALLOW_HTTP=true to allow it")


@lru_cache(maxsize=8)
def _pool(timeout: float, size: int) -> Any:
    import urllib3
    return urllib3.PoolManager(maxsize=max(size, 2), retries=False,
                               timeout=urllib3.Timeout(connect=timeout, read=timeout))


class HttpTransport:
    def __init__(self, uri: str, options: RemoteOptions):
        check_url(uri)
        self.url = uri
        self.endpoint = urlsplit(uri).netloc
        self.pool = _pool(options.timeout, options.in_flight + 2)

    def head(self) -> ObjectInfo:
        response = self._request("HEAD", {})
        response.release_conn()
        if response.status != 200:
            self._fail(response)
        if response.headers.get("Accept-Ranges", "").lower() != "bytes":
            raise SourceError(f"{self.url}: the server does not serve byte ranges (Accept-Ranges)")
        modified = response.headers.get("Last-Modified")
        mtime = _mtime_ns(modified) if modified else 0
        return ObjectInfo(int(response.headers.get("Content-Length", 0)), _etag(response.headers), None, mtime)

    def get(self, start: int, end: int, pinned: ObjectInfo) -> bytes:
        """A range of the pinned object: a strong ETag is asked for (If-Match); without one
        (none, or weak, which If-Match never matches) the modification time is, and checked."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        strong = bool(pinned.etag) and not pinned.etag.startswith("W/")
        if strong:
            headers["If-Match"] = f'"{pinned.etag}"'
        elif pinned.mtime_ns:
            headers["If-Unmodified-Since"] = formatdate(pinned.mtime_ns / 1e9, usegmt=True)
        response = self._request("GET", headers)
        whole = False
        try:
            if response.status != 206:
                self._fail(response)
            self._check_same(response.headers, pinned)
            data = self._read(response, end - start)
            whole = len(data) == end - start
        finally:  # a connection is reused only when its answer was read to the end
            response.release_conn() if whole else response.close()
        if len(data) != end - start:
            raise Transient(f"a short body: {len(data)} of {end - start} bytes")
        return data

    def _check_same(self, headers: Any, pinned: ObjectInfo) -> None:
        etag = _etag(headers)
        if pinned.etag and etag and etag != pinned.etag:
            raise SourceChanged(f"replaced: its ETag is {etag}, not {pinned.etag}")
        total = headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit() and int(total) != pinned.size:
            raise SourceChanged(f"its size is {total}, not {pinned.size}")
        modified = headers.get("Last-Modified")
        if not pinned.etag and modified and pinned.mtime_ns and _mtime_ns(modified) != pinned.mtime_ns:
            raise SourceChanged("replaced: its modification time differs")

    def _read(self, response: Any, length: int, stored: bool = True) -> bytes:
        """At most ``length`` bytes: a body longer than asked for is never held whole.
        ``stored``: the bytes as sent (a range of a gzip-encoded object is of its gzip bytes);
        else decoded, as for a JSON reply."""
        import urllib3
        try:
            return response.read(length, decode_content=not stored)
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # timeouts, resets, short bodies
            raise Transient(f"{type(exc).__name__}") from None

    def _request(self, method: str, headers: dict[str, str], url: str | None = None) -> Any:
        import urllib3
        url = url or self.url
        self._authorize(method, url, headers)
        try:
            return self.pool.request(method, url, headers=headers, preload_content=False, redirect=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # timeouts, resets
            raise Transient(f"{type(exc).__name__}") from None

    def _authorize(self, method: str, url: str, headers: dict[str, str]) -> None:
        """A plain URL is read without credentials."""

    def _fail(self, response: Any) -> None:
        status = response.status
        if status in TRANSIENT_STATUS:
            raise Transient(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
        if status == 412:
            raise SourceChanged("replaced: its ETag no longer matches")
        if status in (404, 410):
            raise SourceChanged("removed")
        if status == 200:
            raise SourceError(f"{self.url}: the server ignored the Range header: it does not serve byte ranges")
        raise OSError(5, f"{self.url}: HTTP {status}")


def _etag(headers: Any) -> str:
    """The ETag without quotes; a weak one keeps its W/ (it pins nothing byte for byte)."""
    value = headers.get("ETag", "")
    weak = value.startswith("W/")
    return ("W/" if weak else "") + value.removeprefix("W/").strip('"')


def _mtime_ns(http_date: str) -> int:
    try:
        return int(parsedate_to_datetime(http_date).timestamp() * 1e9)
    except (TypeError, ValueError):
        return 0

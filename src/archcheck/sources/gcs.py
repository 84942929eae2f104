"""gs:// through Google Cloud Storage's JSON API (urllib3, as https:// is read), with
credentials from google-auth: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
gcloud's login, or the metadata server of a Google Cloud machine), refreshed as they expire.

The object is pinned by its generation, which only a new write changes (its JSON etag and
``updated`` change with its metadata too: a label or a hold is not a new archive). Every range
asks for that generation (ifGenerationMatch), so the bytes of a replaced object are never
judged. STORAGE_EMULATOR_HOST (the variable Google's own clients read) points at another
endpoint, such as a local emulator: read without credentials unless GOOGLE_APPLICATION_CREDENTIALS
is set, and over plain http only with AWS_ALLOW_HTTP=true (the one switch for plain http, as
for s3:// and http://)."""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import SourceChanged, SourceError, UsageError
from .http import HttpTransport, _pool
from .listing import matching
from .remote import ObjectInfo, RemoteOptions
from .resilience import Transient

API = "https://storage.googleapis.com"
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
_TOKEN_LOCK = threading.Lock()  # one refresh at a time, whichever thread finds the token stale


def parse(uri: str) -> tuple[str, str]:
    """(bucket, object name) of gs://bucket/name."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket or not name:
        raise UsageError(f"{uri}: a Google Cloud Storage archive is gs://BUCKET/OBJECT")
    return bucket, name


def api_base() -> str:
    """The JSON API's base URL from this process's environment, checked."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        return API
    base = (host if "://" in host else f"http://{host}").rstrip("/")
    parts = urlsplit(base)
    if parts.username or parts.password or parts.query:
        raise UsageError("STORAGE_EMULATOR_HOST has credentials or a query in it: archcheck writes "
                         "endpoints into errors; give HOST:PORT")
    if parts.scheme.lower() == "http" and os.environ.get("AWS_ALLOW_HTTP", "").lower() != "true":
        raise UsageError(f"the Google Cloud Storage endpoint {base} is plain http: set AWS_ALLOW_HTTP=true "
                         "to allow it")
    return base


def _credentials(base: str) -> Any:
    """Application Default Credentials, once per process; None (anonymous) with
    GOOGLE_SKIP_SIGNATURE=true (the name obstore reads), for a public bucket, or for an
    emulator when none are named."""
    if os.environ.get("GOOGLE_SKIP_SIGNATURE", "").lower() == "true":
        return None
    return _default_credentials(base)


@lru_cache(maxsize=4)
def _default_credentials(base: str) -> Any:
    if base != API and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    try:
        credentials, _ = google.auth.default(scopes=[READ_ONLY])
    except DefaultCredentialsError:
        raise SourceError("no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service "
                          "account key file, or run `gcloud auth application-default login`") from None
    return credentials


class GcsTransport(HttpTransport):
    def __init__(self, uri: str, options: RemoteOptions):
        self.bucket, self.name = parse(uri)
        self.base = options.gcs or api_base()  # the coordinator's, in a worker
        self.url = f"{self.base}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(self.name, safe='')}"
        self.endpoint = urlsplit(self.base).netloc
        self.pool = _pool(options.timeout, options.in_flight + 2)
        self.credentials = _credentials(self.base)

    def head(self) -> ObjectInfo:
        resource = self._json(self.url)
        try:  # crc32c: the content's checksum (composite objects have no md5Hash)
            return ObjectInfo(int(resource["size"]), str(resource.get("crc32c") or resource.get("md5Hash") or ""),
                              str(resource["generation"]), _mtime_ns(resource.get("timeCreated")))
        except (KeyError, TypeError, ValueError):
            raise OSError(5, f"gs://{self.bucket}/{self.name}: an object resource without its size or generation") \
                from None

    def get(self, start: int, end: int, pinned: ObjectInfo) -> bytes:
        # Accept-Encoding: an object stored gzip-encoded is served as stored, ranges and all
        # (else Google decompresses it and ignores the range)
        url = f"{self.url}?alt=media&ifGenerationMatch={quote(str(pinned.version), safe='')}"
        response = self._request("GET", {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "gzip"}, url)
        whole = False
        try:
            if response.status != 206:
                self._fail(response)
            generation = response.headers.get("x-goog-generation")
            if generation and generation != pinned.version:  # an endpoint that ignores the condition
                raise SourceChanged(f"replaced: its generation is {generation}, not {pinned.version}")
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) != pinned.size:
                raise SourceChanged(f"replaced: its size is {total}, not {pinned.size}")
            data = self._read(response, end - start)
            whole = len(data) == end - start
        finally:  # a connection is reused only when its answer was read to the end
            response.release_conn() if whole else response.close()
        if not whole:
            raise Transient(f"a short body: {len(data)} of {end - start} bytes")
        return data

    def list(self, pattern: str) -> list[str]:
        """Object names matching a glob (listing.py)."""
        listing = f"{self.base}/storage/v1/b/{quote(self.bucket, safe='')}/o"

        def page(prefix: str, token: str | None) -> tuple[list[str], str | None]:
            found = self._json(f"{listing}?fields=items(name),nextPageToken&prefix={quote(prefix, safe='')}"
                               + (f"&pageToken={quote(token, safe='')}" if token else ""))
            try:
                return [str(item["name"]) for item in found.get("items", [])], found.get("nextPageToken") or None
            except (KeyError, TypeError, AttributeError):
                raise OSError(5, f"gs://{self.bucket}: a listing that is not one") from None
        return matching(pattern, page)

    def _json(self, url: str) -> dict[str, Any]:
        response = self._request("GET", {"Accept": "application/json"}, url)
        try:
            if response.status != 200:
                self._fail(response)
            body = self._read(response, 16 * 1024 * 1024, stored=False)
        finally:
            response.release_conn()
        try:
            reply = json.loads(body)
        except ValueError:
            raise Transient("a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise OSError(5, f"gs://{self.bucket}: a reply that is not a JSON object")
        return reply

    def _fail(self, response: Any) -> None:
        if response.status == 412:
            raise SourceChanged("replaced: its generation no longer matches")
        if response.status in (401, 403):  # opening: exit 5; mid-run: a dead letter, as for s3://
            raise OSError(13, f"gs://{self.bucket}/{self.name}: access denied (HTTP {response.status})")
        super()._fail(response)

    def _authorize(self, method: str, url: str, headers: dict[str, str]) -> None:
        if self.credentials is None:
            return
        from google.auth import exceptions
        from google.auth.transport.urllib3 import Request
        with _TOKEN_LOCK:
            try:
                self.credentials.before_request(Request(self.pool), method, url, headers)
            except exceptions.RefreshError as exc:
                # the metadata server or the token endpoint unreachable, or answering 5xx: retried
                if getattr(exc, "retryable", False) or isinstance(exc.__cause__, exceptions.TransportError):
                    raise Transient("a token refresh failed") from None
                raise OSError(13, "Google Cloud refused the credentials (GOOGLE_APPLICATION_CREDENTIALS "
                                  "or the machine's)") from None
            except exceptions.TransportError:
                raise Transient("a token refresh failed") from None
            except exceptions.GoogleAuthError as exc:  # type only: its text can quote a token reply
                raise OSError(13, f"Google Cloud credentials failed: {type(exc).__name__}") from None


def _mtime_ns(rfc3339: Any) -> int:
    try:
        return int(datetime.fromisoformat(str(rfc3339).replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0

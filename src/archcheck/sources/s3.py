"""s3:// through botocore: SigV4, the standard credential chain and endpoint settings, and
errors that carry their HTTP status and headers (Retry-After), which our retries need.
botocore's own retries are off: resilience.py is the one retry layer."""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import SourceChanged, SourceError, UsageError
from .listing import matching
from .remote import ObjectInfo, RemoteOptions
from .resilience import Transient, parse_retry_after

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def parse(uri: str) -> tuple[str, str]:
    """(bucket, key) of s3://bucket/key."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise UsageError(f"{uri}: an S3 archive is s3://BUCKET/KEY")
    return bucket, key


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def check_endpoint() -> None:
    """Plain http sends requests (signed, but readable) in the clear: only when asked for."""
    url = endpoint_url()
    if url and url.startswith("http://") and os.environ.get("AWS_ALLOW_HTTP", "").lower() != "true":
        raise UsageError(f"the S3 endpoint {url} is plain http: set AWS_ALLOW_HTTP=true to allow it")


@dataclass(frozen=True)
class S3Settings:
    """The store as the coordinator's environment names it; handed to workers, which may run
    on other machines (Dask). Never credentials."""

    endpoint: str | None  # None: AWS
    region: str
    unsigned: bool = False  # a public bucket: no request signed, no credentials looked for
    requester_pays: bool = False  # the reader, not the bucket's owner, pays for its requests


def settings() -> S3Settings:
    """From this process's environment, checked. The names are obstore's:
    AWS_SKIP_SIGNATURE=true (the AWS CLI's --no-sign-request) and AWS_REQUEST_PAYER=true (its
    --request-payer requester, which a requester-pays bucket refuses requests without)."""
    check_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return S3Settings(endpoint_url(), region, _true("AWS_SKIP_SIGNATURE"), _true("AWS_REQUEST_PAYER"))


def _true(name: str) -> bool:
    return os.environ.get(name, "").lower() == "true"


_SESSION_LOCK = threading.Lock()  # a botocore session is not thread-safe; its clients are


@lru_cache(maxsize=1)
def _session() -> Any:
    """One session per process: it keeps the service models it has loaded, so that each
    client after the first costs milliseconds, not tenths of a second."""
    import botocore.session
    return botocore.session.get_session()


@lru_cache(maxsize=8)
def _client(timeout: float, pool: int, endpoint: str | None, region: str, unsigned: bool = False) -> Any:
    """One client per process and settings."""
    from botocore import UNSIGNED
    from botocore.config import Config
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout,
                    max_pool_connections=max(pool, 2), s3={"addressing_style": "path"} if endpoint else None,
                    signature_version=UNSIGNED if unsigned else None)
    with _SESSION_LOCK:
        return _session().create_client("s3", region_name=region, endpoint_url=endpoint, config=config)


def warm() -> None:
    """Load botocore and S3's service model into this process (the worker server, before it
    forks: each worker then makes its client in milliseconds). The credentials given here are
    placeholders, bound to this throwaway client only, so that no credential provider runs (an
    instance role's lookup is a network call); botocore reads its config files as each worker
    would; no request is made."""
    try:
        with _SESSION_LOCK:
            _session().create_client("s3", region_name="us-east-1", aws_access_key_id="warm-up",
                                     aws_secret_access_key="warm-up")
    except Exception:  # noqa: BLE001 - a cold worker is slower, not wrong
        pass


class S3Transport:
    def __init__(self, uri: str, options: RemoteOptions):
        store = options.s3 or settings()  # the coordinator's, in a worker
        self.bucket, self.key = parse(uri)
        self.endpoint = store.endpoint or "s3.amazonaws.com"
        self.client = _client(options.timeout, options.in_flight + 2, store.endpoint, store.region, store.unsigned)
        self.payer = {"RequestPayer": "requester"} if store.requester_pays else {}  # on every request

    def head(self) -> ObjectInfo:
        response = _call(lambda: self.client.head_object(Bucket=self.bucket, Key=self.key, **self.payer), self.key)
        return ObjectInfo(int(response["ContentLength"]), response["ETag"].strip('"'), response.get("VersionId"),
                          int(response["LastModified"].timestamp() * 1e9))

    def get(self, start: int, end: int, pinned: ObjectInfo) -> bytes:
        extra = {"VersionId": pinned.version, **self.payer} if pinned.version else self.payer
        response = _call(lambda: self.client.get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end - 1}", IfMatch=f'"{pinned.etag}"', **extra),
            self.key)
        etag = response.get("ETag", "").strip('"')
        if etag and etag != pinned.etag:  # a store that ignores If-Match
            response["Body"].close()
            raise SourceChanged(f"replaced: its ETag is {etag}, not {pinned.etag}")
        data = _call(lambda: response["Body"].read(), self.key)
        if len(data) != end - start:
            raise Transient(f"a short body: {len(data)} of {end - start} bytes")
        return data

    def list(self, pattern: str) -> list[str]:
        """Keys matching a glob (listing.py)."""
        def page(prefix: str, token: str | None) -> tuple[list[str], str | None]:
            extra = {"ContinuationToken": token, **self.payer} if token else self.payer
            found = _call(lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **extra), prefix)
            more = found.get("IsTruncated") and found.get("NextContinuationToken")
            return [o["Key"] for o in found.get("Contents", [])], more or None
        return matching(pattern, page)


def _call(request, key: str) -> Any:
    """botocore's errors as ours: Transient, SourceChanged, SourceError or OSError."""
    from botocore import exceptions as bx
    try:
        return request()
    except bx.ClientError as exc:
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        code = exc.response.get("Error", {}).get("Code", "")
        said = f"HTTP {status} {code}".strip()
        if status in TRANSIENT_STATUS or code in ("SlowDown", "RequestTimeout", "InternalError"):
            raise Transient(said, parse_retry_after(meta.get("HTTPHeaders", {}).get("retry-after"))) from None
        if status == 412 or code == "PreconditionFailed":
            raise SourceChanged("replaced: its ETag no longer matches") from None
        if status == 404 or code in ("NoSuchKey", "NotFound"):
            raise SourceChanged("removed") from None
        if status == 416:
            raise SourceChanged("shrank: a range past its end") from None
        raise OSError(5, f"{key}: {said}") from None
    except (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError, bx.IncompleteReadError) as exc:
        raise Transient(type(exc).__name__ + ": " + _brief(exc)) from None
    except bx.NoCredentialsError:
        raise SourceError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)") from None
    except bx.BotoCoreError as exc:
        raise OSError(5, f"{key}: {type(exc).__name__}") from None


def _brief(exc: Exception) -> str:
    """An error's first line, without its URL's query (which can carry a signature)."""
    return re.sub(r"\?\S*", "?…", str(exc).splitlines()[0] if str(exc) else "")[:200]

"""Where archive bytes come from.

A source has two faces: an async one for the coordinating process (``Source``: identity,
small range reads) and a picklable ``SourceRef`` that worker processes open to read the
ranges they are given, so bytes never travel through the task queue. Local files, and objects
behind s3:// and https:// (remote.py), which workers read straight from storage.
"""
from __future__ import annotations

import os

from .base import ArchiveIdentity, FileStamp, RangeReader, Source, SourceRef
from .local import LocalFile, LocalFileRef, open_local

__all__ = ["ArchiveIdentity", "FileStamp", "RangeReader", "Source", "SourceRef", "LocalFile", "LocalFileRef",
           "open_source", "is_remote", "transport_for", "list_objects"]

SCHEMES = ("s3://", "https://", "http://")
NOT_YET = ("gs://", "az://", "abfs://")


def is_remote(location: str | os.PathLike) -> bool:
    text = str(location)
    return text.startswith(SCHEMES + NOT_YET)


def transport_for(uri: str, options):
    from ..errors import UsageError
    if uri.startswith("s3://"):
        from .s3 import S3Transport
        return S3Transport(uri, options)
    if uri.startswith(("https://", "http://")):
        from .http import HttpTransport
        return HttpTransport(uri, options)
    raise UsageError(f"{uri}: gs:// and az:// are not supported yet; s3:// (any S3-compatible store, "
                     "Google Cloud Storage's included) and https:// are")


def open_source(location: str | os.PathLike, options=None) -> Source:
    """Open an archive (a path or a URI), or raise SourceError with one clear sentence."""
    if not is_remote(location):
        return open_local(location)
    from ..errors import SourceChanged, SourceError
    from .remote import RemoteOptions, RemoteSource
    from .resilience import GaveUp, retrying
    uri = str(location)
    options = options or RemoteOptions()
    if uri.startswith("s3://") and options.s3 is None:  # workers get the store this process resolved
        from dataclasses import replace
        from .s3 import settings
        options = replace(options, s3=settings())
    transport = transport_for(uri, options)
    try:
        info = retrying(transport.head, f"{uri}: HEAD", options.policy, transport.endpoint)
    except SourceChanged:
        raise SourceError(f"{uri}: no such object") from None
    except GaveUp as exc:
        raise SourceError(f"cannot reach {exc.strerror}") from None
    except OSError as exc:
        raise SourceError(f"{uri}: cannot open: {exc.strerror or exc}") from None
    if info.size == 0:
        raise SourceError(f"{uri} is empty: an empty object is no backup")
    return RemoteSource(uri, transport, info, options)


def list_objects(pattern: str) -> list[str]:
    """The URIs a glob in a plan matches (s3:// only: plain https has no listing)."""
    from ..errors import UsageError
    if not pattern.startswith("s3://"):
        raise UsageError(f"{pattern}: only s3:// globs can be listed")
    from .remote import RemoteOptions
    from .s3 import S3Transport, parse
    bucket, key = parse(pattern)
    return [f"s3://{bucket}/{k}" for k in S3Transport(pattern, RemoteOptions()).list(key)]

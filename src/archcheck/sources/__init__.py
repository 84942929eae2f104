"""Where archive bytes come from.

A source has two faces: an async one for the coordinating process (``Source``: identity,
small range reads) and a picklable ``SourceRef`` that worker processes open to read the
ranges they are given, so bytes never travel through the task queue. Local files, and objects
behind s3://, gs:// and https:// (remote.py), which workers read straight from storage.
"""
from __future__ import annotations

import os

from .base import ArchiveIdentity, FileStamp, RangeReader, Source, SourceRef
from .local import LocalFile, LocalFileRef, open_local

__all__ = ["ArchiveIdentity", "FileStamp", "LISTED", "RangeReader", "Source", "SourceRef", "LocalFile", "LocalFileRef",
           "open_source", "is_remote", "transport_for", "list_objects"]

SCHEMES = ("s3://", "gs://", "https://", "http://")
NOT_YET = ("az://", "abfs://")


def is_remote(location: str | os.PathLike) -> bool:
    text = str(location)
    return text.startswith(SCHEMES + NOT_YET)


def transport_for(uri: str, options):
    from ..errors import UsageError
    if uri.startswith("s3://"):
        from .s3 import S3Transport
        return S3Transport(uri, options)
    if uri.startswith("gs://"):
        from .gcs import GcsTransport
        return GcsTransport(uri, options)
    if uri.startswith(("https://", "http://")):
        from .http import HttpTransport
        return HttpTransport(uri, options)
    raise UsageError(f"{uri}: az:// is not supported yet; s3:// (any S3-compatible store), gs:// and "
                     "https:// (an Azure blob's URL, public or behind a proxy that signs) are")


def open_source(location: str | os.PathLike, options=None) -> Source:
    """Open an archive (a path or a URI), or raise SourceError with one clear sentence."""
    if not is_remote(location):
        return open_local(location)
    from ..errors import SourceError
    from .remote import RemoteOptions, RemoteSource
    uri = str(location)
    options = _resolved(uri, options or RemoteOptions())
    transport = transport_for(uri, options)
    info = _ask(transport.head, uri, "HEAD", options, transport.endpoint,
                gone="no such object", unreachable="cannot reach", failed="cannot open")
    if info.size == 0:
        raise SourceError(f"{uri} is empty: an empty object is no backup")
    return RemoteSource(uri, transport, info, options)


def _resolved(uri: str, options):
    """Workers (on other machines too) get the store this process resolved from its environment."""
    from dataclasses import replace
    if uri.startswith("s3://") and options.s3 is None:
        from .s3 import settings
        return replace(options, s3=settings())
    if uri.startswith("gs://") and options.gcs is None:
        from .gcs import api_base
        return replace(options, gcs=api_base())
    return options


LISTED = ("s3://", "gs://")  # plain https has no listing


def list_objects(pattern: str, options=None) -> list[str]:
    """The URIs a glob in a plan matches; a listing that fails (after retries) is one clear line."""
    from ..errors import UsageError
    if not pattern.startswith(LISTED):
        raise UsageError(f"{pattern}: only s3:// and gs:// globs can be listed")
    from .remote import RemoteOptions
    options = _resolved(pattern, options or RemoteOptions())
    scheme, _, rest = pattern.partition("://")
    bucket, _, name = rest.partition("/")
    transport = transport_for(pattern, options)
    keys = _ask(lambda: transport.list(name), pattern, "listing", options, transport.endpoint,
                gone="no such bucket", unreachable="cannot list", failed="cannot list")
    return [f"{scheme}://{bucket}/{key}" for key in keys]


def _ask(request, uri: str, what: str, options, endpoint: str, gone: str, unreachable: str, failed: str):
    """A request of the coordinator's, retried; what still fails is one clear sentence."""
    from ..errors import SourceChanged, SourceError
    from .resilience import GaveUp, retrying
    try:
        return retrying(request, f"{uri}: {what}", options.policy, endpoint)
    except SourceChanged:
        raise SourceError(f"{uri}: {gone}") from None
    except GaveUp as exc:
        raise SourceError(f"{unreachable} {exc.strerror}") from None
    except OSError as exc:
        raise SourceError(f"{uri}: {failed}: {exc.strerror or exc}") from None

"""Where archive bytes come from.

A source has two faces: an async one for the coordinating process (``Source``: identity,
small range reads) and a picklable ``SourceRef`` that worker processes open to read the
ranges they are given, so bytes never travel through the task queue.
"""
from .base import ArchiveIdentity, FileStamp, RangeReader, Source, SourceRef
from .local import LocalFile, LocalFileRef, open_source

__all__ = ["ArchiveIdentity", "FileStamp", "RangeReader", "Source", "SourceRef", "LocalFile", "LocalFileRef",
           "open_source"]

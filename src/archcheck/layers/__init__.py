"""Checks over the byte stream. Pure: they know nothing of the pipeline, manifest or CLI."""

ALL_LAYERS = ("raw", "zstd", "tar", "members", "pages")

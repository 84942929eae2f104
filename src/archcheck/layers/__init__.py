"""Checks over the byte stream. Pure: they know nothing of the pipeline, manifest or CLI."""

ALL_LAYERS = ("raw", "zstd", "tar", "members", "pages")

# Defaults the command line shows, here so that `archcheck --help` loads no layer to show them
LEAF_SIZE = 8 * 1024 * 1024  # raw: BLAKE3 leaves of the archive file (segments are multiples)
DEFAULT_DIGEST = "xxh3-128"  # members
DEFAULT_MAX_WINDOW = 1 << 31  # zstd

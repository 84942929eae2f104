"""Reports render from the manifest alone."""
from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte of a name that is not UTF-8 (os.fsdecode's stand-in)
        return f"\\x{ord(char) - 0xdc00:02x}"  # written out raw, 0x9b is a terminal's CSI
    return char.encode("unicode_escape").decode("ascii")


def safe_text(text: str) -> str:
    """Untrusted text (member names, paths) made inert: control, C1 and bidi characters, and
    the bytes of names that are not UTF-8, are shown as escapes, so no escape sequence reaches
    a terminal. Markup is handled by rendering through rich ``Text`` objects, which never parse
    markup."""
    return _UNSAFE.sub(lambda m: _escape(m.group()), text)

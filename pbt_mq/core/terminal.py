"""Text that anyone may have written (a categorical value, a worker id, an error) shown on a terminal.

Whoever may launch an experiment or write to Redis must not be able to write to a viewer's terminal:
control characters (ESC sequences that set a title, clear the screen, hide text), C1 controls and the
bidirectional overrides that reorder what is shown are printed as visible escapes instead. The CLI
wraps its stdout and stderr in ``SafeStream`` (``cli.options.run``); ``pbt top``, which draws with ANSI
itself, cleans its data with ``safe_tree`` before drawing.
"""

from __future__ import annotations

import io
import re
from typing import Any, TextIO

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """``text`` with every unsafe character as a visible escape (newline and tab kept)."""
    return UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                      text)


def safe_tree(obj: Any) -> Any:
    """Every string in a JSON-like tree (dict keys too), escaped."""
    if isinstance(obj, str):
        return escape_controls(obj)
    if isinstance(obj, dict):
        return {safe_tree(k): safe_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(safe_tree(v) for v in obj)
    return obj


class SafeStream(io.TextIOBase):
    """A text stream that escapes what ``escape_controls`` escapes, and otherwise passes through."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, s: str) -> int:
        self.inner.write(escape_controls(s))
        return len(s)

    def flush(self) -> None:
        self.inner.flush()

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return self.inner.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

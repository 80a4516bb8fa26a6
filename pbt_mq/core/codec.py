"""How a record's field travels as a Redis string, both ways (``core.model``'s records use it).

Encoding is one way per kind (str, int, float, "json", bytes, a state enum). Decoding reads what anyone may
have written: it raises ``ValueError`` with a short reason ("not an integer", "not one of ...") that
``Record.decode`` turns into the record's ``problems``, never into an exception out of a reader.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any


def encode_value(kind: Any, value: Any) -> Any:
    if value is None:
        return ""
    if kind == "json":
        return json.dumps(value, sort_keys=True)
    if kind is float:
        return repr(float(value))
    if kind is bytes:
        return bytes(value)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind(value).value
    if kind is str and isinstance(value, bytes):
        return value.decode(errors="replace")
    return kind(value)


def decode_value(kind: Any, raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    if kind is bytes:
        return raw if isinstance(raw, bytes) else raw.encode()
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    if text == "" and kind is not str:
        return None
    try:
        if kind == "json":
            return json.loads(text)
        if kind is float:
            return float(text)
        if kind is int:
            return int(float(text)) if "." in text or "e" in text else int(text)
    except (ValueError, OverflowError):
        raise ValueError({"json": "not JSON", float: "not a number", int: "not an integer"}[kind]) from None
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"not one of {', '.join(v.value for v in kind)}") from None
    return text


def check_shape(annotation: Any, kind: Any, value: Any, raw: Any) -> None:
    """A JSON field must hold what its annotation says (a dict, a list), numbers must be finite where
    an int is meant; raises ValueError otherwise."""
    if value is None or kind != "json":
        return
    want = str(annotation)
    if want.startswith("dict") and not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if want.startswith("list") and not isinstance(value, list):
        raise ValueError("not a JSON list")


def shown(raw: Any, limit: int = 60) -> str:
    """A raw Redis value for a message: decoded, control characters escaped, cut to ``limit`` characters."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    out = repr(text[:limit]) + ("..." if len(text) > limit else "")
    return out

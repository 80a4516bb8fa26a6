"""Reading one TOML table with every error naming its key path, and leftovers reported as typos."""

from __future__ import annotations

import difflib
import math
from typing import Any


class ConfigError(ValueError):
    """A broken experiment file; str() is one line: ``key.path: what is wrong``."""


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_MISSING = object()


class Reader:
    """Reads one table, remembering which keys were used so leftovers are reported."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{path.rstrip('.') or 'file'}: must be a table, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def keys(self) -> list[str]:
        self.used.update(self.data)
        return list(self.data)

    def get(self, key: str, default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            spare = [k for k in self.data if k not in self.used and isinstance(k, str)]
            hint = difflib.get_close_matches(key, spare, n=1)
            tip = f" (found '{hint[0]}': a typo?)" if hint else ""
            raise ConfigError(f"{self.path}{key}: required{tip}")
        return default

    def table(self, key: str, optional: bool = False) -> Reader:
        value = self.get(key, {} if optional else _MISSING)
        return Reader(value, f"{self.path}{key}.")

    def raw_table(self, key: str) -> dict[str, Any]:
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}{key}: must be a table")
        return dict(value)

    def str(self, key: str, default: Any = _MISSING) -> Any:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{self.path}{key}: must be a non-empty string, got {v!r}")
        return v

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.path}{key}: must be true or false, got {v!r}")
        return v

    def choice(self, key: str, options: tuple[str, ...], default: Any = _MISSING) -> Any:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if v not in options:
            raise ConfigError(f"{self.path}{key}: must be one of {', '.join(options)}; got {v!r}")
        return v

    def int(self, key: str, default: Any = _MISSING, low: int | None = None, high: int | None = None) -> Any:
        v = self.get(key, default)
        if v is None and default is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.path}{key}: must be an integer, got {v!r}")
        self._bounds(key, v, low, high)
        return v

    def float(
        self, key: str, default: Any = _MISSING, low: float | None = None, high: float | None = None
    ) -> Any:
        v = self.get(key, default)
        if v is None and default is None:
            return None
        if not is_number(v) or not math.isfinite(v):
            raise ConfigError(f"{self.path}{key}: must be a finite number, got {v!r}")
        self._bounds(key, v, low, high)
        return float(v)

    def _bounds(self, key: str, v: float, low: float | None, high: float | None) -> None:
        if low is not None and v < low:
            raise ConfigError(f"{self.path}{key}: must be >= {low}, got {v}")
        if high is not None and v > high:
            raise ConfigError(f"{self.path}{key}: must be <= {high}, got {v}")

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            key = extra[0]
            hint = difflib.get_close_matches(key, sorted(self.used), n=1)
            tip = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"{self.path}{key}: unknown key{tip}")

"""Optional bearer API keys: read once at start from an environment variable (comma-separated) and/or a
file (one key a line, # comments), compared in constant time, never logged or echoed."""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from pathlib import Path

from guardrail.errors import PolicyError
from guardrail.serve.config import ApiKeys
from guardrail.serve.errors import ApiError

__all__ = ["KeyCheck"]


class KeyCheck:
    """Checks an `Authorization` header against the keys; no keys: every request passes."""

    def __init__(self, keys: Sequence[str] = ()):
        self._keys = [k.encode() for k in keys if k]

    def __repr__(self) -> str:  # never the keys themselves
        return f"KeyCheck({len(self._keys)} keys)"

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @classmethod
    def from_config(cls, config: ApiKeys, base_dir: str = ".") -> KeyCheck:
        keys: list[str] = []
        if config.env is not None:
            value = os.environ.get(config.env)
            if not value:
                raise PolicyError(
                    f"api_keys.env names ${config.env}, which is unset or empty: export the keys (comma-separated) "
                    "or remove api_keys.env"
                )
            keys += [k.strip() for k in value.split(",")]
        if config.file is not None:
            path = Path(base_dir) / config.file
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise PolicyError(f"cannot read api_keys.file {str(path)!r} ({exc.strerror}); check the path") from None
            keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        check = cls(keys)
        if (config.env or config.file) and not check.enabled:
            raise PolicyError("api_keys are configured but no key was read; add keys or remove the api_keys section")
        return check

    def check(self, authorization: str | None) -> None:
        """Raise a 401 `ApiError` unless the header is `Bearer <one of the keys>`."""
        if not self._keys:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        candidate = given.strip().encode()
        matched = False
        for key in self._keys:  # every key compared: the time does not tell which one matched
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise ApiError(401, "invalid API key", code="invalid_api_key")

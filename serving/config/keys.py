"""API keys given in the environment, and the rule that every key has a name of its own.

Keys from `SERVING_API_KEYS` / `SERVING_ADMIN_KEYS` are hashed as they are read and named
env-N / admin-N. Rate-limit buckets and ledger rows are keyed by name, so two keys with one
name would share a budget and a bill: the loader refuses that as a config error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from serving.config.deployment import ApiKey

ENV_KEYS = "SERVING_API_KEYS"
ENV_ADMIN_KEYS = "SERVING_ADMIN_KEYS"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _env_keys(environ: dict[str, str] | None) -> list[tuple[str, ApiKey]]:
    environ = environ if environ is not None else dict(os.environ)
    out = []
    for var, prefix, admin in ((ENV_KEYS, "env", False), (ENV_ADMIN_KEYS, "admin", True)):
        keys = [k.strip() for k in environ.get(var, "").split(",") if k.strip()]
        out += [(var, ApiKey(name=f"{prefix}-{i}", sha256=hash_key(k), admin=admin))
                for i, k in enumerate(keys, 1)]
    return out


def keys_from_env(environ: dict[str, str] | None = None) -> list[ApiKey]:
    """Comma-separated keys from SERVING_API_KEYS (named env-N) and SERVING_ADMIN_KEYS
    (admin-N, which may also read usage and metrics)."""
    return [key for _, key in _env_keys(environ)]


def duplicate_key_name(api_keys: list[ApiKey], file: Path,
                       environ: dict[str, str] | None = None) -> str | None:
    """The first name two keys share (among `router.api_keys`, set in `file`, and the
    environment's keys), worded as a config error; None if every name is unique."""
    seen: dict[str, str] = {}
    sources = [(f"router.api_keys[{i}]", key) for i, key in enumerate(api_keys)]
    sources += [(f"{var} (its key {key.name.rsplit('-', 1)[1]})", key)
                for var, key in _env_keys(environ)]
    for where, key in sources:
        if key.name in seen:
            return (f"{file}: router.api_keys: the key name '{key.name}' is used twice "
                    f"({seen[key.name]} and {where}); rate limits and the usage ledger go by "
                    "name, so give each key a name of its own")
        seen[key.name] = where
    return None

"""API keys: where they come from, their SHA-256 hashes, and what each key may do.

Keys are never stored or logged in clear: the config holds hashes (or names the environment
variable that holds a key), and keys from `SERVING_API_KEYS` / `SERVING_ADMIN_KEYS` are hashed
as they are read. If no key is configured at all, the launcher generates one into a file only
the user can read. Each key carries what it may do: which models, its rate limits, and
whether it may read usage and metrics. `middleware/auth.py` checks them on every request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from serving.config import ApiKey, Config, Limits, RouterConfig
from serving.config.keys import hash_key, keys_from_env

__all__ = ["hash_key", "keys_from_env"]  # where the CLI and tests have always found them


@dataclass(frozen=True)
class Principal:
    """A verified key as the router uses it: the hash identifies the owner of resources
    (video jobs), the name goes to logs and the ledger."""

    name: str
    sha256: str
    limits: Limits
    models: frozenset[str] | None = None
    admin: bool = False
    cache_group: str | None = None

    def may_use(self, *names: str) -> bool:
        return self.models is None or not self.models.isdisjoint(names)

    @functools.cached_property
    def cache_salt(self) -> str:
        """vLLM's `cache_salt` for this key's requests: only requests with the same salt share
        cached prompt blocks, so one key cannot learn from `cached_tokens` what another sent.
        Made from the key's hash (or its cache group's name), never from the key itself."""
        source = f"group:{self.cache_group}" if self.cache_group else f"key:{self.sha256}"
        return hashlib.sha256(b"serving-cache-salt:" + source.encode()).hexdigest()


class UnresolvedKey(ValueError):
    """A configured key that cannot be used (its environment variable is unset)."""


def generate_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def ensure_generated_key(path: Path) -> tuple[ApiKey, bool]:
    """The key in `path`, created (mode 0600) if absent. Returns the key and whether it is new."""
    path = path.expanduser()
    if path.is_file():
        key, created = path.read_text().strip(), False
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key, created = generate_key(), True
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    # The only key of a stack nobody configured belongs to its operator.
    return ApiKey(name="generated", sha256=hash_key(key), admin=True), created


def configured_keys(router: RouterConfig) -> list[ApiKey]:
    return [*router.api_keys, *keys_from_env()]


def principals(keys: list[ApiKey], default_limits: Limits,
               environ: dict[str, str] | None = None) -> list[Principal]:
    """Resolve configured keys: hash the ones given by environment variable, apply defaults."""
    environ = environ if environ is not None else os.environ
    out = []
    for i, key in enumerate(keys):
        digest = key.sha256
        if digest is None:
            assert key.env is not None
            value = environ.get(key.env, "").strip()
            if not value:
                raise UnresolvedKey(f"router.api_keys[{i}] ({key.name}): environment variable "
                                f"{key.env} is not set")
            digest = hash_key(value)
        out.append(Principal(
            name=key.name, sha256=digest, limits=key.limits or default_limits,
            models=frozenset(key.models) if key.models is not None else None, admin=key.admin,
            cache_group=key.cache_group,
        ))
    return out


def resolve_keys(config: Config) -> list[Principal]:
    """The keys a router accepts: the configured ones, or else a generated one kept in a file
    only the user can read (and said where). UnresolvedKey if a configured one is unset."""
    keys = configured_keys(config.router)
    if not keys:
        key, created = ensure_generated_key(config.router.generated_key_file)
        print(
            f"serving: no API key configured; {'generated' if created else 'using'} the key "
            f"in {config.router.generated_key_file} (readable only by you)",
            flush=True,
        )
        keys = [key]
    return principals(keys, config.router.default_limits)


class KeyStore:
    def __init__(self, keys: list[Principal]):
        self._keys = [(bytes.fromhex(k.sha256), k) for k in keys]

    def principals(self) -> list[Principal]:
        return [k for _, k in self._keys]

    def names(self) -> dict[str, str]:
        """Each key's hash -> its name (what video billing records)."""
        return {k.sha256: k.name for _, k in self._keys}

    def verify(self, token: str) -> Principal | None:
        """The matching key, or None. Every stored hash is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for stored, key in self._keys:
            if hmac.compare_digest(stored, digest):
                found = key
        return found

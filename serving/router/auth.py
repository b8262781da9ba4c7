"""Bearer keys: `Authorization: Bearer <key>` only, checked against SHA-256 hashes.

Keys are never stored or logged in clear; the config holds hashes, keys from the
`SERVING_API_KEYS` environment variable are hashed as they are read. If no key is configured
at all, the launcher generates one into a file only the user can read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.config import ApiKey, RouterConfig
from serving.errors import OpenAIError

ENV_KEYS = "SERVING_API_KEYS"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def keys_from_env(environ: dict[str, str] | None = None) -> list[ApiKey]:
    raw = (environ if environ is not None else os.environ).get(ENV_KEYS, "")
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    return [ApiKey(name=f"env-{i}", sha256=hash_key(k)) for i, k in enumerate(keys, 1)]


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
    return ApiKey(name="generated", sha256=hash_key(key)), created


def configured_keys(router: RouterConfig) -> list[ApiKey]:
    return [*router.api_keys, *keys_from_env()]


class KeyStore:
    def __init__(self, keys: list[ApiKey]):
        self._keys = [(bytes.fromhex(k.sha256), k) for k in keys]

    def verify(self, token: str) -> ApiKey | None:
        """The matching key, or None. Every stored hash is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for stored, key in self._keys:
            if hmac.compare_digest(stored, digest):
                found = key
        return found


def _unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, type="invalid_request_error", code="invalid_api_key")


class AuthMiddleware:
    """Guards every /v1/ path; /health, /ready and /openapi.json stay open."""

    def __init__(self, app: ASGIApp, keys: KeyStore):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            error = _unauthorized(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            scheme, _, token = header.decode("latin-1").partition(" ")
            key = self.keys.verify(token.strip()) if scheme.lower() == "bearer" else None
            if key is not None:
                state = scope.setdefault("state", {})
                # The name is for logs and the ledger; the hash identifies the owner of
                # resources such as video jobs, whatever the key is named.
                state["key_name"], state["key_id"] = key.name, key.sha256
                return await self.app(scope, receive, send)
            error = _unauthorized(
                "Incorrect API key provided."
                if scheme.lower() == "bearer"
                else "Only Bearer authentication is supported (Authorization: Bearer YOUR_KEY)."
            )
        await error.response()(scope, receive, send)

"""`serving reload`: ask a running stack to apply its edited config files, and report how it
went. The stack is found by its runtime file (given, or `state_dir/runtime.json` of its
config) or its URL; the key is an admin key."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from serving.config import Config, ConfigError
from serving.config.keys import ENV_ADMIN_KEYS
from serving.launcher.runtime_file import read_runtime

POLL_S = 0.5


class ReloadClientError(Exception):
    pass


def _where(config: Config | None, url: str | None, runtime_file: Path | None) -> str:
    if url:
        return url.rstrip("/")
    if runtime_file is None and config is not None:
        runtime_file = config.state_dir / "runtime.json"
    if runtime_file is None:
        raise ReloadClientError("say where the stack is: -c CONFIG, --runtime-file or --url")
    try:
        stack = read_runtime(runtime_file)[0]
    except ConfigError as e:
        raise ReloadClientError(str(e)) from None
    return stack.control or stack.router


def _key(config: Config | None, key: str | None) -> str:
    if key:
        return key
    if admin := [k.strip() for k in os.environ.get(ENV_ADMIN_KEYS, "").split(",") if k.strip()]:
        return admin[0]
    if config is not None and config.router.generated_key_file.is_file():
        return config.router.generated_key_file.read_text().strip()
    raise ReloadClientError(f"an admin key is needed: --key, or {ENV_ADMIN_KEYS}")


def reload_stack(config: Config | None, *, url: str | None, runtime_file: Path | None,
                 key: str | None, wait: bool, timeout_s: float) -> int:
    """0 once applied (or accepted, without `wait`), 1 if it failed, 2 if refused."""
    base = _where(config, url, runtime_file)
    headers = {"Authorization": f"Bearer {_key(config, key)}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        try:
            r = http.post("/v1/admin/reload")
        except httpx.HTTPError as e:
            raise ReloadClientError(f"cannot reach the stack at {base}: {e}") from None
        if r.status_code != 202:
            print(f"serving: reload refused ({r.status_code}): "
                  f"{r.json().get('error', {}).get('message', r.text)}")
            return 2
        status = r.json()
        print(f"serving: reload {status['id']} accepted: " + ", ".join(
            f"{name} {change['action']}" for name, change in status["workers"].items()))
        deadline = time.monotonic() + timeout_s
        while wait and status["status"] == "pending":
            if time.monotonic() > deadline:
                print(f"serving: reload {status['id']} still pending after {timeout_s:.0f} s")
                return 1
            time.sleep(POLL_S)
            status = http.get("/v1/admin/reload").json()
    print(json.dumps(status, indent=2))
    return 0 if status["status"] in ("applied", "pending") else 1

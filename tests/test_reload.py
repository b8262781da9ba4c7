"""Reloading without starting a worker: a lone router (`serving router`) reading its edited
files, and what a stack's reload decides for each worker before it starts anything.

The whole stack reloading under load, with real workers, is tests/test_e2e_reload.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.config import load_config
from serving.config.keys import hash_key
from serving.launcher.reload import restart_only_changes
from serving.launcher.router_reload import RouterReloader
from serving.launcher.running import PLACEHOLDER, Stack
from serving.launcher.runtime_file import worker_urls
from serving.router import build_app, build_services
from serving.router.keys import resolve_keys

ROOT = Path(__file__).resolve().parent.parent
OLD_KEY, NEW_KEY, ADMIN_KEY = "sk-old-0123456789", "sk-new-0123456789", "sk-admin-0123456789"
CHAT = "smollm2-135m-instruct"


def write_config(tmp: Path, keys: list[str], extra: str = "") -> Path:
    """A router-only config: the chat worker at a URL where nothing listens."""
    entries = ", ".join(f"{{name: k{i}, sha256: {hash_key(k)}}}" for i, k in enumerate(keys))
    path = tmp / "router.yaml"
    path.write_text(f"""
state_dir: {tmp / "state"}
router:
  api_keys: [{entries}, {{name: admin, sha256: {hash_key(ADMIN_KEY)}, admin: true}}]
{extra}
workers:
  chat: {{endpoints: ["http://127.0.0.1:9"]}}
  images: {{enabled: false}}
  edits: {{enabled: false}}
  videos: {{enabled: false}}
  speech: {{enabled: false}}
  transcription: {{enabled: false}}
""")
    return path


@pytest.fixture
def lone_router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for var in ("SERVING_API_KEYS", "SERVING_ADMIN_KEYS", "SERVING_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    files = (ROOT / "configs" / "cpu.yaml", write_config(tmp_path, [OLD_KEY]))
    config = load_config(list(files))
    services = build_services(config, worker_urls(config, None), resolve_keys(config))
    services.reloader = RouterReloader(services, files)
    with TestClient(build_app(services)) as client:
        yield client, services, tmp_path


def chat(client: TestClient, key: str):
    return client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}]})


def reload(client: TestClient):
    return client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def test_keys_limits_cors_and_body_cap_apply_without_a_restart(lone_router):
    client, _, tmp = lone_router
    assert chat(client, OLD_KEY).status_code == 503  # admitted; no worker listens
    assert chat(client, NEW_KEY).status_code == 401
    before = client.get("/ready").json()["config"]
    write_config(tmp, [NEW_KEY], """  cors_origins: ["https://app.example"]
  max_body_bytes: 2048
  log_level: debug""")
    r = reload(client)
    assert r.status_code == 202 and r.json()["status"] == "applied", r.text
    assert chat(client, OLD_KEY).status_code == 401  # removed: refused on its next request
    assert chat(client, NEW_KEY).status_code == 503
    assert client.get("/ready").json()["config"] != before
    preflight = client.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    big = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {NEW_KEY}"},
                      json={"model": CHAT, "messages": [{"role": "user", "content": "x" * 4096}]})
    assert big.status_code == 413
    last = client.get("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert last.json()["status"] == "applied"
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'serving_reloads_total{result="applied"} 1.0' in metrics


def test_a_broken_config_is_refused_naming_the_key_and_changes_nothing(lone_router):
    client, services, tmp = lone_router
    view = services.view
    path = write_config(tmp, [NEW_KEY], "  no_such_setting: 1")
    r = reload(client)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_config"
    assert str(path) in error["message"] and "no_such_setting" in error["message"]
    assert services.view is view and chat(client, OLD_KEY).status_code == 503
    write_config(tmp, [NEW_KEY], "  port: 9999")  # needs a restart
    r = reload(client)
    assert r.status_code == 400 and "router.port" in r.json()["error"]["message"]
    assert chat(client, NEW_KEY).status_code == 401
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'serving_reloads_total{result="refused"} 2.0' in metrics


def test_reloading_needs_an_admin_key(lone_router):
    client, _, _ = lone_router
    r = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {OLD_KEY}"})
    assert r.status_code == 403
    assert client.post("/v1/admin/reload").status_code == 401


def test_a_model_being_reloaded_answers_503_with_retry_after(lone_router):
    from serving.router.services import build_view

    client, services, _ = lone_router
    view = services.view
    asyncio.run(services.apply(build_view(view.config, view.workers,
                                          view.keys.principals(), {CHAT: 12.3})))
    r = chat(client, OLD_KEY)
    assert r.status_code == 503 and r.headers["retry-after"] == "13"
    assert r.json()["error"]["code"] == "model_reloading"


def test_restart_only_settings_are_named():
    cpu = load_config([ROOT / "configs" / "cpu.yaml"])
    moved = cpu.model_copy(deep=True)
    moved.router.port, moved.router.rate_limit_store = 9000, "redis://127.0.0.1:1"
    assert restart_only_changes(cpu, moved) == ["router.port", "router.rate_limit_store"]
    assert restart_only_changes(cpu, cpu.model_copy(deep=True)) == []


def test_a_stack_reload_diffs_each_workers_processes(tmp_path: Path):
    """Unchanged workers are left alone; an engine arg, an env var or the model replaces a
    worker; a client setting only makes a new client; workers come and go by name."""
    cpu = ROOT / "configs" / "cpu.yaml"
    old = load_config([cpu])
    stack = Stack(old, {name: Path(f"/models/{name}") for name in old.workers})
    overlay = tmp_path / "o.yaml"
    overlay.write_text("""
workers:
  chat: {engine_args: {max_model_len: 4096}}
  speech: {max_in_flight: 3}
  transcription: {env: {EXTRA: "1"}}
  videos: {enabled: false}
  second: {model: kokoro-82m-ja}
""")
    actions = stack.actions(load_config([cpu, overlay]))
    assert actions == {"chat": "replaced", "images": "unchanged", "edits": "unchanged",
                       "speech": "updated",
                       "transcription": "replaced", "videos": "removed", "second": "added"}
    assert stack.actions(load_config([cpu])) == dict.fromkeys(old.workers, "unchanged")
    assert PLACEHOLDER not in {g.model_path for g in stack.groups.values()}


def test_a_replica_count_alone_scales_the_pool_and_keeps_its_other_replicas(tmp_path: Path):
    """Images 2 -> 3 replicas: scaled, replicas 0 and 1 kept (a CPU chat pool may be
    replaced instead, where each replica's share of the cores changes with their number)."""
    cpu = ROOT / "configs" / "cpu.yaml"
    two, three = tmp_path / "two.yaml", tmp_path / "three.yaml"
    two.write_text("workers: {images: {replicas: 2}}\n")
    three.write_text("workers: {images: {replicas: 3}}\n")
    old = load_config([cpu, two])
    stack = Stack(old, {name: Path(f"/models/{name}") for name in old.workers})
    new = load_config([cpu, three])
    actions = stack.actions(new)
    assert actions["images"] == "scaled" and actions["chat"] == "unchanged"
    from serving.launcher.worker_set import WorkerGroup

    images = stack.groups["images"]
    scaled = WorkerGroup("images", new.workers["images"], new, images.model_path,
                         keep=images.replicas())
    assert scaled.supervisors[:2] == images.supervisors  # the same, running processes
    assert [s.name for s in scaled.supervisors] == ["images/0", "images/1", "images/2"]

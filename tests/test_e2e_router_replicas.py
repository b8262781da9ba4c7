"""Router replicas over one set of workers, sharing PostgreSQL (ledger) and Redis (limits):
`serving up` with two router processes on its port, and a `serving router` beside it. A mixed
load spread over both reconciles with the ledger exactly, whichever replica wrote the rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import create_database, drop_database
from prometheus_client.parser import text_string_to_metric_families

from serving.launcher.supervisor import free_port
from tests.conftest import CHAT_MODEL, ROOT
from tests.support.harness import BackgroundStack, start_background_router, start_background_stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CPU = ROOT / "configs" / "cpu.yaml"
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, postgres, redis_url: str
           ) -> Iterator[tuple[BackgroundStack, Path]]:
    tmp = tmp_path_factory.mktemp("replicas")
    database = create_database(postgres)
    overlay = tmp / "shared.yaml"
    overlay.write_text(f"""
router:
  processes: 2
  metrics_port: {METRICS_PORT}
  database: {database}
  rate_limit_store: {redis_url}
workers:
  videos: {{enabled: false}}
  speech: {{enabled: false}}
""")
    stack = start_background_stack([CPU, overlay], tmp)
    yield stack, overlay
    stack.stop()
    drop_database(postgres, database)


def test_serving_up_runs_two_router_processes_on_its_port(shared):
    """Both processes take connections on the one port (the kernel spreads them): with 20
    connections held open, each process holds some (all on one: a 2^-19 chance)."""
    stack, _ = shared
    launcher = psutil.Process(stack.process.pid)
    others = [p for p in launcher.children(recursive=True) if "--reuse-port" in p.cmdline()]
    assert len(others) == 1  # the launcher itself is router process 0
    port = int(stack.base_url.rsplit(":", 1)[1])
    # The launcher serves first and starts the other process after; wait until it listens.
    wait_until(lambda: any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
                           for c in others[0].net_connections("tcp")),
               "the second router process to listen", timeout_s=180, every_s=0.5)
    clients = [httpx.Client(base_url=stack.base_url, timeout=30) for _ in range(20)]
    try:
        for client in clients:
            assert client.get("/health").status_code == 200  # kept alive afterwards
        held = {proc.pid: sum(1 for c in proc.net_connections("tcp")
                              if c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)
                for proc in (launcher, *others)}
    finally:
        for client in clients:
            client.close()
    assert sum(held.values()) == 20, held
    assert all(held.values()), held
    assert httpx.get(stack.base_url + "/ready", timeout=30).status_code == 200


def chat_metrics(text: str) -> tuple[float, float]:
    """Chat requests answered with 200, and chat requests in flight, in a /metrics text."""
    answered = in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("endpoint", "").endswith("/chat/completions"):
                if s.name == "serving_requests_total" and s.labels["status"] == "200":
                    answered += s.value
                elif s.name == "serving_requests_in_flight":
                    in_flight += s.value
    return answered, in_flight


def test_either_router_process_answers_metrics_for_both(shared):
    """20 chats on 20 new connections, which the kernel spreads over both processes (all on
    one: a 2^-19 chance): the metrics port, which process 0 serves, and /metrics on the API
    port, whichever process takes it, count all 20."""
    stack, _ = shared
    port = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    before, _ = chat_metrics(httpx.get(port, timeout=30).text)
    chat = {"model": CHAT_MODEL, "max_tokens": 2,
            "messages": [{"role": "user", "content": "Say hi."}]}
    for _ in range(20):
        r = httpx.post(stack.v1 + "/chat/completions", json=chat, timeout=120,
                       headers={"Authorization": f"Bearer {stack.key}"})
        assert r.status_code == 200, r.text
    # Counted once the last byte went out.
    wait_until(lambda: chat_metrics(httpx.get(port, timeout=30).text) == (before + 20, 0),
               f"20 more chats than {before} counted, none in flight", timeout_s=30,
               every_s=0.2)
    for _ in range(6):  # each on a new connection, to either process
        r = httpx.get(stack.base_url + "/metrics", timeout=30,
                      headers={"Authorization": f"Bearer {stack.admin_key}"})
        assert chat_metrics(r.text) == (before + 20, 0)


def test_load_over_two_routers_reconciles_with_the_shared_ledger(shared, tmp_path: Path):
    stack, overlay = shared
    own_port = tmp_path / "b.yaml"
    own_port.write_text("router: {metrics_port: null}\n")  # the stack has that one
    router_b = start_background_router([CPU, overlay, own_port], tmp_path / "b", stack=stack)
    try:
        proc = subprocess.run(
            [sys.executable, "scripts/load.py", "--short", "--base-url",
             f"{stack.base_url},{router_b.base_url}", "--key", stack.key,
             "--admin-key", stack.admin_key, "--key-name", "env-1"],
            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
            text=True, timeout=840)
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr[-4000:]
        assert "MISMATCH" not in out
        assert re.search(r"ledger: (\d+)/\1 checks OK; unexpected errors: 0", out), out

        # Every replica, and the CLI, reads the same totals of the load's key from the shared
        # database (the admin key's own reads are being recorded as they go: left out).
        admin = {"Authorization": f"Bearer {stack.admin_key}"}
        totals = [next(row for row in httpx.get(
                       url + "/v1/usage", params={"by": "key"}, headers=admin,
                       timeout=60).json()["data"] if row["key"] == "env-1")
                  for url in (stack.base_url, router_b.base_url)]
        cli = subprocess.run(
            [sys.executable, "-m", "serving.cli", "usage", "-c", str(CPU), "-c", str(overlay),
             "--by", "key", "--json"], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        totals.append(next(row for row in json.loads(cli.stdout) if row["key"] == "env-1"))
        assert totals[0]["requests"] > 0
        assert totals[0] == totals[1] == totals[2]
    finally:
        assert router_b.stop() == 0

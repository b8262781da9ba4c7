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
from harness import BackgroundStack, start_background_router, start_background_stack

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

CPU = ROOT / "configs" / "cpu.yaml"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, postgres, redis_url: str
           ) -> Iterator[tuple[BackgroundStack, Path]]:
    tmp = tmp_path_factory.mktemp("replicas")
    database = create_database(postgres)
    overlay = tmp / "shared.yaml"
    overlay.write_text(f"""
router:
  processes: 2
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


def test_load_over_two_routers_reconciles_with_the_shared_ledger(shared, tmp_path: Path):
    stack, overlay = shared
    router_b = start_background_router([CPU, overlay], tmp_path / "b", stack=stack)
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

        # Every replica, and the CLI, reads the same totals from the shared database.
        admin = {"Authorization": f"Bearer {stack.admin_key}"}
        totals = [httpx.get(url + "/v1/usage", params={"by": "key"}, headers=admin,
                            timeout=60).json()["data"]
                  for url in (stack.base_url, router_b.base_url)]
        assert totals[0] == totals[1]
        cli = subprocess.run(
            [sys.executable, "-m", "serving.cli", "usage", "-c", str(CPU), "-c", str(overlay),
             "--by", "key", "--json"], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        by_key = {row["key"]: row for row in json.loads(cli.stdout)}
        for row in totals[0]:
            assert by_key[row["key"]]["requests"] == row["requests"]
            assert by_key[row["key"]]["prompt_tokens"] == row["prompt_tokens"]
    finally:
        assert router_b.stop() == 0

"""The ledger as router replicas share it: two writers on one PostgreSQL, retried batches,
the database stopped and restarted under load, the memory bound past which the oldest rows go,
retention, and what /ready, /metrics and /v1/usage say while the database is down.

Outages are real: a PostgreSQL cluster of this module's own (not the session's, which other
tests use) stopped with `pg_ctl stop -m fast` or killed with SIGKILL, then started again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import create_database, drop_database
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from test_ledger import (
    ROOT,
    assert_totals_equal,
    cli,
    expected_totals,
    make_records,
    write_config,
)

from serving.config import load_config
from serving.config.deployment import LedgerConfig
from serving.ledger import Ledger, UsageRecord
from serving.ledger.metrics import LedgerMetrics
from serving.router.app import create_app
from serving.router.keys import keys_from_env, principals
from tests.support import local_servers
from tests.support.wait import wait_until

WAIT_S = 120  # deadline for a condition on a slow, busy machine; never a timing assertion
wait_for = functools.partial(wait_until, timeout_s=WAIT_S, every_s=0.02)


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_servers.Postgres]:
    """A cluster these tests may stop, kill and restart."""
    server = local_servers.start_postgres(tmp_path_factory.mktemp("pg-outage"))
    yield server
    server.stop("immediate")


def restart(pg: local_servers.Postgres) -> None:
    """Start `pg` again. After a SIGKILL the old postmaster may linger a moment (until its
    parent reaps it, its orphaned backends exit), and pg_ctl refuses to start over it."""
    def started() -> bool:
        try:
            pg.start()
        except local_servers.ServerError:
            return False
        return True

    wait_for(started, "PostgreSQL to start again", every_s=0.5)


@pytest.fixture
def pg_url(pg: local_servers.Postgres) -> Iterator[str]:
    url = create_database(pg)
    yield url
    if pg._pg_ctl("status", check=False).returncode != 0:  # a test that failed mid-outage
        restart(pg)
    drop_database(pg, url)


def metric(ledger: Ledger, name: str) -> float:
    """A sample of the ledger's metrics, as /metrics exposes them."""
    registry = CollectorRegistry()
    LedgerMetrics(ledger, registry).publish()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_two_replicas_give_the_same_totals_from_either_and_from_the_cli(
        postgres_url: str, tmp_path: Path, clean_env):
    records = make_records(400, start=1_800_000_000.0)
    with Ledger(postgres_url) as one, Ledger(postgres_url) as two:
        for i, r in enumerate(records):
            (one if i % 2 else two).append(r)
        assert one.flush() and two.flush()
        for by in [(), ("key",), ("model", "status"), ("key", "model", "endpoint")]:
            want = expected_totals(records, by)
            assert_totals_equal(one.totals(by=by), want)
            assert_totals_equal(two.totals(by=by), want)
    config = write_config(tmp_path, f"router: {{database: '{postgres_url}'}}")
    result = cli("usage", "-c", str(config), "--by", "key,model", "--json", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert_totals_equal(json.loads(result.stdout),
                        expected_totals(records, ("key", "model")))
    result = cli("usage", "-c", str(config), "--by", "model", env=clean_env)
    assert result.returncode == 0 and "chat-a" in result.stdout
    assert "postgres@127.0.0.1" in result.stdout  # where the totals come from


def test_the_cli_on_an_empty_or_unreachable_database(postgres_url: str, tmp_path: Path,
                                                      clean_env):
    config = write_config(tmp_path, f"router: {{database: '{postgres_url}'}}")
    result = cli("usage", "-c", str(config), "--json", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "no usage ledger" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(result.stdout)[0]["requests"] == 0
    dead = postgres_url.rsplit(":", 1)[0] + ":9/nothing"  # nothing listens on port 9
    config = write_config(tmp_path, f"router: {{database: '{dead}'}}")
    result = cli("usage", "-c", str(config), env=clean_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot read the usage ledger" in result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_batch_written_again_is_billed_once(backend: str, request: pytest.FixtureRequest,
                                              tmp_path: Path):
    url = (f"sqlite:///{tmp_path / 'usage.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    records = make_records(300)
    # A client may send the same X-Request-Id twice: two events, both billed.
    same_id = [UsageRecord(ts=5.0, request_id="mine", key_name="k", model="m",
                           endpoint="/v1/chat/completions", status=200, prompt_tokens=3)
               for _ in range(2)]
    with Ledger(url) as one, Ledger(url) as two:
        for r in [*records, *same_id]:
            one.append(r)
        assert one.flush()
        for r in records:  # the batch again, as after a lost commit acknowledgement ...
            one.append(r)
        for r in records[:100]:  # ... and from another replica
            two.append(r)
        assert one.flush() and two.flush()
        assert one._write(records[:50]).written == 50  # a retry of one batch, straight in
        assert_totals_equal(one.totals(), expected_totals([*records, *same_id], ()))
        assert one.state().rejected == 0


def _appender(ledger: Ledger, stop: threading.Event, appended: list[UsageRecord]) -> None:
    """Requests finishing one after another, as under load, until `stop`."""
    i = 0
    while not stop.is_set():
        record = UsageRecord(ts=1_900_000_000.0 + i, request_id=f"load-{i}", key_name="k",
                             model="m", endpoint="/v1/chat/completions", status=200,
                             prompt_tokens=1, completion_tokens=i % 7)
        ledger.append(record)
        appended.append(record)
        i += 1
        if i % 10 == 0:  # at most ~10,000 a second, so the outage stays within the bound
            time.sleep(0.001)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_postgres_stopped_and_restarted_under_load_loses_no_row(
        how: str, pg: local_servers.Postgres, pg_url: str, caplog):
    # Room for a slow restart at the appender's top rate; past it is the next test's case.
    ledger = Ledger(pg_url, LedgerConfig(flush_interval_s=0.05, max_buffered=500_000))
    stop, appended = threading.Event(), []
    load = threading.Thread(target=_appender, args=(ledger, stop, appended), daemon=True)
    with caplog.at_level(logging.INFO, logger="serving.ledger.store"):
        load.start()
        try:
            wait_for(lambda: ledger.state().written >= 500, "rows written before the outage")
            pg.stop("fast") if how == "stop" else pg.kill()
            wait_for(lambda: not ledger.state().up, "the writer to notice the outage")
            during = len(appended)
            wait_for(lambda: len(appended) >= during + 2000, "appends during the outage")
            state = ledger.state()
            assert not state.up and state.buffered > 0 and state.dropped == 0
            assert metric(ledger, "serving_ledger_up") == 0
            assert metric(ledger, "serving_ledger_buffered_records") > 0
            restart(pg)
            assert ledger.flush(timeout=WAIT_S)  # retried at once, not after the backoff
            wait_for(lambda: len(appended) >= during + 4000, "appends after the restart")
        finally:
            stop.set()
            load.join()
        assert ledger.flush(timeout=WAIT_S)
        state = ledger.state()
        assert state.up and state.buffered == 0 and state.dropped == 0 and state.rejected == 0
        (row,) = ledger.totals()
        assert row["requests"] == len(appended)
        assert row["completion_tokens"] == sum(r.completion_tokens for r in appended)
        assert ledger.close()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unreachable" in m]) == 1  # once per outage
    assert len([m for m in messages if "back after" in m]) == 1
    (unreachable,) = [m for m in messages if "unreachable" in m]
    assert "rows buffered; will retry" in unreachable and "max_buffered" in unreachable


def test_past_the_bound_the_oldest_rows_are_dropped_and_counted(
        pg: local_servers.Postgres, pg_url: str, caplog):
    bound = 1000
    ledger = Ledger(pg_url, LedgerConfig(max_buffered=bound), batch_size=100)
    records = make_records(bound + 500)
    with caplog.at_level(logging.INFO, logger="serving.ledger.store"):
        pg.stop("fast")
        ledger.append(records[0])
        assert not ledger.flush(timeout=0.2)  # a write attempt, which fails
        wait_for(lambda: not ledger.state().up, "the writer to notice the outage")
        for r in records[1:]:
            ledger.append(r)
        state = ledger.state()
        assert state.buffered == bound and state.dropped == 500
        assert metric(ledger, 'serving_ledger_dropped_records_total{reason="overflow"}') == 500
        assert metric(ledger, "serving_ledger_buffered_records") == bound
        pg.start()
        assert ledger.flush(timeout=WAIT_S)
    kept = {r.request_id for r in ledger.records(limit=10 * bound)}
    assert kept == {r.request_id for r in records[500:]}  # the newest `bound`, each once
    assert ledger.totals()[0]["requests"] == bound
    assert ledger.state().dropped == 500 and ledger.state().buffered == 0
    assert ledger.close()
    full = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.ERROR


def test_a_ledger_started_while_the_database_is_down_upgrades_and_writes_when_it_returns(
        pg: local_servers.Postgres, pg_url: str):
    pg.stop("fast")
    ledger = Ledger(pg_url)  # the router starts anyway
    try:
        records = make_records(50)
        for r in records:
            ledger.append(r)
        assert not ledger.flush(timeout=0.5)
        wait_for(lambda: not ledger.state().up, "the failed schema upgrade to show")
        assert ledger.state().buffered == 50
        pg.start()
        assert ledger.flush(timeout=WAIT_S)
        assert_totals_equal(ledger.totals(), expected_totals(records, ()))
    finally:
        ledger.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_retention_deletes_old_rows_in_batches(backend: str, request: pytest.FixtureRequest,
                                               tmp_path: Path):
    url = (f"sqlite:///{tmp_path / 'usage.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    now = time.time()
    old = make_records(30, start=now - 3 * 86400)
    new = make_records(20, start=now - 3600)
    new = [dataclasses.replace(r, request_id=f"new-{i}") for i, r in enumerate(new)]
    with Ledger(url) as led:
        for r in [*old, *new]:
            led.append(r)
        assert led.flush()
        assert led.delete_older_than(now - 3 * 86400 + 10, batch=3) == 10
        assert led.totals()[0]["requests"] == 40
    # A ledger with retention deletes what is past it when it starts, then hourly.
    with Ledger(url, LedgerConfig(retention_days=1, flush_interval_s=0.05)) as led:
        wait_for(lambda: led.totals()[0]["requests"] == 20, "retention to run")
        assert {r.request_id for r in led.records()} == {r.request_id for r in new}


def test_ready_metrics_and_usage_while_the_database_is_down(
        pg: local_servers.Postgres, pg_url: str, tmp_path: Path, monkeypatch):
    for var in ("SERVING_STATE_DIR", "SERVING_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    others = [n for n in load_config([ROOT / "configs" / "cpu.yaml"]).workers if n != "chat"]
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "workers: {" + ", ".join(f"{n}: {{enabled: false}}" for n in others) + "}\n"
        f"router: {{database: '{pg_url}', ledger: {{flush_interval_s: 0.05}}}}\n")
    config = load_config([ROOT / "configs" / "cpu.yaml", overlay])
    keys = principals(keys_from_env({"SERVING_API_KEYS": "sk-user",
                                     "SERVING_ADMIN_KEYS": "sk-admin"}),
                      config.router.default_limits)
    # Port 9: no worker answers, so /ready is a 503 for that reason alone, whatever the ledger.
    app = create_app(config, {"chat": "http://127.0.0.1:9"}, keys)
    admin = {"Authorization": "Bearer sk-admin"}
    with TestClient(app) as client:
        assert client.get("/ready").json()["ledger"] == "ok"
        pg.stop("fast")
        chat = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}
        r = client.post("/v1/chat/completions", json=chat,
                        headers={"Authorization": "Bearer sk-user"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "worker_unavailable"
        wait_for(lambda: client.get("/ready").json()["ledger"] == "unreachable (1 buffered)",
                 "/ready to report the ledger")
        ready = client.get("/ready")
        assert ready.json()["error"]["message"] == "Workers not ready: chat"
        text = client.get("/metrics", headers=admin).text
        assert "serving_ledger_up 0.0" in text and "serving_ledger_buffered_records 1.0" in text
        usage = client.get("/v1/usage", headers=admin)
        assert usage.status_code == 503
        assert usage.json()["error"]["code"] == "ledger_unavailable"
        assert usage.headers["retry-after"].isdigit()
        pg.start()
        wait_for(lambda: client.get("/ready").json()["ledger"] == "ok", "the ledger to recover")
        usage = client.get("/v1/usage", headers=admin, params={"by": "key,status"})
        assert usage.status_code == 200
        rows = usage.json()["data"]  # the admin's own requests are in it too
        assert [(r["status"], r["requests"]) for r in rows if r["key"] == "env-1"] == [(503, 1)]
        assert {r["key"] for r in rows} == {"env-1", "admin-1"}

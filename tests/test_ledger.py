"""The usage ledger: non-blocking appends, totals and grouping, robustness, and its CLI, on
SQLite and on a real PostgreSQL alike (outages and replicas: test_ledger_shared.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from conftest import create_database, drop_database

from serving.config import ApiKey, load_config
from serving.ledger import (
    GROUP_FIELDS,
    Ledger,
    UsageRecord,
    format_table,
    ledger_path,
    parse_since,
    query_totals,
)
from serving.router.keys import hash_key

ROOT = Path(__file__).resolve().parent.parent
SUMS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens",
        "images", "audio_seconds", "characters", "video_seconds")
ATTR = {"key": "key_name", "model": "model", "endpoint": "endpoint", "status": "status"}

KEYS = ("alice", "bob", "carol")
MODELS = ("chat-a", "chat-b", "flux-tiny", "whisper")
ENDPOINTS = ("/v1/chat/completions", "/v1/images/generations", "/v1/audio/transcriptions")
STATUSES = (200, 200, 200, 400, 429, 499, 500)


def make_records(n: int, start: float = 1_000_000.0) -> list[UsageRecord]:
    return [
        UsageRecord(
            ts=start + i, request_id=f"req-{i}", key_name=KEYS[i % 3], model=MODELS[i % 4],
            endpoint=ENDPOINTS[i % 3 if i % 5 else 0], status=STATUSES[i % 7],
            prompt_tokens=i % 50, completion_tokens=(3 * i) % 70, cache_read_tokens=i % 11,
            cache_creation_tokens=i % 3, images=i % 2, audio_seconds=(i % 9) * 0.25,
            characters=i % 13, video_seconds=(i % 4) * 0.5, latency_ms=float(i),
        )
        for i in range(n)
    ]


def expected_totals(records: list[UsageRecord], by: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[UsageRecord]] = {}
    for r in records:
        groups.setdefault(tuple(getattr(r, ATTR[g]) for g in by), []).append(r)
    rows = []
    for values, members in sorted(groups.items()):
        row = dict(zip(by, values, strict=True))
        row["requests"] = len(members)
        row["errors"] = sum(r.status >= 400 for r in members)
        for field in SUMS:
            row[field] = sum(getattr(r, field) for r in members)
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        rows.append(row)
    return rows


def assert_totals_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for field, value in w.items():
            if isinstance(value, float):
                assert g[field] == pytest.approx(value)
            else:
                assert g[field] == value, field


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's ledger lives: a SQLite file (given as a plain path, as callers may), or a
    fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "usage.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(ledger_url: str):
    led = Ledger(ledger_url)
    yield led
    led.close()


@pytest.fixture
def sqlite_ledger(tmp_path: Path):
    led = Ledger(tmp_path / "state" / "usage.db")
    yield led
    led.close()


@pytest.fixture(scope="module", params=BACKENDS)
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    records = make_records(600)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'usage.db'}"
    else:
        postgres = request.getfixturevalue("postgres")
        url = create_database(postgres)
    led = Ledger(url, batch_size=64)
    for r in records:
        led.append(r)
    assert led.flush()
    yield led, records
    led.close()
    if request.param == "postgres":
        drop_database(postgres, url)


def test_appends_from_the_event_loop_then_flush(ledger: Ledger):
    records = make_records(2000)

    async def serve() -> None:
        # As the router does: append from coroutines on the loop, never awaiting the disk.
        async def request(chunk: list[UsageRecord]) -> None:
            for r in chunk:
                ledger.append(r)
                await asyncio.sleep(0)

        await asyncio.gather(*(request(records[i::8]) for i in range(8)))
        assert await asyncio.to_thread(ledger.flush)
        rows = await asyncio.to_thread(ledger.totals)
        assert_totals_equal(rows, expected_totals(records, ()))

    asyncio.run(serve())
    stored = ledger.records(limit=5000)
    assert sorted(stored, key=lambda r: r.ts) == records  # every field round-trips


GROUPINGS = [
    *((g,) for g in GROUP_FIELDS),
    *itertools.combinations(GROUP_FIELDS, 2),
    ("key", "model", "endpoint", "status"),
    ("status", "key"),
]


@pytest.mark.parametrize("by", GROUPINGS, ids=",".join)
def test_totals_grouped(filled, by: tuple[str, ...]):
    led, records = filled
    rows = led.totals(by=by)
    assert [tuple(r[g] for g in by) for r in rows] == sorted(tuple(r[g] for g in by)
                                                             for r in rows)
    assert_totals_equal(rows, expected_totals(records, by))


def test_totals_since_until(filled):
    led, records = filled
    start = records[0].ts
    for since, until in [(start + 100, None), (None, start + 250), (start + 100, start + 250),
                         (start + 599, start + 10_000), (start + 10_000, None)]:
        window = [r for r in records
                  if (since is None or r.ts >= since) and (until is None or r.ts < until)]
        assert_totals_equal(led.totals(since=since, until=until),
                            expected_totals(window, ()) or [{
                                "requests": 0, "errors": 0, **dict.fromkeys(SUMS, 0),
                                "total_tokens": 0}])
        assert_totals_equal(led.totals(since=since, until=until, by=["model", "key"]),
                            expected_totals(window, ("model", "key")))


def test_empty_ledger_grand_totals_are_zero(ledger: Ledger):
    (row,) = ledger.totals()
    assert row["requests"] == 0 and row["total_tokens"] == 0
    assert row["audio_seconds"] == 0.0 and isinstance(row["audio_seconds"], float)
    assert ledger.totals(by=["key"]) == []


@pytest.mark.parametrize("by", [["user"], ["key", "key_name"], ["model; DROP TABLE usage"],
                                "model"])
def test_totals_rejects_unknown_group_fields(ledger: Ledger, by):
    with pytest.raises(ValueError):
        ledger.totals(by=by)


def test_duplicate_group_fields_count_once(filled):
    led, records = filled
    assert_totals_equal(led.totals(by=["model", "model"]), expected_totals(records, ("model",)))


def test_wal_mode(sqlite_ledger: Ledger):
    ledger = sqlite_ledger
    ledger.append(make_records(1)[0])
    assert ledger.flush()
    conn = sqlite3.connect(ledger.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_indexes_for_the_report_queries_and_the_event_ids(ledger: Ledger):
    indexes = {i["name"]: i for i in sa.inspect(ledger.engine).get_indexes("usage")}
    assert indexes["usage_ts"]["column_names"] == ["ts"]
    assert indexes["usage_key_ts"]["column_names"] == ["key_name", "ts"]
    assert indexes["usage_event_id"]["column_names"] == ["event_id"]
    assert indexes["usage_event_id"]["unique"]


def test_a_failed_write_loses_only_the_bad_records(ledger: Ledger, caplog):
    # The database refuses any row of model 'boom', as a real write error would.
    with ledger.engine.begin() as conn:
        if ledger.engine.dialect.name == "sqlite":
            conn.execute(sa.text(
                "CREATE TRIGGER boom BEFORE INSERT ON usage WHEN NEW.model = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'simulated write error'); END"))
        else:
            conn.execute(sa.text("ALTER TABLE usage ADD CONSTRAINT boom CHECK (model <> 'boom')"))
    good = make_records(10)
    bad = UsageRecord(ts=5.0, request_id="bad-1", key_name="k", model="boom",
                      endpoint="/v1/chat/completions", status=200)
    unbindable = UsageRecord(ts=6.0, request_id="bad-2", key_name="k", model=object(),
                             endpoint="/v1/chat/completions", status=200)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="serving.ledger.store"):
        for r in [*good[:5], bad, unbindable, *good[5:9]]:  # in one batch with good records
            ledger.append(r)
        assert ledger.flush()
        ledger.append(good[9])  # after the failure: the writer thread is still there
        assert ledger.flush()
    stored = {r.request_id for r in ledger.records(limit=100)}
    assert stored == {r.request_id for r in good}
    assert "bad-1" in caplog.text and "bad-2" in caplog.text
    assert ledger.totals()[0]["requests"] == 10
    state = ledger.state()
    assert state.up and state.rejected == 2 and state.dropped == 0 and state.buffered == 0


def test_close_writes_what_is_queued_and_later_appends_are_dropped(ledger_url: str):
    led = Ledger(ledger_url)
    records = make_records(300)
    for r in records:
        led.append(r)
    assert led.close()
    assert led.close()  # idempotent
    led.append(make_records(1, start=5e6)[0])  # dropped with a warning, no exception
    assert led.flush()
    assert query_totals(ledger_url)[0]["requests"] == 300
    with pytest.raises(TypeError):
        led.append({"model": "x"})  # type: ignore[arg-type]


def test_reopening_keeps_the_records(ledger_url: str):
    with Ledger(ledger_url) as led:
        for r in make_records(20):
            led.append(r)
    with Ledger(ledger_url) as led:
        led.append(make_records(1, start=2e6)[0])
        led.flush()
        assert led.totals()[0]["requests"] == 21
        assert [r.request_id for r in led.records(since=1_000_015, limit=3)] == [
            "req-18", "req-19", "req-0"]


def test_query_totals_of_a_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        query_totals(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()
    assert query_totals(tmp_path / "nope.db", by=["model"], missing_ok=True) == []
    assert query_totals(tmp_path / "nope.db", missing_ok=True)[0]["requests"] == 0


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""
catalog_dir: {ROOT / "models"}
state_dir: {tmp_path / "state"}
workers:
  chat:
    model: smollm2-135m-instruct
{extra}""")
    return path


def test_ledger_path(tmp_path: Path, clean_env):
    config = load_config([write_config(tmp_path)])
    assert ledger_path(config) == (tmp_path / "state" / "usage.db").resolve()
    config = load_config([write_config(tmp_path, "router: {usage_db: ledgers/u.db}")])
    assert ledger_path(config) == (tmp_path / "state" / "ledgers" / "u.db").resolve()
    config = load_config([write_config(tmp_path, f"router: {{usage_db: {tmp_path / 'x.db'}}}")])
    assert ledger_path(config) == tmp_path / "x.db"
    config = load_config([write_config(
        tmp_path, "router: {database: 'postgresql://u@db.example:5432/serving'}")])
    assert ledger_path(config) is None  # in the server's database, not a file


NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "want"), [
    ("90s", NOW - 90),
    ("30m", NOW - 1800),
    ("24h", NOW - 86400),
    ("7d", NOW - 7 * 86400),
    (" 1.5h ", NOW - 5400),
    ("2026-11-25", datetime(2026, 11, 25, tzinfo=UTC).timestamp()),
    ("2026-11-25T10:00:00", datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp()),
    ("2026-11-25T10:00:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp()),
    ("2026-11-25T12:00:00+02:00", datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp()),
    ("2026-11-25 10:30", datetime(2026, 11, 25, 10, 30, tzinfo=UTC).timestamp()),
    ("1764064800", 1764064800.0),
    ("1764064800.5", 1764064800.5),
])
def test_parse_since(text: str, want: float):
    assert parse_since(text, now=NOW) == pytest.approx(want)


@pytest.mark.parametrize("text", ["", "  ", "yesterday", "10x", "-5m", "5 minutes",
                                  "2026-13-01", "h"])
def test_parse_since_rejects(text: str):
    with pytest.raises(ValueError, match="cannot read"):
        parse_since(text, now=NOW)


def test_parse_since_defaults_to_the_current_time():
    import time

    before = time.time()
    assert before - 61 <= parse_since("1m") <= time.time() - 59


def test_format_table(filled):
    led, _ = filled
    text = format_table(led.totals(by=["key", "model"]), ["key", "model"])
    lines = text.splitlines()
    for heading in ("key", "model", "requests", "errors", "prompt", "completion",
                    "cached(read)", "cache-write", "images", "audio s", "chars", "video s"):
        assert heading in lines[0]
    assert lines[-1].startswith("total") and "600" in lines[-1]
    assert any(line.startswith("alice  chat-a") for line in lines)
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up
    grand = format_table(led.totals(), [])
    assert len(grand.splitlines()) == 3 and "600" in grand
    assert "(no requests)" in format_table([], ["model"])


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_usage(tmp_path: Path, clean_env):
    config = write_config(tmp_path)
    # No ledger yet: a message, an empty report, no traceback, and no file created.
    result = cli("usage", "-c", str(config), env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "no usage ledger" in result.stderr and "Traceback" not in result.stderr
    assert "requests" in result.stdout
    result = cli("usage", "-c", str(config), "--by", "model", "--json", env=clean_env)
    assert result.returncode == 0 and json.loads(result.stdout) == []
    assert not (tmp_path / "state" / "usage.db").exists()

    records = make_records(100, start=NOW)
    with Ledger(ledger_path(load_config([config]))) as led:
        for r in records:
            led.append(r)

    result = cli("usage", "-c", str(config), "--by", "key,model", "--json", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert_totals_equal(json.loads(result.stdout), expected_totals(records, ("key", "model")))

    result = cli("usage", "-c", str(config), "--since", str(NOW + 50), "--until",
                 datetime.fromtimestamp(NOW + 60, UTC).isoformat(), "--json", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["requests"] == 10

    result = cli("usage", "-c", str(config), "--by", "model", env=clean_env)
    assert result.returncode == 0, result.stderr
    assert "chat-a" in result.stdout and "whisper" in result.stdout
    assert re.search(r"^total\s+100\b", result.stdout, re.M)

    for bad in (["--by", "user"], ["--since", "yesterday"]):
        result = cli("usage", "-c", str(config), *bad, env=clean_env)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "user" in result.stderr or "yesterday" in result.stderr


def test_cli_keys_create(tmp_path: Path, clean_env):
    result = cli("keys", "create", "--name", "ci-bot@team.x", "--models",
                 "smollm2-135m-instruct, flux-tiny", "--admin", env=clean_env)
    assert result.returncode == 0, result.stderr
    keys = re.findall(r"sk-[A-Za-z0-9_-]{20,}", result.stdout)
    assert len(keys) == 1  # printed once
    assert "not" in result.stdout.lower() and "again" in result.stdout.lower()
    (entry,) = yaml.safe_load(result.stdout)  # the whole output is YAML
    key = ApiKey.model_validate(entry)
    assert key.name == "ci-bot@team.x" and key.admin
    assert key.models == ["smollm2-135m-instruct", "flux-tiny"]
    assert key.sha256 == hash_key(keys[0]) and key.env is None

    # The snippet pasted under router.api_keys: makes a valid config.
    snippet = result.stdout.split("config file:\n", 1)[1]
    config = write_config(tmp_path, "router:\n  api_keys:\n" + "".join(
        f"    {line}\n" for line in snippet.splitlines()))
    (loaded,) = load_config([config]).router.api_keys
    assert loaded == key

    plain = cli("keys", "create", "--name", "plain", env=clean_env)
    assert plain.returncode == 0, plain.stderr
    assert yaml.safe_load(plain.stdout) == [
        {"name": "plain", "sha256": hash_key(re.findall(r"sk-[\w-]+", plain.stdout)[0])}]


@pytest.mark.parametrize("name", ["has space", "semi;colon", "x" * 65, ""])
def test_cli_keys_create_rejects_bad_names(name: str, clean_env):
    result = cli("keys", "create", "--name", name, env=clean_env)
    assert result.returncode == 2
    assert "invalid key name" in result.stderr and "Traceback" not in result.stderr
    assert "sk-" not in result.stdout

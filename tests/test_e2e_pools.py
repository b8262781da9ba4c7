"""Replicas through the real stack: two vLLM CPU replicas of the chat model behind smg
(the pool router `serving up` starts), two image replicas spread by the router itself.

One stack for the module, with every other worker off. The tests that kill a replica run last.
Nothing is timed: each test waits for the state it needs (a request running, a port closed, a
replica marked down) with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prefix_load import SHAPES, Summary, build_workload, delta, run_workload, scrape

from serving.config import load_config
from serving.config.deployment import Routing
from serving.launcher.pools import pool_router_spec
from serving.launcher.supervisor import free_port
from tests.conftest import CHAT_MODEL, start_stack
from tests.support.harness import BackgroundStack
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

# A replica's vLLM may take minutes to (re)start on a busy machine; never a timing assertion.
WAIT_S = 600
wait_for = functools.partial(wait_until, timeout_s=WAIT_S)

ROOT = Path(__file__).resolve().parent.parent

OVERLAY = """
workers:
  # A 256 MiB KV cache a replica (~11.6k tokens): workload D's prompts (~16k tokens) fit two
  # replicas, not one.
  chat: {replicas: 2, routing: {health_check_interval_s: 1},
         engine_args: {kv_cache_memory_bytes: 256M}}
  images: {replicas: 2, routing: {health_check_interval_s: 0.5}}
  edits: {enabled: false}
  videos: {enabled: false}
  speech: {enabled: false}
  transcription: {enabled: false}
"""

# 1500 tokens with the end-of-text tokens banned: it ends only at its length or aborted.
LONG_ESSAY = {"model": CHAT_MODEL, "max_tokens": 1500, "temperature": 1.0, "seed": 1,
              "logit_bias": {"0": -100, "2": -100},  # <|endoftext|>, <|im_end|>
              "messages": [{"role": "user", "content": "Write a very long essay about the "
                            "history of the world, with many chapters."}]}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundStack]:
    tmp = tmp_path_factory.mktemp("pools")
    (tmp / "pools.yaml").write_text(OVERLAY)
    stack = start_stack(tmp, "configs/cpu.yaml", str(tmp / "pools.yaml"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def clients(pool: BackgroundStack) -> tuple[OpenAI, OpenAI]:
    return (OpenAI(base_url=pool.v1, api_key=pool.key, max_retries=0, timeout=300),
            OpenAI(base_url=pool.v1, api_key=pool.other_key, max_retries=0, timeout=300))


def runtime(pool: BackgroundStack) -> dict:
    """The runtime file as it is now (rewritten when a replica restarts)."""
    return json.loads((pool.log.parent / "runtime.json").read_text())


def replica_urls(pool: BackgroundStack, worker: str = "chat") -> list[str]:
    return [r["url"] for r in runtime(pool)["workers"][worker]["replicas"]]


def metric(url: str, prefix: str) -> float:
    """The sum of a vLLM replica's samples whose line starts with `prefix` (0 if it is down)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.TransportError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def completed(url: str) -> float:
    """Requests the replica finished by itself (an aborted one is not counted)."""
    return sum(metric(url, f'vllm:request_success_total{{engine="0",finished_reason="{why}"')
               for why in ("stop", "length"))


def running(url: str) -> float:
    return metric(url, "vllm:num_requests_running")


def ready(pool: BackgroundStack) -> dict:
    return httpx.get(pool.base_url + "/ready", timeout=30).json()


def distinct_prompt(seed: int) -> str:
    """A long prompt that shares nothing with another seed's beyond the chat template."""
    words = ["apple", "river", "stone", "cloud", "engine", "violet", "market", "silver",
             "garden", "thunder", "paper"]
    rnd = random.Random(seed)
    return f"{seed}: " + " ".join(rnd.choice(words) for _ in range(250))


def test_every_replica_is_listed_and_ready(pool):
    workers = runtime(pool)["workers"]
    chat = workers["chat"]
    assert [r["name"] for r in chat["replicas"]] == ["chat/0", "chat/1"]
    assert len({r["url"] for r in chat["replicas"]} | {chat["url"]}) == 3  # and the router
    assert all(r["pid"] for r in chat["replicas"])
    assert [r["name"] for r in workers["images"]["replicas"]] == ["images/0", "images/1"]
    assert set(workers) == {"chat", "images"}
    body = ready(pool)
    assert body["status"] == "ready"
    assert body["workers"] == {"chat": "up", "images": "up"}
    assert body["replicas"] == {"chat/0": "up", "chat/1": "up", "chat/router": "up",
                                "images/0": "up", "images/1": "up"}


def test_requests_spread_over_both_chat_replicas(pool, clients):
    """A prompt no replica has cached goes to the replica holding the least (smg, the
    default): while one replica runs a long generation, the next request goes to the
    other, whose cache is empty."""
    client, _ = clients
    urls = replica_urls(pool)
    wait_for(lambda: sum(running(u) for u in urls) == 0, "the replicas to be idle")
    before = [completed(u) for u in urls]
    http = httpx.Client(base_url=pool.base_url, timeout=300,
                        headers={"Authorization": f"Bearer {pool.key}"})
    with http.stream("POST", "/v1/chat/completions", json={**LONG_ESSAY, "stream": True}) as r:
        lines = r.iter_lines()  # kept open: the generation runs while the next request goes
        assert r.status_code == 200, next(lines)
        busy = wait_for(lambda: [u for u in urls if running(u) == 1], "the stream to run")
        client.chat.completions.create(model=CHAT_MODEL, max_tokens=2, messages=[
            {"role": "user", "content": distinct_prompt(0)}])
    idle = next(u for u in urls if u not in busy)
    assert completed(idle) == before[urls.index(idle)] + 1
    wait_for(lambda: sum(running(u) for u in urls) == 0, "the abort of the stream")


def test_a_repeated_prompt_reads_its_cache_and_keys_do_not_share_it(clients):
    """cache_aware sends the repeat where its prefix is cached; `cache_salt` still keeps each
    key's cache its own behind the pool router."""
    a, b = clients
    prompt = distinct_prompt(1000 + int(time.time()))

    def ask(client: OpenAI):
        return client.chat.completions.create(model=CHAT_MODEL, max_tokens=2, messages=[
            {"role": "user", "content": prompt}]).usage

    first, second = ask(a), ask(a)
    assert first.prompt_tokens > 256
    assert first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens > 0
    other_first, other_second = ask(b), ask(b)
    assert other_first.cache_read_input_tokens == 0  # not key a's cache
    assert other_second.cache_read_input_tokens > 0


def test_streams_and_errors_pass_through_the_pool_router(pool, clients):
    client, _ = clients
    prompt = distinct_prompt(2000 + int(time.time()))
    messages = [{"role": "user", "content": prompt}]
    no_end = {"0": -100, "2": -100}  # exactly max_tokens, however the model would end
    whole = client.chat.completions.create(model=CHAT_MODEL, max_tokens=5, messages=messages,
                                           logit_bias=no_end)
    chunks = list(client.chat.completions.create(
        model=CHAT_MODEL, max_tokens=5, messages=messages, stream=True, logit_bias=no_end,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens == 5
    assert usage.cache_read_input_tokens > 0
    # vLLM's 400 reaches the client in OpenAI's envelope, naming the field.
    r = httpx.post(pool.v1 + "/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {pool.key}"},
                   json={"model": CHAT_MODEL, "max_tokens": 100000, "messages": messages})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_dropped_streams_are_metered_and_aborted_through_the_pool(pool):
    """The pool router passes the client leaving on to vLLM (the generation is aborted, not
    run to its 1500 tokens), and vLLM's running usage on to the router (vllm-router drops
    `continuous_usage_stats`; the worker's --enable-force-include-usage restores it)."""
    urls = replica_urls(pool)
    admin = httpx.Client(base_url=pool.base_url, timeout=300,
                         headers={"Authorization": f"Bearer {pool.admin_key}"})
    since = time.time()
    wait_for(lambda: sum(running(u) for u in urls) == 0, "the replicas to be idle")
    done = sum(completed(u) for u in urls)
    with admin.stream("POST", "/v1/chat/completions", json={**LONG_ESSAY, "stream": True}) as r:
        lines = r.iter_lines()  # kept: dropping the iterator would close the stream at once
        first = next(lines)
        assert r.status_code == 200, first
        for _ in range(10):
            next(lines)
        wait_for(lambda: sum(running(u) for u in urls) == 1, "the generation to run")
    wait_for(lambda: sum(running(u) for u in urls) == 0, "the abort")
    assert sum(completed(u) for u in urls) == done  # aborted, not finished

    def dropped() -> dict | None:
        rows = admin.get("/v1/usage", params={"since": str(since), "by": "key,status"}).json()
        return next((row for row in rows["data"]
                     if row["key"] == "admin-1" and str(row["status"]) == "499"), None)

    row = wait_for(dropped, "the ledger row of the dropped stream")
    assert row["requests"] == 1 and row["prompt_tokens"] > 0
    assert 0 < row["completion_tokens"] < 1500  # the running usage came through


def test_metrics_label_each_replica(pool):
    text = httpx.get(pool.base_url + "/metrics", timeout=60,
                     headers={"Authorization": f"Bearer {pool.admin_key}"}).text
    for replica in ("0", "1"):
        assert f'serving_replica_up{{replica="{replica}",worker="chat"}} 1.0' in text
        assert f'serving_replica_up{{replica="{replica}",worker="images"}} 1.0' in text
        assert any(line.startswith("vllm:request_success_total{") and
                   f'replica="{replica}"' in line and 'worker="chat"' in line
                   for line in text.splitlines())
    assert 'serving_worker_up{worker="chat"} 1.0' in text
    # The pool router's own metrics (smg, the default engine), each replica (which it names
    # by URL) by its index: its health and the requests the router sent it.
    lines = text.splitlines()
    for replica in ("0", "1"):
        for family in ("smg_worker_health{", "smg_worker_requests_total{"):
            assert any(line.startswith(family) and 'worker="chat"' in line
                       and f'replica="{replica}"' in line for line in lines), text[-3000:]


@contextlib.contextmanager
def pool_router_beside(pool: BackgroundStack, routing: Routing) -> Iterator[str]:
    """The pool router the launcher would start for `routing`, over the stack's two chat
    replicas, on a port of its own; yields its base URL once it answers."""
    config = load_config([ROOT / "configs" / "cpu.yaml", pool.log.parent / "pools.yaml"])
    chat = config.workers["chat"].model_copy(update={"routing": routing})
    spec = pool_router_spec("chat", chat, lambda: replica_urls(pool))
    port = free_port()
    process = subprocess.Popen(spec.command(port), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(base + spec.health_path, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, f"{routing.engine} to answer", timeout_s=120)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_smg_serves_the_same_pool_with_the_launchers_command(pool):
    """`routing.engine: smg`: the pool router the launcher would start, over the same two
    replicas, passes vLLM's streamed usage and the cache salt through."""
    with pool_router_beside(pool, Routing(engine="smg")) as base:
        prompt = distinct_prompt(4000 + int(time.time()))

        def cached(salt: str) -> int:
            body = {"model": CHAT_MODEL, "max_tokens": 3, "cache_salt": salt, "stream": True,
                    "messages": [{"role": "user", "content": prompt}],
                    "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
            with httpx.stream("POST", base + "/v1/chat/completions", json=body,
                              timeout=300) as r:
                assert r.status_code == 200, r.read()
                chunks = [json.loads(line[6:]) for line in r.iter_lines()
                          if line.startswith("data: {")]
            assert all("usage" in c for c in chunks)  # running usage on every chunk
            return chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]

        wait_for(lambda: cached("a") > 0, "the salt's second request to read its cache",
                 timeout_s=120)
        assert cached("b") == 0  # another salt: not a's cache


def workload_d(pool: BackgroundStack, url: str, key: str = "") -> tuple[float, list[float]]:
    """Workload D of scripts/bench_prefix.py (one request at a time, 8 users x 3 turns, a
    working set of ~1.4x one replica's cache) through `url`, with fresh system prompts: the
    hit rate from the replicas' vLLM counters, and the requests each replica finished."""
    urls = replica_urls(pool)
    shape = SHAPES["D"]
    work = build_workload(prompts=shape.prompts, prompt_tokens=shape.prompt_tokens,
                          users=shape.users, conversations=shape.conversations,
                          turns=shape.turns, max_tokens=8, nonce=secrets.token_hex(4))
    before = scrape(urls)
    turns = asyncio.run(run_workload(url, CHAT_MODEL, work, key, timeout_s=600,
                                     concurrency=shape.concurrency))
    assert all(t.ok for t in turns), [t.error for t in turns if not t.ok]
    counters = delta(before, scrape(urls))
    summary = Summary("d", turns, 1.0, [counters[u] for u in urls])
    return summary.vllm_hit_rate, [float(n or 0) for n in summary.per_replica]


def test_light_traffic_fills_both_replicas_and_beats_round_robin(pool):
    """Workload D on the shipped routing defaults (through the stack) and on round robin
    (smg beside it, same replicas), one after the other in this run: cache-aware routing
    places the distinct prefixes on both replicas and keeps each sticky, so it serves from
    both and reads more of its prompts from cache than round robin, which makes every
    replica hold every prefix (more than one cache holds)."""
    urls = replica_urls(pool)
    wait_for(lambda: sum(running(u) for u in urls) == 0, "the replicas to be idle")
    hit_rate, served = workload_d(pool, pool.base_url, pool.key)
    with pool_router_beside(pool, Routing(policy="round_robin")) as base:
        round_robin, _ = workload_d(pool, base)
    assert all(n > 0 for n in served), served
    assert hit_rate > round_robin, (hit_rate, round_robin, served)


def kill(pid: int, url: str) -> None:
    """SIGKILL a replica's process group and wait until its port refuses connections."""
    os.killpg(pid, signal.SIGKILL)

    def refused() -> bool:
        try:
            httpx.get(url + "/health", timeout=2)
        except httpx.TransportError:
            return True
        return False

    wait_for(refused, f"{url} to refuse connections", timeout_s=60)


def test_an_image_replica_that_dies_leaves_the_pool_and_comes_back(pool, clients):
    client, _ = clients
    wait_for(lambda: "down" not in json.dumps(ready(pool)), "every replica up")
    victim = runtime(pool)["workers"]["images"]["replicas"][1]
    kill(victim["pid"], victim["url"])
    for i in range(4):  # to the survivor: refused connections are retried there
        image = client.images.generate(model="flux-tiny", prompt=f"a cat {i}", size="128x128")
        assert image.data[0].b64_json
    wait_for(lambda: ready(pool)["replicas"]["images/1"] == "down", "images/1 marked down",
             timeout_s=60)
    assert ready(pool)["status"] == "ready"  # the pool still serves
    # The supervisor restarts it (on a fresh port; the router follows) and it rejoins.
    wait_for(lambda: ready(pool)["replicas"]["images/1"] == "up", "images/1 to come back")
    assert runtime(pool)["workers"]["images"]["replicas"][1]["pid"] != victim["pid"]


def test_a_chat_replica_that_dies_ends_its_streams_cleanly_and_the_other_serves(pool, clients):
    """A stream and a plain request run on one replica (the same prompt: cache_aware keeps
    them together), which is killed. The stream ends with an error event, the plain request
    is sent again by the pool router to the other replica (nothing had gone back to the
    client) or ends with a clean 502 envelope, and later requests go to the survivor."""
    client, _ = clients
    urls = replica_urls(pool)
    wait_for(lambda: sum(running(u) for u in urls) == 0, "the replicas to be idle")
    http = httpx.Client(base_url=pool.base_url, timeout=600,
                        headers={"Authorization": f"Bearer {pool.key}"})
    plain: dict = {}
    with http.stream("POST", "/v1/chat/completions", json={**LONG_ESSAY, "stream": True}) as r:
        lines = r.iter_lines()
        assert r.status_code == 200, next(lines)
        busy = wait_for(lambda: [u for u in urls if running(u) == 1], "the stream to run")[0]
        thread = threading.Thread(target=lambda: plain.update(response=http.post(
            "/v1/chat/completions", json={**LONG_ESSAY, "max_tokens": 200})))
        thread.start()
        wait_for(lambda: running(busy) == 2, "the plain request to join the stream")
        victim = next(v for v in runtime(pool)["workers"]["chat"]["replicas"]
                      if v["url"] == busy)
        kill(victim["pid"], victim["url"])
        rest = list(lines)  # ends, rather than hanging
    errors = [json.loads(line[6:]) for line in rest if line.startswith('data: {"error"')]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "worker_unavailable"
    assert not any(line == "data: [DONE]" for line in rest)
    thread.join()
    # The pool router sends a plain request that failed on its replica to another one, when it
    # notices in time; otherwise it answers 500, which the client gets as a clean 502 envelope.
    answer = plain["response"]
    if answer.status_code == 200:
        assert answer.json()["usage"]["completion_tokens"] == 200
    else:
        assert answer.status_code in (502, 503), answer.text
        error = answer.json()["error"]
        assert error["type"] == "server_error" and error["message"], error

    wait_for(lambda: ready(pool)["replicas"][victim["name"]] == "down",
             f"{victim['name']} marked down", timeout_s=60)
    assert ready(pool)["workers"]["chat"] == "up"
    for seed in range(4):  # all to the survivor
        reply = client.chat.completions.create(model=CHAT_MODEL, max_tokens=2, messages=[
            {"role": "user", "content": distinct_prompt(3000 + seed)}])
        assert reply.usage.completion_tokens == 2


def test_stack_log_names_replicas(pool):
    log = Path(pool.log).read_text(errors="replace")
    for name in ("chat/0", "chat/1", "chat/router", "images/0", "images/1"):
        assert f"{name}: started pid" in log

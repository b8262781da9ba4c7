"""The prefix-routing benchmark's pure parts: the workload it sends, the counters it reads and
the pool router command lines it starts (the measurements themselves need real replicas:
`scripts/bench_prefix.py`)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import httpx
import pytest
from chat_pool import router_argv
from prefix_load import SHAPES, Summary, Turn, build_workload, cached_tokens, delta, scrape

from serving.config.deployment import Routing
from tests.support.wait import wait_until

METRICS = """\
# HELP vllm:prefix_cache_queries Prefix cache queries.
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 3648.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 2304.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 3.0
"""


def test_workload_spreads_conversations_evenly_and_is_reproducible():
    kw = dict(prompts=4, prompt_tokens=200, users=8, conversations=2, turns=3, max_tokens=8)
    w = build_workload(nonce="a", **kw)
    assert w.requests == 8 * 2 * 3
    uses = Counter(prompt for convs in w.users for prompt, _ in convs)
    assert set(uses.values()) == {4}  # 16 conversations over 4 prompts
    assert all(p.startswith("[a] ") for p in w.prompts)
    again = build_workload(nonce="b", **kw)
    assert [p[4:] for p in again.prompts] == [p[4:] for p in w.prompts]  # only the nonce moves
    assert again.users == w.users


def test_cached_tokens_reads_vllm_and_router_usage():
    assert cached_tokens({"prompt_tokens_details": {"cached_tokens": 128}}) == 128
    assert cached_tokens({"prompt_tokens_details": None}) == 0
    assert cached_tokens({"cache_read_input_tokens": 256, "prompt_tokens_details": {}}) == 256


def test_scrape_sums_counters_over_labels(monkeypatch: pytest.MonkeyPatch):
    def get(url: str, timeout: float) -> httpx.Response:
        if "dead" in url:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, text=METRICS)

    monkeypatch.setattr(httpx, "get", get)
    got = scrape(["http://a", "http://dead"])
    assert got == {"http://a": {"queries": 3648.0, "hits": 2304.0, "requests": 4.0},
                   "http://dead": None}
    d = delta({"http://a": {"queries": 0.0, "hits": 0.0, "requests": 1.0}, "http://dead": None},
              got)
    assert d == {"http://a": {"queries": 3648.0, "hits": 2304.0, "requests": 3.0},
                 "http://dead": None}


def test_summary_rates_and_balance():
    turns = [Turn(0, 0.0, 1.0, 0.2, True, "", 1000, 900, 10),
             Turn(1, 0.0, 1.0, 0.4, True, "", 1000, 500, 10),
             Turn(1, 0.0, 1.0, None, False, "boom")]
    s = Summary("x", turns, 2.0, [{"queries": 100.0, "hits": 80.0, "requests": 3.0},
                                  {"queries": 100.0, "hits": 40.0, "requests": 2.0}])
    assert s.failed == 1
    assert s.usage_hit_rate == pytest.approx(0.7)
    assert s.vllm_hit_rate == pytest.approx(0.6)
    assert s.per_replica == [3, 2] and s.imbalance == pytest.approx(1.5)
    assert s.tps == pytest.approx(10.0)
    s.merge(Summary("x", [], 1.0, [{"queries": 100.0, "hits": 100.0, "requests": 1.0}, None]))
    assert s.per_replica == [4, 2] and s.seconds == 3.0


@pytest.mark.parametrize("engine", ["vllm-router", "smg"])
def test_router_argv_carries_the_routing_config(engine: str):
    routing = Routing(engine=engine, policy="round_robin", cache_threshold=0.3,
                      balance_abs_threshold=4, health_check_interval_s=2)
    argv = router_argv(routing, ["http://a", "http://b"], 9000, Path("/m"), breaker=2)
    joined = " ".join(argv)
    assert "--worker-urls http://a http://b" in joined
    assert "--policy round_robin" in joined and "--cache-threshold 0.3" in joined
    assert "--balance-abs-threshold 4" in joined
    assert "--health-check-interval-secs 2" in joined and "--cb-failure-threshold 2" in joined
    assert ("--model-path /m" in joined) == (engine == "smg")
    assert Path(argv[0]).name == ("vllm-router" if engine == "vllm-router" else "smg")


def test_workload_d_is_light_traffic_over_a_working_set_past_one_cache():
    """Workload D: one request at a time, 8 users x 3 turns, 4 system prompts of ~4,000 tokens
    (~16k, ~1.4x the 11.6k tokens of a 256 MiB CPU replica cache)."""
    d = SHAPES["D"]
    assert d.concurrency == 1
    w = build_workload(prompts=d.prompts, prompt_tokens=d.prompt_tokens, users=d.users,
                       conversations=d.conversations, turns=d.turns, max_tokens=8, nonce="n")
    assert w.requests == 24
    assert 1.2 < d.prompts * d.prompt_tokens / 11_600 < 1.6
    assert SHAPES["A"].concurrency is None and SHAPES["C"].concurrency is None


def test_run_workload_keeps_to_its_concurrency_and_interleaves_users():
    """A real HTTP server (uvicorn) answering streams; the client never has more requests in
    flight than `concurrency`, and at 1 a freed slot goes to another user."""
    import asyncio
    import json
    import threading

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from prefix_load import run_workload

    app, state = FastAPI(), {"now": 0, "most": 0, "order": []}

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> StreamingResponse:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        state["order"].append(body["messages"][0]["content"])

        async def events():
            await asyncio.sleep(0.01)
            state["now"] -= 1
            chunk = {"choices": [{"index": 0, "delta": {"content": "ok"}}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": 10, "completion_tokens": 1,
                     "prompt_tokens_details": {"cached_tokens": 0}}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the test server to start", timeout_s=30)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        w = build_workload(prompts=4, prompt_tokens=20, users=4, conversations=1, turns=2,
                           max_tokens=4, nonce="x")
        turns = asyncio.run(run_workload(f"http://127.0.0.1:{port}", "m", w, concurrency=1))
        assert len(turns) == 8 and all(t.ok for t in turns), [t.error for t in turns]
        assert state["most"] == 1
        # Each user's turns in order, the users mixed: not one user's turns back to back.
        assert all(a.user != b.user for a, b in itertools.pairwise(turns[:5]))
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_plot_png_writes_an_image(tmp_path: Path):
    from prefix_load import plot_png

    turns = [Turn(0, 0.0, 1.0, 0.2, True, "", 1000, 900, 10)]
    rows = [Summary("smg cache_aware", turns, 1.0, [{"queries": 10.0, "hits": 8.0,
                                                     "requests": 3.0}, None])]
    plot_png(rows, tmp_path / "p.png", "workload D")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

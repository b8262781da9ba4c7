"""The prefix-routing benchmark's pure parts: the workload it sends, the counters it reads and
the pool router command lines it starts (the measurements themselves need real replicas:
`scripts/bench_prefix.py`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest
from chat_pool import router_argv
from prefix_load import Summary, Turn, build_workload, cached_tokens, delta, scrape

from serving.config.deployment import Routing

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

"""`serving drain` (a worker pod's preStop hook) and the launcher's idle check: what counts as
a request held, and when the wait ends. The clock is a list the test advances, so nothing here
depends on how fast the machine is."""

from __future__ import annotations

import pytest

from serving.cli import parser
from serving.launcher.drain import drain, held_at, requests_held
from serving.launcher.supervisor import free_port

# As vLLM's /metrics writes them (two engines' samples, other families around them).
METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} {running}
vllm:num_requests_running{engine="1",model_name="m"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} {waiting}
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
"""


def metrics(running: float, waiting: float) -> str:
    return METRICS.replace("{running}", str(running)).replace("{waiting}", str(waiting))


@pytest.mark.parametrize("running, waiting, held", [(0.0, 0.0, 0), (2.0, 0.0, 2),
                                                     (0.0, 3.0, 3), (1.0, 1.0, 2)])
def test_requests_held_counts_running_and_waiting(running, waiting, held):
    assert requests_held(metrics(running, waiting)) == held


def test_a_worker_without_vllm_counters_does_not_report():
    assert requests_held('serving_requests_in_flight{model="flux"} 2.0\n') is None


def test_a_worker_that_does_not_answer_holds_nothing():
    assert held_at(f"http://127.0.0.1:{free_port()}", timeout_s=2) == 0


class Clock:
    """time.monotonic and time.sleep for `drain`, with the worker's load over time."""

    def __init__(self, load: list[float | None]):
        self.now, self.load, self.slept = 0.0, load, []

    def held(self, _url: str) -> float | None:
        return self.load[min(int(self.now), len(self.load) - 1)]

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def drain(self, timeout_s: float, settle_s: float = 5.0) -> str:
        return drain("http://worker", timeout_s, settle_s=settle_s, held=self.held,
                     clock=lambda: self.now, sleep=self.sleep)


def test_an_idle_worker_waits_only_the_settle_time():
    clock = Clock([0])
    assert clock.drain(120) == "idle"
    assert 5 <= clock.now <= 6


def test_a_busy_worker_is_waited_for_until_it_is_idle():
    clock = Clock([2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    assert clock.drain(120) == "idle"
    assert 11 <= clock.now <= 12  # idle from 10 s, seen idle twice


def test_a_request_arriving_after_idle_restarts_the_wait():
    clock = Clock([0, 0, 0, 0, 0, 0, 1, 1, 0, 0])
    assert clock.drain(120, settle_s=0) == "idle"
    assert clock.now == 1  # idle twice before the request came: done
    clock = Clock([0, 1, 1, 0, 0])
    assert clock.drain(120, settle_s=0) == "idle"
    assert clock.now == 4


def test_a_worker_that_stays_busy_is_given_the_timeout():
    clock = Clock([3])
    assert clock.drain(30) == "timeout"
    assert clock.now == 30


def test_a_worker_that_does_not_report_gets_the_whole_timeout():
    clock = Clock([None])
    assert clock.drain(45) == "unreported"
    assert clock.now == 45


def test_the_cli_takes_the_hook_s_arguments():
    args = parser().parse_args(["drain", "--url", "http://127.0.0.1:8000", "--timeout", "120"])
    assert (args.url, args.timeout, args.settle) == ("http://127.0.0.1:8000", 120.0, 5.0)

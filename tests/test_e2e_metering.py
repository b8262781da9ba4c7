"""The usage ledger and the metrics, through the real stack.

Every request of every modality lands in the ledger exactly once with what its response said
it used; a stream the client drops is metered with what was generated before it left.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CHAT_MODEL, validate_openai
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

SUMS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "images", "characters",
        "audio_seconds", "video_seconds", "requests")


@pytest.fixture(scope="module")
def admin(stack) -> httpx.Client:
    """The admin key, which no other test uses: its totals are this file's traffic alone."""
    with httpx.Client(base_url=stack.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {stack.admin_key}"}) as c:
        yield c


def totals(admin: httpx.Client, since: float) -> dict[tuple[str, str], dict]:
    r = admin.get("/v1/usage", params={"since": str(since), "by": "key,endpoint,status"})
    assert r.status_code == 200, r.text
    return {(row["endpoint"], str(row["status"])): row for row in r.json()["data"]
            if row["key"] == "admin-1"}


def chat(stream: bool, include_usage: bool = False, max_tokens: int = 8) -> dict:
    body: dict = {"model": CHAT_MODEL, "max_tokens": max_tokens, "temperature": 0,
                  "messages": [{"role": "user", "content": "Count from one to twenty."}]}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def streamed_usage(client: httpx.Client, body: dict) -> tuple[dict | None, int]:
    """The usage event if the client asked for one, and the tokens it got: one per content
    event after the opening role event (vLLM sends each token as it is generated)."""
    usage, events = None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "usage" not in chunk or chunk["choices"] == []  # no running usage
                usage = chunk.get("usage") or usage
                events += bool(chunk["choices"])
    return usage, events - 1


def test_every_request_is_in_the_ledger_with_its_usage(admin):
    metered = admin
    since = time.time()

    # Chat three ways: whole, streamed with usage, streamed without (metered all the same).
    whole = metered.post("/v1/chat/completions", json=chat(False)).json()["usage"]
    shown, tokens = streamed_usage(metered, chat(True, include_usage=True))
    assert shown is not None and shown["completion_tokens"] == tokens
    unshown, tokens = streamed_usage(metered, chat(True))
    assert unshown is None  # not asked for: not shown, and metered all the same
    expect = {"prompt_tokens": whole["prompt_tokens"] * 3,  # the same prompt each time
              "completion_tokens": whole["completion_tokens"] + shown["completion_tokens"]
              + tokens}

    # A stream dropped after its first few events: metered to what was generated.
    with metered.stream("POST", "/v1/chat/completions", json=chat(True, max_tokens=200)) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 6:
                break

    image = metered.post("/v1/images/generations", json={"model": "flux-tiny", "prompt": "a",
                                                         "n": 2, "size": "128x128"}).json()
    speech = metered.post("/v1/audio/speech", json={"model": "hibari", "voice": "alloy",
                                                    "input": "Hello there.",
                                                    "response_format": "wav"})
    assert speech.status_code == 200
    heard = metered.post("/v1/audio/transcriptions", files={"file": ("a.wav", speech.content)},
                         data={"model": "whisper-tiny.en", "response_format": "verbose_json"})
    assert heard.status_code == 200
    # Video seconds are billed when the render completes: not for a job deleted before. The
    # model renders one job at a time, oldest first, and the first takes its most steps: the
    # second is deleted while it still waits its turn.
    video = metered.post("/v1/videos", json={"model": "wan-tiny", "prompt": "a", "seconds": "1",
                                             "size": "128x128", "num_inference_steps": 100})
    assert video.status_code == 200
    dropped_video = metered.post("/v1/videos", json={"model": "wan-tiny", "prompt": "b",
                                                     "seconds": "1", "size": "128x128"}).json()
    assert metered.delete(f"/v1/videos/{dropped_video['id']}").status_code == 200

    # The dropped stream is recorded once the router notices the client left, the video once
    # it is rendered.
    def recorded() -> dict | None:
        rows = totals(admin, since)
        both = ("/v1/chat/completions", "499") in rows and ("video.render", "200") in rows
        return rows if both else None

    rows = wait_until(recorded, "the dropped stream and the render in the ledger",
                      timeout_s=300, every_s=0.2)

    done = rows[("/v1/chat/completions", "200")]
    assert done["requests"] == 3
    assert done["prompt_tokens"] == expect["prompt_tokens"]
    assert done["completion_tokens"] == expect["completion_tokens"]
    dropped = rows[("/v1/chat/completions", "499")]
    assert dropped["requests"] == 1
    assert dropped["prompt_tokens"] == whole["prompt_tokens"]
    assert 0 < dropped["completion_tokens"] < 200

    assert rows[("/v1/images/generations", "200")]["images"] == len(image["data"]) == 2
    assert rows[("/v1/images/generations", "200")]["prompt_tokens"] == \
        image["usage"]["input_tokens"]
    assert rows[("/v1/audio/speech", "200")]["characters"] == len("Hello there.")
    audio_s = rows[("/v1/audio/transcriptions", "200")]["audio_seconds"]
    assert audio_s == pytest.approx(heard.json()["duration"], abs=0.05)
    created = rows[("/v1/videos", "200")]
    assert created["requests"] == 2 and created["video_seconds"] == 0
    assert metered.get(f"/v1/videos/{video.json()['id']}").json()["status"] == "completed"
    rendered = rows[("video.render", "200")]
    assert rendered["requests"] == 1 and rendered["video_seconds"] == 1.0


def test_usage_and_metrics_are_for_admin_keys_only(stack, http):
    for path in ("/v1/usage", "/metrics"):
        r = http.get(path)
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions"
        assert httpx.get(stack.base_url + path).status_code == 401
    admin = {"Authorization": f"Bearer {stack.admin_key}"}
    for params, param in (({"by": "user"}, "by"), ({"since": "last tuesday"}, "since")):
        bad = http.get("/v1/usage", params=params, headers=admin)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param
        validate_openai(bad.json(), "ErrorResponse")


def test_metrics(stack, admin, client):
    client.chat.completions.create(model=CHAT_MODEL, max_tokens=4, stream=True,
                                   messages=[{"role": "user", "content": "hi"}]).close()
    list(client.chat.completions.create(model=CHAT_MODEL, max_tokens=4, stream=True,
                                        messages=[{"role": "user", "content": "hi"}]))
    r = admin.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for needle in (
        'serving_requests_total{endpoint="/v1/chat/completions",model="smollm2-135m-instruct",'
        'status="200"}',
        "serving_request_duration_seconds_bucket",
        'serving_time_to_first_token_seconds_count{model="smollm2-135m-instruct"}',
        "serving_output_tokens_per_second_bucket",
        'serving_worker_up{worker="chat"} 1.0',
        "serving_requests_in_flight",
        'serving_tokens_total{kind="prompt",model="smollm2-135m-instruct"}',
    ):
        assert needle in text, needle
    # The worker's own metrics, merged in with its name; the whole parses, each family once.
    families = list(text_string_to_metric_families(text))
    assert len(families) == len({f.name for f in families})
    running = next(f for f in families if f.name == "vllm:num_requests_running")
    assert [s.labels["worker"] for s in running.samples] == ["chat"]


def test_every_metric_the_grafana_dashboard_queries_exists(admin, client):
    """The chart's Grafana dashboard (deploy/helm/serving/dashboards/serving.json) queries only
    what /metrics exports (after some traffic)."""
    dashboard = json.loads((Path(__file__).resolve().parents[1] / "deploy" / "helm" / "serving"
                            / "dashboards" / "serving.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {re.sub(r"_(bucket|total)$", "", m)
               for e in exprs for m in re.findall(r"\b(serving_\w+|vllm:\w+)", e)}
    assert len(queried) >= 12
    client.chat.completions.create(model=CHAT_MODEL, max_tokens=2,
                                   messages=[{"role": "user", "content": "hi"}])
    text = admin.get("/metrics").text
    exported = {f.name for f in text_string_to_metric_families(text)}
    assert queried - exported == set(), text

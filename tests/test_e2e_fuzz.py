"""Security fuzzing against the running stack: whatever a client sends, the router answers with a
status below 500, and every 4xx is OpenAI's error envelope (Anthropic's on /v1/messages*).

1. schemathesis over the router's own OpenAPI document (positive and negative cases per
   operation), with generated values that would be valid but expensive capped to cheap ones.
2. hypothesis-made bodies for each JSON endpoint (arbitrary JSON, real fields set to wrong types,
   huge numbers, lone surrogates, raw bytes) and random multipart forms for uploads.
3. Path and query tricks for ids.

A failure prints the request that caused it. Workers are shared with the rest of the session,
so no case here may leave expensive work behind: video jobs are deleted as soon as they exist.
"""

from __future__ import annotations

import io
import json
import os
import socket
import wave
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import CHAT_MODEL, validate_openai
from tests.support.harness import BackgroundStack
from tests.support.images import encoded

pytestmark = pytest.mark.e2e

IMAGE_MODEL = "flux-tiny"
EDITOR_MODEL = "flux-kontext-tiny"
VIDEO_MODEL = "wan-tiny"
TTS_MODEL = "hibari"
STT_MODEL = "whisper-tiny.en"
ENVELOPE_FIELDS = {"message", "type", "param", "code"}


def fuzz_settings(max_examples: int):
    """Bounded for the 2-core test box, and the same examples every run so CI is repeatable;
    SERVING_FUZZ_EXAMPLES=n runs n fresh random ones per test for a deeper search."""
    deeper = os.environ.get("SERVING_FUZZ_EXAMPLES")
    return settings(max_examples=int(deeper or max_examples), derandomize=not deeper,
                    deadline=None, database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate])


ANTHROPIC_ENVELOPE = {"type", "message"}


def check_answer(status: int, body: bytes, request: str, path: str = "") -> None:
    """No 5xx ever; a 4xx carries OpenAI's error envelope, or Anthropic's on the Messages API
    (its clients read only that one)."""
    shown = body[:2000].decode(errors="replace")
    assert status < 500, f"{status} for\n{request}\n-> {shown}"
    if status >= 400:
        try:
            payload = json.loads(body)
        except ValueError:
            raise AssertionError(
                f"{status} without a JSON body for\n{request}\n-> {shown}") from None
        if path.startswith("/v1/messages"):
            assert payload["type"] == "error", f"{request}\n-> {shown}"
            assert set(payload["error"]) == ANTHROPIC_ENVELOPE, f"{request}\n-> {shown}"
            assert all(isinstance(v, str) for v in payload["error"].values()), shown
            return
        validate_openai(payload, "ErrorResponse")
        assert set(payload["error"]) == ENVELOPE_FIELDS, f"{request}\n-> {shown}"


def describe(method: str, url: str, body: Any = None, headers: dict | None = None) -> str:
    text = f"{method} {url}"
    if headers:
        text += f"\nheaders: {headers!r}"
    if body is not None:
        text += f"\nbody: {body if isinstance(body, str) else repr(body)[:3000]}"
    return text


def send(stack: BackgroundStack, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on its own connection: a server that drops one connection after a crash must
    not be blamed on the next case."""
    kwargs.setdefault("headers", {})
    kwargs["headers"] = {"Authorization": f"Bearer {stack.key}", **kwargs["headers"]}
    with httpx.Client(base_url=stack.base_url, timeout=120) as c:
        try:
            return c.request(method, path, **kwargs)
        except httpx.TransportError as e:  # a dropped connection or a stream cut short
            sent = {k: v for k, v in kwargs.items() if k != "headers"}
            raise AssertionError(f"{e!r} for\n{method} {str(path)[:300]}\n{sent!r:.3000}") from e


def forget_video(stack: BackgroundStack, response: httpx.Response | Any) -> None:
    """Delete a video job a case created, so nothing renders behind the next tests."""
    try:
        job = response.json()
    except ValueError:
        return
    if isinstance(job, dict) and str(job.get("id", "")).startswith("video_"):
        send(stack, "DELETE", f"/v1/videos/{job['id']}")


# --- 1. schemathesis over the router's OpenAPI document --------------------------------------

# Every operation the document lists, by how it is fuzzed here. Transcriptions and image edits
# are multipart and undescribed in the document; part 2 covers them.
SCHEMA_OPERATIONS = [
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"), ("GET", "/v1/catalog"),
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/responses"),
    ("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1/images/generations"), ("POST", "/v1/videos"), ("GET", "/v1/videos"),
    ("POST", "/v1/videos/generations"), ("GET", "/v1/videos/{video_id}"),
    ("DELETE", "/v1/videos/{video_id}"), ("GET", "/v1/videos/generations/{video_id}"),
    ("GET", "/v1/videos/{video_id}/content"), ("POST", "/v1/videos/{video_id}/remix"),
    ("POST", "/v1/audio/speech"), ("GET", "/v1/usage"), ("GET", "/v1/admin/reload"),
]
# fuzzed with the admin key, so that their parameters are parsed
ADMIN_ONLY = {"/v1/usage", "/v1/admin/reload"}
# Transcriptions and image edits take multipart bodies (fuzzed below as forms). A reload changes
# the stack the other operations are fuzzed against; tests/test_reload.py and test_e2e_reload.py
# cover it.
NOT_SCHEMA_FUZZED = {("POST", "/v1/audio/transcriptions"), ("POST", "/v1/images/edits"),
                     ("POST", "/v1/admin/reload")}

# The model each body-taking operation serves, put in place of the generated name in half the
# cases so that they get past the model lookup and reach the checks behind it (and a worker).
REAL_MODEL = {
    "/v1/chat/completions": CHAT_MODEL, "/v1/completions": CHAT_MODEL,
    "/v1/responses": CHAT_MODEL, "/v1/messages": CHAT_MODEL,
    "/v1/messages/count_tokens": CHAT_MODEL, "/v1/images/generations": IMAGE_MODEL,
    "/v1/videos": VIDEO_MODEL, "/v1/videos/generations": VIDEO_MODEL, "/v1/audio/speech": TTS_MODEL,
}

# field -> (largest value left as generated, cheap value for anything valid above it). Values
# outside the valid range stay as generated: the router (or vLLM) must reject them.
CHEAP: dict[str, dict[str, tuple[int, int]]] = {
    "/v1/chat/completions": {"max_tokens": (4, 2), "max_completion_tokens": (4, 2),
                             "n": (1, 1)},
    "/v1/completions": {"max_tokens": (4, 2), "n": (1, 1)},
    "/v1/responses": {"max_output_tokens": (4, 2)},
    "/v1/messages": {"max_tokens": (4, 2)},
    "/v1/images/generations": {"n": (1, 1), "num_inference_steps": (1, 1)},
    "/v1/videos": {"num_inference_steps": (1, 1), "fps": (4, 4)},
    "/v1/videos/generations": {"num_inference_steps": (1, 1), "fps": (4, 4)},
}
VALID_UP_TO = {"max_tokens": 8192, "max_completion_tokens": 8192, "max_output_tokens": 8192,
               "n": 128,
               "num_inference_steps": 100, "fps": 24}


def cheapen(path: str, body: Any) -> Any:
    """Cap what a valid request may cost: few tokens, one image, one step, short speech."""
    if not isinstance(body, dict):
        return body
    for field, (most, cheap) in CHEAP.get(path, {}).items():
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and (
                most < value <= VALID_UP_TO[field]):
            body[field] = cheap
    if path == "/v1/audio/speech" and isinstance(body.get("input"), str) and (
            len(body["input"]) <= 4096):
        body["input"] = body["input"][:40]
    if path in ("/v1/chat/completions", "/v1/completions") and (
            body.get("max_tokens") is None and body.get("max_completion_tokens") is None):
        body["max_tokens"] = 2
    if path == "/v1/responses" and body.get("max_output_tokens") is None:
        body["max_output_tokens"] = 2
    return body


@pytest.fixture(scope="session")
def api_schema(stack):
    import schemathesis

    return schemathesis.openapi.from_url(stack.base_url + "/openapi.json",
                                         config=schemathesis.Config())


@pytest.fixture
def a_video_id(stack):
    """A real job of this key, so id-taking operations sometimes see one that exists."""
    r = send(stack, "POST", "/v1/videos", json={
        "model": VIDEO_MODEL, "prompt": "fuzz target", "num_inference_steps": 1, "fps": 4})
    assert r.status_code == 200, r.text
    yield r.json()["id"]
    forget_video(stack, r)


def test_schema_operations_are_all_fuzzed(api_schema):
    listed = {(method.upper(), path) for path, ops in api_schema.raw_schema["paths"].items()
              for method in ops}
    assert listed == set(SCHEMA_OPERATIONS) | NOT_SCHEMA_FUZZED


@pytest.mark.parametrize(("method", "path"), SCHEMA_OPERATIONS,
                         ids=[f"{m} {p}" for m, p in SCHEMA_OPERATIONS])
def test_schemathesis(request, stack, api_schema, method, path):
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    operation = api_schema[path][method]
    has_inputs = bool(operation.body) or any(True for _ in operation.iter_parameters())
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_inputs else [])
    cases = st.one_of(*(operation.as_strategy(generation_mode=m) for m in modes))
    auth = {"Authorization": f"Bearer {stack.admin_key if path in ADMIN_ONLY else stack.key}"}
    video_id = request.getfixturevalue("a_video_id") if "{video_id}" in path else None

    @fuzz_settings(40 if has_inputs else 5)
    @given(case=cases, real_model=st.booleans(), real_id=st.booleans(),
           valid_messages=st.booleans())
    def run(case, real_model, real_id, valid_messages):
        if isinstance(case.body, dict) and path in REAL_MODEL and real_model:
            case.body["model"] = REAL_MODEL[path]
            if path == "/v1/chat/completions" and valid_messages:
                # The generated messages seldom pass the role rules; these let the other
                # fields reach vLLM.
                case.body["messages"] = [{"role": "user", "content": "hi"}]
            if path.startswith("/v1/messages") and valid_messages:
                case.body["messages"] = [{"role": "user", "content": "hi"}]
            if path == "/v1/responses" and valid_messages:
                case.body["input"] = "hi"
        if video_id and real_id and isinstance(case.path_parameters, dict):
            case.path_parameters["video_id"] = video_id
        case.body = cheapen(path, case.body)
        try:
            request = case.as_curl_command(headers=auth, base_url=stack.base_url)
        except Exception:  # the case itself is fine; only rendering it as curl failed
            request = describe(method, path, case.body)
        try:
            response = case.call(base_url=stack.base_url, headers=auth, timeout=120)
        except requests.RequestException as e:  # a dropped connection or a stream cut short
            raise AssertionError(f"{e!r} for\n{request}") from e
        check_answer(response.status_code, response.content, request, path)
        case.validate_response(response, checks=[not_a_server_error])
        if method == "POST" and path in ("/v1/videos", "/v1/videos/generations"):
            forget_video(stack, response)

    run()


# --- 2. hypothesis-made bodies ---------------------------------------------------------------

BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 2},
    "/v1/completions": {"model": CHAT_MODEL, "prompt": "hi", "max_tokens": 2},
    "/v1/responses": {"model": CHAT_MODEL, "input": "hi", "max_output_tokens": 2},
    "/v1/messages": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 2},
    "/v1/images/generations": {"model": IMAGE_MODEL, "prompt": "a dot", "size": "128x128",
                               "num_inference_steps": 1},
    "/v1/videos": {"model": VIDEO_MODEL, "prompt": "a dot", "num_inference_steps": 1, "fps": 4},
    "/v1/audio/speech": {"model": TTS_MODEL, "input": "hi", "voice": "alloy"},
    "/v1/embeddings": {"model": CHAT_MODEL, "input": "hi"},
}
SCHEMA_NAMES = {"/v1/chat/completions": "ChatCompletionRequest",
                "/v1/completions": "CompletionRequest",
                "/v1/responses": "CreateResponseRequest",
                "/v1/messages": "MessagesRequest",
                "/v1/images/generations": "ImageGenerationRequest",
                "/v1/audio/speech": "SpeechRequest"}
EXTRA_FIELDS = ["input", "encoding_format", "dimensions", "messages", "prompt", "stream",
                "tools", "response_format", "audio", "modalities", "file"]

lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
weird_strings = st.one_of(
    st.just(""), st.just(" "), st.just("\x00"), st.just("null"), st.just("x" * 20_000),
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0x80), max_size=8),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), lone_surrogates,
              st.text(max_size=3)),
    st.sampled_from(["../../etc/passwd", "%00", "'; DROP TABLE jobs; --", "\u202e", "🎬" * 4,
                     "{{7*7}}", "${jndi:ldap://x}", "128x128\n", "1e400", "NaN"]),
)
weird_numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1,
                     10**30, 10**400]),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_leaves = st.one_of(st.none(), st.booleans(), weird_numbers, weird_strings)


def json_values(fields: list[str]):
    keys = st.one_of(st.sampled_from(fields), weird_strings)
    return st.recursive(
        json_leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(keys, inner, max_size=4)),
        max_leaves=12,
    )


TEXT_FIELD = {"/v1/chat/completions": "messages", "/v1/completions": "prompt",
              "/v1/responses": "input", "/v1/messages": "messages",
              "/v1/images/generations": "prompt", "/v1/videos": "prompt",
              "/v1/audio/speech": "input", "/v1/embeddings": "input"}


def with_text(path: str, text: str) -> dict[str, Any]:
    """The valid base body with its text (prompt, input, message) replaced."""
    field = TEXT_FIELD[path]
    value: Any = [{"role": "user", "content": text}] if field == "messages" else text
    return {**BASES[path], field: value}


def bodies(path: str, fields: list[str]):
    """(raw bytes, content type): arbitrary JSON, the valid base with fields swapped for wrong
    values or dropped, nested messages gone wrong, or bytes that are not JSON at all."""
    base = BASES[path]
    values = json_values(fields)
    messages = st.lists(st.dictionaries(
        st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id", "x"]),
        st.one_of(st.sampled_from(["user", "assistant", "system", "tool", "developer"]),
                  values), max_size=4), max_size=3)
    json_bodies = st.one_of(
        values,
        st.builds(lambda over: {**base, **over},
                  st.dictionaries(st.sampled_from(fields), values, min_size=1, max_size=3)),
        st.builds(lambda drop: {k: v for k, v in base.items() if k not in drop},
                  st.sets(st.sampled_from(list(base)), min_size=1)),
        st.builds(lambda m: {**base, "messages": m}, messages),
        # Valid requests with odd text, for the models themselves to cope with.
        st.builds(lambda t: with_text(path, t), st.one_of(
            weird_strings, st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))),
    )
    encoded = st.builds(
        lambda v, ascii_only: json.dumps(cheapen(path, v), ensure_ascii=ascii_only).encode(
            "utf-8", "surrogatepass"),
        json_bodies, st.booleans())
    content_types = st.sampled_from([
        "application/json", "application/json; charset=utf-16", "text/plain", "",
        "application/x-www-form-urlencoded", "multipart/form-data",
        "multipart/form-data; boundary=xyz"])
    return st.one_of(
        st.tuples(encoded, st.just("application/json")),
        st.tuples(encoded, content_types),
        st.tuples(st.binary(max_size=300), content_types),
    )


@pytest.fixture(scope="session")
def request_fields(api_schema) -> dict[str, list[str]]:
    schemas = api_schema.raw_schema["components"]["schemas"]
    video = api_schema.raw_schema["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    fields = {path: sorted(schemas[name]["properties"]) for path, name in SCHEMA_NAMES.items()}
    fields["/v1/videos"] = sorted(video["application/json"]["schema"]["properties"])
    fields["/v1/embeddings"] = sorted(BASES["/v1/embeddings"])
    return {path: sorted(set(names) | set(EXTRA_FIELDS)) for path, names in fields.items()}


@pytest.mark.parametrize("path", list(BASES))
def test_generated_json_bodies(stack, request_fields, path):
    @fuzz_settings(45)
    @given(body=bodies(path, request_fields[path]))
    def run(body):
        raw, content_type = body
        headers = {"content-type": content_type} if content_type else {}
        r = send(stack, "POST", path, content=raw, headers=headers)
        check_answer(r.status_code, r.content, describe("POST", path, raw, headers), path)
        if path == "/v1/videos" and r.status_code == 200:
            forget_video(stack, r)

    run()


def wav_bytes(seconds: float = 0.2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(int(16000 * seconds) * 2))
    return buf.getvalue()


WAV = wav_bytes()
form_text = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["", "json", "verbose_json", "srt", "word", "segment", "en", "xx", "true",
                     "1e400", "NaN", "-1", "2", "../../etc/passwd", "\x00", "x" * 5000]),
)
form_fields = {
    "/v1/audio/transcriptions": ["model", "language", "prompt", "temperature", "response_format",
                                 "timestamp_granularities[]", "stream", "chunking_strategy",
                                 "include[]", "file", "x"],
    "/v1/videos": ["model", "prompt", "size", "seconds", "seed", "fps", "num_inference_steps",
                   "input_reference", "x"],
    "/v1/images/edits": ["model", "prompt", "n", "size", "response_format", "seed",
                         "num_inference_steps", "guidance_scale", "mask", "image[]", "file", "x"],
}
real_form = {"/v1/audio/transcriptions": {"model": STT_MODEL},
             "/v1/videos": {"model": VIDEO_MODEL, "prompt": "a dot", "num_inference_steps": "1",
                            "fps": "4"},
             "/v1/images/edits": {"model": EDITOR_MODEL, "prompt": "a dot",
                                  "num_inference_steps": "1"}}
# The multipart part that carries the file, and a valid file for it.
FILE_PART = {"/v1/audio/transcriptions": "file", "/v1/videos": "file", "/v1/images/edits": "image"}
PNG = encoded("PNG", (64, 64))
VALID_FILE = {"/v1/audio/transcriptions": ("clip.wav", WAV, "audio/wav"),
              "/v1/images/edits": ("dot.png", PNG, "image/png")}


def damaged(good: bytes, header: int):
    """`good`, or it cut, its header kept with junk after it, or random bytes."""
    return st.one_of(
        st.binary(max_size=2000),
        st.just(good),
        st.builds(lambda cut: good[:cut], st.integers(0, len(good))),
        st.builds(lambda junk: good[:header] + junk, st.binary(max_size=500)),
    )


audio_files = damaged(WAV, 44)
image_files = damaged(PNG, 33)
file_names = st.one_of(
    st.sampled_from(["a.wav", "a.WAV", "a.mp3", "a.flac", "a", "", ".wav", "a.wav.exe",
                     "../../etc/passwd.wav", "a\x00.wav", "%00.wav", "a" * 300 + ".wav"]),
    st.builds(lambda s: s + ".wav", st.text(st.characters(codec="utf-8"), max_size=10)),
)


def forms(path: str):
    """(fields, file) for a multipart body: random fields and files, or a valid request with a
    field changed or the file (audio, image) cut, padded or replaced."""
    fields = form_fields[path]
    values = st.one_of(form_text, st.binary(max_size=30),
                       st.lists(st.sampled_from(["word", "segment", "x", ""]), max_size=3))
    contents = image_files if path == "/v1/images/edits" else audio_files
    files = st.tuples(file_names, contents, st.sampled_from(
        ["audio/wav", "image/png", "application/octet-stream", "text/plain", "video/mp4", ""]))
    known = [f for f in fields if f not in ("file", "x")]
    valid = VALID_FILE.get(path)
    near_valid = st.tuples(
        st.builds(lambda extra: {**real_form[path], **extra}, st.one_of(
            st.just({}), st.dictionaries(st.sampled_from(known), form_text, max_size=1))),
        st.builds(lambda data: (valid[0], data, valid[2]), st.one_of(st.just(valid[1]), contents))
        if valid else st.none())
    anything = st.tuples(st.dictionaries(st.sampled_from(fields), values, max_size=5),
                         st.one_of(st.none(), files))
    return st.one_of(near_valid, near_valid, anything)


@pytest.mark.parametrize("path", list(form_fields))
def test_generated_multipart_forms(stack, path):
    @fuzz_settings(45)
    @given(form=forms(path), raw=st.one_of(st.none(), st.none(), st.none(), st.tuples(
        st.binary(max_size=400), st.sampled_from([
            "multipart/form-data", "multipart/form-data; boundary=xyz",
            "multipart/form-data; boundary=", "multipart/form-data; boundary=\"a\"; x=y"]))))
    def run(form, raw):
        if raw is not None:
            body, content_type = raw
            request = describe("POST", path, body, {"content-type": content_type})
            r = send(stack, "POST", path, content=body, headers={"content-type": content_type})
        else:
            data, file = form
            request = describe("POST", path, {"form": data, "file": file and (
                file[0], file[1][:100], file[2])})
            r = send(stack, "POST", path, data=data,
                     files={FILE_PART[path]: file} if file is not None else None)
        check_answer(r.status_code, r.content, request)
        if path == "/v1/videos" and r.status_code == 200:
            forget_video(stack, r)

    run()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/generations",
                                  "/v1/videos", "/v1/audio/speech"])
@pytest.mark.parametrize("number", ["1" + "0" * 5000, "1e999999", "-1e999999", "1e-400", "-0",
                                    "1.0", "0x10", "01", "1_000", "Infinity", "-NaN"],
                         ids=lambda n: n[:12])
def test_json_numbers_json_cannot_hold(stack, path, number):
    """Numbers past Python's 4300-digit int limit, overflowing floats, and non-JSON spellings."""
    field = {"/v1/chat/completions": "max_tokens", "/v1/images/generations": "n",
             "/v1/videos": "seed", "/v1/audio/speech": "speed"}[path]
    raw = json.dumps({k: v for k, v in BASES[path].items() if k != field})[:-1]
    raw += f', "{field}": {number}}}'
    r = send(stack, "POST", path, content=raw.encode(),
             headers={"content-type": "application/json"})
    check_answer(r.status_code, r.content, describe("POST", path, raw[:300]))
    if path == "/v1/videos":
        forget_video(stack, r)


# --- 3. path and query tricks ----------------------------------------------------------------

# test_e2e_videos covers plain non-ids, '../../etc/passwd' and '..%2F..%2Fvideos.db'.
TRICK_IDS = [
    "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%252e%252e%252fetc%252fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini", "%00", "video_%00", "%ff%fe", "%", "%zz",
    "%0d%0aX-Injected:%201",
    "video_" + "0" * 32 + "%0a", "video_" + "A" * 32, "video_' OR '1'='1", "*", "%2A",
    "vid%C3%A9o_%C3%BC", "%E8%A7%86%E9%A2%91", "%F0%9F%8E%AC", "%E2%80%AE", "%EF%BC%8E%EF%BC%8E",
    "x" * 4000, "video_" + "0" * 50_000,
]


@pytest.mark.parametrize("video_id", TRICK_IDS, ids=lambda v: v[:40])
def test_video_id_tricks(stack, video_id):
    for method, path in [("GET", f"/v1/videos/{video_id}"),
                         ("GET", f"/v1/videos/{video_id}/content"),
                         ("GET", f"/v1/videos/generations/{video_id}"),
                         ("DELETE", f"/v1/videos/{video_id}"),
                         ("POST", f"/v1/videos/{video_id}/remix"),
                         ("GET", f"/v1/models/{video_id}")]:
        url = httpx.URL(stack.base_url).copy_with(raw_path=path.encode())
        r = send(stack, method, url)
        check_answer(r.status_code, r.content, describe(method, path[:300]))
        assert 400 <= r.status_code < 500, (method, path[:300], r.status_code)


@pytest.mark.parametrize("query", [
    "after=video_'%20OR%201=1--", "after=%00", "after=" + "a" * 10_000, "limit=-1", "limit=0",
    "limit=1e400", "limit=99999999999999999999", "limit=NaN", "order=desc;%20DROP%20TABLE%20jobs",
    "order=%00", "limit=1&limit=2", "after[]=x", "limit=", "order=",
])
def test_video_list_query_tricks(stack, query):
    url = httpx.URL(stack.base_url).copy_with(raw_path=f"/v1/videos?{query}".encode())
    r = send(stack, "GET", url)
    check_answer(r.status_code, r.content, describe("GET", f"/v1/videos?{query[:300]}"))


def raw_http(stack: BackgroundStack, request: bytes) -> tuple[int, bytes]:
    """Send bytes the HTTP clients refuse to, and read the whole answer."""
    host = urlsplit(stack.base_url)
    with socket.create_connection((host.hostname, host.port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# Visible ASCII, space, tab and obs-text: what HTTP allows in a field value (a DEL or other
# control byte is malformed HTTP, answered by uvicorn; see test_unparseable_requests_are_enveloped).
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, include_characters="\t",
                                    exclude_characters="\x7f"), max_size=80)


@fuzz_settings(60)
@given(value=st.one_of(
    header_text, st.builds(lambda v: "Bearer " + v, header_text),
    st.sampled_from(["", "Bearer", "Bearer ", "bearer sk-x", "Bearer sk-bg-", "Basic Og==",
                     "Bearer " + "a" * 8000, "Bearer \xa0", "Bearer sk-x, Bearer sk-y"]),
))
def test_generated_authorization_headers(stack, value):
    """Any Authorization value but a key is a 401 envelope (raw bytes: clients refuse some)."""
    assert stack.key not in value and stack.admin_key not in value
    body = json.dumps({"model": CHAT_MODEL, "messages": []}).encode()
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("GET", "/v1/usage")]:
        status, answer = raw_http(stack, (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Authorization: {value}\r\n\r\n").encode("latin-1") + body)
        request = describe(method, path, headers={"Authorization": value[:200]})
        check_answer(status, answer, request)
        assert status == 401, f"{status} for\n{request}"


@pytest.mark.xfail(strict=True, reason="uvicorn answers HTTP it cannot parse (request line over "
                   "its limit, bytes not allowed in a path) itself, with text/plain "
                   "'Invalid HTTP request received.', before the app can envelope it")
@pytest.mark.parametrize(("target", "header"), [
    (b"/v1/videos/" + b"a" * 100_000, b"X: y"), (b"/v1/videos/\xff a", b"X: y"),
    (b"/v1/models", b"X: a\x7fb")], ids=["long-line", "space-in-path", "del-in-header"])
def test_unparseable_requests_are_enveloped(stack, target, header):
    status, body = raw_http(stack, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                            b"Authorization: Bearer " + stack.key.encode() + b"\r\n" +
                            header + b"\r\nConnection: close\r\n\r\n")
    check_answer(status, body, describe("GET", target[:100].decode(errors="replace"),
                                        headers={"raw": header[:100]}))


# --- known bugs, found by the fuzzers above: each must answer 400, not 500 ------------------

# JSON lets a string carry a lone UTF-16 surrogate ("\ud800"); Python parses it, but it cannot
# be encoded as UTF-8 again. Strictly typed string fields reject it; anything typed as a union
# (str | list | None) or Any lets it through, and the router then fails re-encoding the body for
# the worker (serving/router/workers.py Worker.send, httpx json=) or rendering an error message
# that quotes the value (serving/errors.py OpenAIError.response, JSONResponse).
SURROGATE_CASES = [
    ("/v1/chat/completions", '"messages": [{"role": "user", "content": "\\ud800"}]'),
    ("/v1/chat/completions", '"stop": "\\ud800"'),
    ("/v1/chat/completions", '"logit_bias": {"\\ud800": 1}'),
    ("/v1/chat/completions", '"tools": [{"type": "function", "function": {"name": "f", '
     '"parameters": {"type": "\\ud800"}}}]'),
    ("/v1/completions", '"prompt": "\\ud800"'),
    ("/v1/responses", '"input": [{"role": "user", "content": "\\ud800"}]'),
    ("/v1/responses", '"metadata": {"\\ud800": "x"}'),
    ("/v1/images/generations", '"model": "\\ud800"'),
    ("/v1/images/generations", '"size": "\\ud800"'),
    ("/v1/videos", '"seconds": "\\ud800"'),
    ("/v1/videos", '"size": "\\ud800"'),
    ("/v1/audio/speech", '"voice": "\\ud800"'),
]


@pytest.mark.parametrize(("path", "field"), SURROGATE_CASES,
                         ids=[f"{p} {f[:30]}" for p, f in SURROGATE_CASES])
def test_lone_surrogate_is_a_bad_request(stack, path, field):
    base = {k: v for k, v in BASES[path].items() if f'"{k}"' not in field.split(":")[0]}
    raw = json.dumps(base)[:-1] + ", " + field + "}"
    r = send(stack, "POST", path, content=raw.encode(),
             headers={"content-type": "application/json"})
    check_answer(r.status_code, r.content, describe("POST", path, raw))
    assert r.status_code == 400
    if path == "/v1/videos":
        forget_video(stack, r)


# Speech for a text with nothing to say (a control or format character, an emoji) comes out as
# no samples; the encoder of every compressed format then fails on the empty frame
# (serving/media/audio.py AudioEncoder.encode, av.error.MemoryError from the resampler) after
# the worker has sent 200 and its headers (serving/workers/speech/server.py audio()), so the
# client gets a chunked body cut short. wav and pcm answer a complete, empty, 200.
@pytest.mark.parametrize(("text", "fmt"), [
    ("\u202e", "mp3"), ("\u202e", "opus"), ("\u202e", "aac"), ("\u202e", "flac"),
    ("\u202e", "sse"), ("\x00", "mp3"), ("🎬", "mp3")])
def test_speech_with_nothing_to_say_is_not_cut_off(stack, text, fmt):
    body = {"model": TTS_MODEL, "input": text, "voice": "alloy"}
    body.update({"stream_format": "sse"} if fmt == "sse" else {"response_format": fmt})
    r = send(stack, "POST", "/v1/audio/speech", json=body)
    check_answer(r.status_code, r.content, describe("POST", "/v1/audio/speech", body))

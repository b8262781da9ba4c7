"""What `serving up` prints once it serves: one screen that tells a new user what they have.

The URL, where the API key is, each model under the endpoints it serves, and a curl line that
works as printed (it reads the generated key file itself).
"""

from __future__ import annotations

import json
import shlex

from serving.config import Config, Modality
from serving.router.keys import configured_keys

ENDPOINTS: dict[Modality, tuple[str, ...]] = {
    Modality.chat: ("/v1/chat/completions", "/v1/completions", "/v1/responses"),
    Modality.image: ("/v1/images/generations",),
    Modality.video: ("/v1/videos",),
    Modality.speech: ("/v1/audio/speech",),
    Modality.transcription: ("/v1/audio/transcriptions",),
}


def _key_line(config: Config) -> tuple[str, str]:
    """Where the key is, and the shell expression that gives it."""
    if configured_keys(config.router):
        return ("API keys: the configured ones (router.api_keys, SERVING_API_KEYS); "
                "set SERVING_API_KEY to one of them for the line below", "$SERVING_API_KEY")
    path = config.router.generated_key_file
    return (f"API key:  in {path} (generated; readable only by you)",
            f"$(cat {shlex.quote(str(path))})")


def ready_banner(config: Config, url: str) -> str:
    """The screen: `url` is where the router listens (no /v1)."""
    key_where, key_expr = _key_line(config)
    lines = ["", "serving: ready", f"  URL:      {url}/v1", f"  {key_where}", "  Models:"]
    chat_model = None
    for worker in config.workers.values():
        entry = worker.entry
        if entry is None:
            continue
        chat_model = chat_model or (entry.id if entry.modality == Modality.chat else None)
        lines.append(f"    {entry.id:<28} {' '.join(ENDPOINTS[entry.modality])}")
    if chat_model is not None:
        ask = [{"role": "user", "content": "What is 2 + 2?"}]
        body = json.dumps({"model": chat_model, "messages": ask})
        lines += ["  Try it:", f"    curl -s {url}/v1/chat/completions "
                  f"-H \"Authorization: Bearer {key_expr}\" "
                  f"-H 'Content-Type: application/json' -d '{body}'"]
    return "\n".join(lines) + "\n"


def ready_message(config: Config) -> str:
    """`ready_banner` as the router's ready message: a template whose only field is {url}."""
    text = ready_banner(config, "\0URL\0")
    return text.replace("{", "{{").replace("}", "}}").replace("\0URL\0", "{url}")

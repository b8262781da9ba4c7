"""GET /v1/models (chat/text models, as OpenAI Model objects) and GET /v1/catalog (everything).

Both list only what the caller's key may use.

Media models (images, video, speech, transcription) are not OpenAI "models" a client can chat
with, so they are listed only in the catalog, with what a client needs to call them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.config import Modality, ModelEntry
from serving.errors import model_not_found
from serving.router.dependencies import Ctx, ServicesDep
from serving.upstream.served import Served

router = APIRouter()

# The APIs that serve each modality, so a client (or a gateway routing by API shape) can tell
# from the catalog which models speak which: every vLLM chat model also speaks Anthropic's
# Messages API (vLLM serves it for any chat template).
ENDPOINTS: dict[Modality, tuple[str, ...]] = {
    Modality.chat: ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
                    "/v1/messages/count_tokens"),
    Modality.image: ("/v1/images/generations",),
    Modality.video: ("/v1/videos",),
    Modality.speech: ("/v1/audio/speech",),
    Modality.transcription: ("/v1/audio/transcriptions",),
}


def _model_object(entry: ModelEntry, created: int) -> dict[str, Any]:
    return {"id": entry.id, "object": "model", "created": created, "owned_by": entry.owned_by}


def _catalog_object(served: Served, created: int) -> dict[str, Any]:
    entry = served.entry
    item = {
        **_model_object(entry, created),
        "modality": entry.modality.value,
        "capabilities": sorted(entry.capabilities),
        "aliases": entry.aliases,
        "endpoints": list(ENDPOINTS[entry.modality])
        + (["/v1/images/edits"] if "edits" in entry.capabilities else []),
    }
    if served.context_length:
        item["context_length"] = served.context_length
    if entry.sampling_defaults is not None:
        item["sampling_defaults"] = entry.sampling_defaults.values()
    if entry.image is not None:
        item |= {"sizes": entry.image.sizes, "default_size": entry.image.default_size,
                 "max_n": entry.image.max_n}
    if entry.speech is not None:
        item |= {"voices": entry.speech.voices, "default_voice": entry.speech.default_voice,
                 "openai_voices": entry.speech.openai_voices}
    if entry.transcription is not None:
        item["languages"] = entry.transcription.languages
    if entry.video is not None:
        item |= {"sizes": entry.video.sizes, "default_size": entry.video.default_size,
                 "seconds": entry.video.seconds, "default_seconds": entry.video.default_seconds}
    return item


@router.get("/v1/models")
async def list_models(ctx: Ctx, services: ServicesDep) -> dict[str, Any]:
    data = [
        _model_object(s.entry, services.created)
        for s in services.registry.visible(ctx.key)
        if s.entry.modality == Modality.chat
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id}")
async def retrieve_model(model_id: str, ctx: Ctx, services: ServicesDep) -> dict[str, Any]:
    served = services.registry.get(model_id)
    if (served is None or served.entry.modality != Modality.chat
            or (ctx.key is not None and not ctx.key.may_use(*served.entry.names()))):
        raise model_not_found(model_id)
    return _model_object(served.entry, services.created)


@router.get("/v1/catalog")
async def catalog(ctx: Ctx, services: ServicesDep) -> dict[str, Any]:
    data = [_catalog_object(s, services.created) for s in services.registry.visible(ctx.key)]
    return {"object": "list", "data": data}

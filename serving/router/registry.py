"""Public model names (ids and aliases) -> the catalog entry and the worker that serves it."""

from __future__ import annotations

import math
from collections.abc import Mapping

from serving.config import Modality
from serving.errors import OpenAIError, model_not_found
from serving.router.keys import Principal
from serving.upstream.served import Served


class Registry:
    def __init__(self, served: list[Served], reloading: Mapping[str, float] | None = None):
        self.served = served
        self._by_name = {name: s for s in served for name in s.entry.names()}
        # Model id -> seconds until it is expected back: a reload that could not run the new
        # worker beside the old one stopped the old first (`model_reloading`, 503).
        self.reloading = dict(reloading or {})

    def get(self, name: str) -> Served | None:
        return self._by_name.get(name)

    def visible(self, key: Principal | None) -> list[Served]:
        """The models a key may use (all of them without a key, as for the launcher)."""
        return [s for s in self.served if key is None or key.may_use(*s.entry.names())]

    def resolve(self, name: str | None, modality: Modality, endpoint: str,
                key: Principal | None = None, capability: str | None = None) -> Served:
        """The model a request names, or the 404/400 OpenAI gives for a wrong one.

        A model the key may not use is a 404 like one that does not exist, as OpenAI answers
        ("does not exist or you do not have access to it"). Endpoints where OpenAI's `model`
        is optional (images, videos) get the first configured model of their modality that
        the key may use when none is named. An endpoint that needs a `capability` (image edits)
        takes the first such model by default, and a 400 naming the models that have it for
        one without.
        """
        if name is None:
            served = next((s for s in self.visible(key) if s.entry.modality == modality
                           and (capability is None or capability in s.entry.capabilities)),
                          None)
            if served is None:
                having = "" if capability is None else f" with `{capability}`"
                raise OpenAIError(404, f"No {modality.value} model{having} is configured.",
                                  param="model", code="model_not_found")
        else:
            served = self._by_name.get(name)
            if served is None or (key is not None and not key.may_use(*served.entry.names())):
                raise model_not_found(name)
        if served.entry.modality != modality:
            raise OpenAIError(
                400,
                f"The model `{name}` is a {served.entry.modality.value} model and is not "
                f"supported by {endpoint}.",
                param="model",
                code="model_not_supported",
            )
        if capability is not None and capability not in served.entry.capabilities:
            able = [s.entry.id for s in self.visible(key) if capability in s.entry.capabilities]
            raise OpenAIError(
                400, f"The model `{name}` is not supported by {endpoint}; models that are: "
                f"{', '.join(able) or 'none configured'}.", param="model",
                code="model_not_supported")
        if served.entry.id in self.reloading:
            raise OpenAIError(
                503, f"The model `{served.entry.id}` is being reloaded with a new "
                "configuration; retry shortly.", code="model_reloading", type="server_error",
                headers={"Retry-After": str(max(1, math.ceil(self.reloading[served.entry.id])))})
        return served

"""Image edits through the real stack: the CPU default's editor, a tiny random diffusers
FluxKontextPipeline worker, beside its generator."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

EDITOR = "flux-kontext-tiny"


def test_catalog_shows_the_editor_beside_the_generator(http):
    r = http.get("/v1/catalog")
    assert r.status_code == 200, r.text
    by_id = {m["id"]: m for m in r.json()["data"]}
    assert "edits" in by_id[EDITOR]["capabilities"]
    assert "edits" not in by_id["flux-tiny"]["capabilities"]


def test_generations_default_to_the_generator(http):
    """A second image model does not change the default image model for generations."""
    r = http.post("/v1/images/generations", json={"prompt": "a lighthouse"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["images"] == 1

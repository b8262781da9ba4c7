"""Tiny random diffusers pipelines (serving.weights.tiny): build, reload offline, generate.

No hub here, so these pipelines stand in for FLUX.1 and Wan2.1 in tests; what is checked is
what the serving code relies on: sizes, frame counts, batching, step callbacks, and that a
seed gives the same weights and the same PNG bytes in another process.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from serving.weights.tiny import (  # noqa: E402
    build_clip_tokenizer,
    build_t5_tokenizer,
    build_tiny_flux,
    build_tiny_flux_kontext,
    build_tiny_wan,
)

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2  # results are compared across processes: keep torch's thread count fixed
PROMPT = "a photo of an astronaut riding a horse on Mars, 4k, détaillé ☃"


@pytest.fixture(autouse=True)
def _fixed_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "flux"
    build_tiny_flux(out, seed=0)
    return out


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "wan"
    build_tiny_wan(out, seed=0)
    return out


@pytest.fixture(scope="module")
def kontext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "flux-kontext"
    build_tiny_flux_kontext(out, seed=0)
    return out


@pytest.fixture(scope="module")
def flux(flux_dir: Path):
    return diffusers.FluxPipeline.from_pretrained(flux_dir)


@pytest.fixture(scope="module")
def wan(wan_dir: Path):
    return diffusers.WanPipeline.from_pretrained(wan_dir)


def _gen(seed: int = 1):
    return torch.Generator("cpu").manual_seed(seed)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _weights(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def test_tokenizers_take_any_text():
    clip, t5 = build_clip_tokenizer(), build_t5_tokenizer()
    assert clip.model_max_length == 77
    for text in ["", PROMPT, "日本語 🚀 tab\there", "word " * 300]:
        ids = clip(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77 and max(ids) < len(clip)
        ids = t5(text, padding="max_length", max_length=512, truncation=True).input_ids
        assert len(ids) == 512 and max(ids) < len(t5)
    # common words are whole tokens
    assert clip.tokenize("the horse") == ["the</w>", "horse</w>"]
    assert t5.tokenize("the horse") == ["▁the", "▁horse"]


def test_flux_layout(flux_dir: Path, flux):
    assert _size_mb(flux_dir) < 20
    assert (flux_dir / "model_index.json").is_file()
    assert flux.transformer.config.in_channels == 4 * flux.vae.config.latent_channels
    assert flux.transformer.config.joint_attention_dim == flux.text_encoder_2.config.d_model
    assert flux.transformer.config.pooled_projection_dim == flux.text_encoder.config.hidden_size
    assert flux.tokenizer.model_max_length == 77
    assert all(p.dtype == torch.float32 for p in flux.transformer.parameters())


def test_flux_generates_with_callback(flux):
    steps: list[int] = []

    def on_step(pipe, step: int, timestep, kwargs: dict) -> dict:
        steps.append(step)
        return kwargs

    out = flux(prompt=PROMPT, height=128, width=128, num_inference_steps=4, guidance_scale=0.0,
               generator=_gen(), output_type="pil", callback_on_step_end=on_step)
    assert [im.size for im in out.images] == [(128, 128)]
    assert steps == [0, 1, 2, 3]


def test_flux_256(flux):
    out = flux(prompt="a cat", height=256, width=256, num_inference_steps=2, guidance_scale=0.0,
               generator=_gen(), output_type="pil")
    assert out.images[0].size == (256, 256)


def test_flux_batch(flux):
    out = flux(prompt=["a red fox", "a blue boat"], num_images_per_prompt=2, height=128,
               width=128, num_inference_steps=2, guidance_scale=0.0, generator=_gen(),
               output_type="pil")
    assert [im.size for im in out.images] == [(128, 128)] * 4


def test_wan_generates_video(wan_dir: Path, wan):
    assert _size_mb(wan_dir) < 20
    assert wan.vae.config.z_dim == 16
    assert wan.transformer.config.text_dim == wan.text_encoder.config.d_model
    steps: list[int] = []

    def on_step(pipe, step: int, timestep, kwargs: dict) -> dict:
        steps.append(step)
        return kwargs

    frames = wan(prompt=PROMPT, height=128, width=128, num_frames=17, num_inference_steps=4,
                 generator=_gen(), output_type="np", callback_on_step_end=on_step).frames
    assert frames.shape == (1, 17, 128, 128, 3)
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    assert steps == [0, 1, 2, 3]


def test_build_is_deterministic(tmp_path: Path, flux_dir: Path, wan_dir: Path):
    build_tiny_flux(tmp_path / "flux", seed=0)
    assert _weights(tmp_path / "flux") == _weights(flux_dir)
    build_tiny_flux(tmp_path / "flux1", seed=1)
    assert _weights(tmp_path / "flux1") != _weights(flux_dir)
    # the CLI, in a child process as the project runs it
    subprocess.run([sys.executable, "-m", "serving.weights.tiny", "wan", str(tmp_path / "wan")],
                   cwd=ROOT, check=True, capture_output=True)
    assert _weights(tmp_path / "wan") == _weights(wan_dir)


def test_same_seed_same_png_in_another_process(flux_dir: Path, flux):
    """One seed, one PNG: byte-identical here and in a fresh process."""
    kwargs = dict(prompt="a red fox in the snow", height=128, width=128, num_inference_steps=4,
                  guidance_scale=0.0, output_type="pil")
    here = _png(flux(generator=_gen(7), **kwargs).images[0])
    assert here == _png(flux(generator=_gen(7), **kwargs).images[0])
    assert here != _png(flux(generator=_gen(8), **kwargs).images[0])
    script = textwrap.dedent(f"""
        import io, sys, torch
        torch.set_num_threads({THREADS})
        from diffusers import FluxPipeline
        pipe = FluxPipeline.from_pretrained({str(flux_dir)!r})
        image = pipe(generator=torch.Generator("cpu").manual_seed(7), **{kwargs!r}).images[0]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        sys.stdout.write(buf.getvalue().hex())
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True,
                           capture_output=True, text=True)
    there = bytes.fromhex(child.stdout.strip())
    assert hashlib.sha256(there).digest() == hashlib.sha256(here).digest()


def _solid(rgb: tuple[int, int, int], size: int = 128):
    from PIL import Image

    return Image.new("RGB", (size, size), rgb)


def test_kontext_edits_the_input_image(kontext_dir: Path, flux_dir: Path):
    """The editor reloads as the real FluxKontextPipeline; its output depends on the input
    image (so the image reaches the transformer), a seed repeats its bytes, n gives distinct
    images; it shares the tiny FLUX's text encoders and VAE, and adds a guidance embedding."""
    kontext = diffusers.FluxKontextPipeline.from_pretrained(kontext_dir)
    assert kontext.transformer.config.guidance_embeds
    for part in ("text_encoder", "text_encoder_2", "vae"):
        assert _weights(kontext_dir / part) == _weights(flux_dir / part)

    def edit(image, seed: int = 1, n: int = 1) -> list[bytes]:
        out = kontext(image=image, prompt="make the cat red", height=128, width=128,
                      num_images_per_prompt=n, num_inference_steps=2, guidance_scale=2.5,
                      max_area=128 * 128, _auto_resize=False, generator=_gen(seed)).images
        assert all(img.size == (128, 128) for img in out)
        return [_png(img) for img in out]

    red, blue = _solid((200, 30, 30)), _solid((30, 30, 200))
    first = edit(red)
    assert first == edit(red)
    assert first != edit(blue)
    assert first != edit(red, seed=2)
    pair = edit(red, n=2)
    assert pair[0] != pair[1]


def test_the_image_engine_makes_the_size_asked_of_kontext(kontext_dir: Path):
    """Kontext scales its output to `max_area` (1024x1024 by default); the engine pins it."""
    from PIL import Image

    from serving.protocol.images import ImageParams
    from serving.workers.images.engine import ImageEngine

    engine = ImageEngine(diffusers.FluxKontextPipeline.from_pretrained(kontext_dir))
    job = engine.new_job(ImageParams(prompt="x", n=2, width=256, height=128, steps=1,
                                     guidance=2.5, seed=0))
    engine.generate([job])
    assert [Image.open(io.BytesIO(png)).size for png in job.images] == [(256, 128)] * 2


def test_the_image_engine_edits_a_batch_of_inputs_in_one_call(kontext_dir: Path):
    """Two edit requests with different inputs share one pipeline call; each output follows
    its own input image (the same seed and prompt give different pictures), and a batch
    repeats its bytes."""
    from serving.protocol.images import ImageParams
    from serving.workers.images.engine import ImageEngine

    engine = ImageEngine(diffusers.FluxKontextPipeline.from_pretrained(kontext_dir))
    calls = []
    original = engine.pipe.__class__.__call__

    def counted(pipe, *args, **kwargs):
        calls.append(len(kwargs["image"]))
        return original(pipe, *args, **kwargs)

    def run() -> list[bytes]:
        jobs = [engine.new_job(ImageParams(prompt="x", n=1, width=128, height=128, steps=1,
                                           guidance=2.5, seed=5, image=_solid(rgb)))
                for rgb in ((200, 30, 30), (30, 30, 200))]
        assert jobs[0].params.batch_key() == jobs[1].params.batch_key()
        engine.generate(jobs)
        return [job.images[0] for job in jobs]

    engine.pipe.__class__.__call__ = counted
    try:
        red, blue = run()
        assert red != blue
        assert run() == [red, blue]
    finally:
        engine.pipe.__class__.__call__ = original
    assert calls == [2, 2]

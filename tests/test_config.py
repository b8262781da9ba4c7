"""Config files: every shipped file validates; overlays deep-merge; bad config names file + key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import ConfigError, load_catalog, load_config
from serving.config.loader import deep_merge
from serving.launcher.worker_set import worker_specs
from tests.support.vllm_args import vllm_args

ROOT = Path(__file__).resolve().parent.parent


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(config: Path):
    cfg = load_config([config])
    for worker in cfg.workers.values():
        assert worker.entry is not None and worker.args is not None
    # The launch command builds too (models are not prepared here: any path will do).
    specs = worker_specs(cfg, {name: Path("/models") / name for name in cfg.workers})
    assert all(spec.argv for spec in specs)


def test_every_catalog_entry_validates():
    catalog = load_catalog(ROOT / "models")
    assert {"smollm2-135m-instruct", "qwen2.5-7b-instruct"} <= catalog.keys()


def test_gpu_config_is_a_real_h100_deployment():
    cfg = load_config([ROOT / "configs" / "gpu-h100.yaml"])
    assert cfg.device == "cuda"
    chat = cfg.workers["chat"]
    assert chat.entry.source.hub == "Qwen/Qwen2.5-7B-Instruct"
    assert {"tool_use", "prefix_caching"} <= chat.entry.capabilities
    spec, *_ = worker_specs(cfg, {name: Path("/models/x") for name in cfg.workers})
    vllm = vllm_args(spec)
    assert vllm.dtype == "bfloat16"
    assert vllm.enable_prefix_caching and vllm.enable_prompt_tokens_details
    assert vllm.enable_auto_tool_choice and vllm.tool_call_parser == "hermes"
    assert (vllm.tensor_parallel_size, vllm.gpu_memory_utilization) == (1, 0.3)
    assert vllm.kv_cache_memory_bytes == 5 * 2**30
    assert not vllm.enforce_eager
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0"


def test_the_h200_config_serves_a_vision_model_with_tools():
    cfg = load_config([ROOT / "configs" / "gpu-h200.yaml"])
    vision = cfg.workers["vision"]
    assert vision.entry.source.hub == "Qwen/Qwen3-VL-8B-Instruct"
    assert {"vision", "tool_use", "prefix_caching"} <= vision.entry.capabilities
    assert "vision" not in cfg.workers["chat"].entry.capabilities
    specs = worker_specs(cfg, {name: Path("/models/x") for name in cfg.workers})
    vllm = vllm_args(next(s for s in specs if s.name == "vision"))
    assert vllm.enable_auto_tool_choice and vllm.tool_call_parser == "hermes"
    assert vllm.limit_mm_per_prompt == {"image": 8}
    assert vllm.kv_cache_memory_bytes == 8 * 2**30


def test_the_h200_config_serves_an_editor_within_its_memory_plan():
    """FLUX.1 Kontext, offloaded, beside everything else: the plan fits with the headroom."""
    from serving.config.plan import check_plan, memory_plan

    cfg = load_config([ROOT / "configs" / "gpu-h200.yaml"])
    edits = cfg.workers["edits"]
    assert "edits" in edits.entry.capabilities and edits.entry.source.gated
    assert edits.args.pipeline == "FluxKontextPipeline" and edits.args.offload == "model"
    (plan,) = memory_plan(cfg)
    check_plan([plan])
    assert plan.free >= cfg.gpu.headroom_gib


def test_cpu_config_flags():
    cfg = load_config([ROOT / "configs" / "cpu.yaml"])
    spec, *_ = worker_specs(cfg, {name: Path("/models/x") for name in cfg.workers})
    assert spec.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    vllm = vllm_args(spec)
    assert vllm.host == "127.0.0.1"
    assert vllm.enforce_eager and vllm.kv_cache_memory_bytes == 512 * 2**20
    assert vllm.structured_outputs_config.backend == "xgrammar"
    assert vllm.tool_strict_level == "parameter"
    assert vllm.chat_template.endswith(".jinja") and vllm.tensor_parallel_size == 1
    # The model takes images: as many as the router lets through.
    assert vllm.limit_mm_per_prompt == {"image": 8}


def test_overlay_deep_merges_in_order(tmp_path: Path):
    overlay = write(tmp_path, "overlay.yaml", """
router: {port: 9100}
workers:
  chat:
    engine_args: {max_num_seqs: 8}
""")
    cfg = load_config([ROOT / "configs" / "cpu.yaml", overlay])
    assert cfg.router.port == 9100
    assert cfg.router.host == "127.0.0.1"  # untouched keys survive
    args = cfg.workers["chat"].args
    assert args.max_num_seqs == 8 and args.enforce_eager  # merged, not replaced
    assert args.tool_call_parser == "hermes"  # catalog defaults under both


def test_deep_merge_replaces_lists_and_scalars():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}, "d": {"e": 1}}) == {
        "a": {"b": 1, "c": [3]}, "d": {"e": 1}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("router: {port: 99999}", "router.port: Input should be less than or equal to 65535"),
        ("router: {prot: 1}", "router.prot: unknown key"),
        ("workers: {chat: {model: nope}}", "workers.chat.model: unknown model 'nope'"),
        ("workers: {chat: {engine_args: {max_num_seqs: 0}}}",
         "workers.chat.engine_args.max_num_seqs: Input should be greater than or equal to 1"),
        ("workers: {chat: {engine_args: {tool_strict_level: loose}}}",
         "workers.chat.engine_args.tool_strict_level: Input should be"),
        ("device: tpu", "device: Input should be 'cpu' or 'cuda'"),
        ("workers: [1]", "workers: Input should be a valid dictionary"),
        ("router: [", "not valid YAML"),
        ("router: {processes: 2}", "router.processes: 2 processes need shared stores, but "
         "router.rate_limit_store is `memory`"),
        ("router: {processes: 2, rate_limit_store: 'redis://r:6379', "
         "database: 'sqlite:///:memory:'}", "router.database is an in-memory SQLite"),
        ("router: {database: 'mysql://x/y'}", "router.database: String should match"),
        ("router: {artifacts: 's3://A_bucket'}", "router.artifacts: String should match"),
        ("workers: {chat: {replicas: 2, endpoints: ['http://a:1']}}",
         "workers.chat: Value error, set `replicas`"),
        ("workers: {chat: {endpoints: ['a:1']}}", "is not an http(s):// URL"),
        ("workers: {chat: {replicas: 2, gpus: [0, 1, 2]}}",
         "3 gpus cannot be split evenly among 2 replicas"),
        ("workers: {chat: {routing: {policy: random}}}", "workers.chat.routing.policy"),
    ],
)
def test_bad_overlay_names_file_key_and_problem(tmp_path: Path, text: str, expected: str):
    bad = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config([ROOT / "configs" / "cpu.yaml", bad])
    assert str(bad) in str(e.value)
    assert expected in str(e.value)


SHA = "ab" * 32


def test_shared_stores_allow_several_router_processes(tmp_path: Path):
    shared = write(tmp_path, "shared.yaml", """
router:
  processes: 4
  rate_limit_store: redis://redis:6379/0
  database: postgresql://serving@db:5432/serving
  artifacts: s3://videos/serving
  artifacts_endpoint: http://s3:8333
workers: {chat: {replicas: 2, gpus: [0, 1]}}
""")
    config = load_config([ROOT / "configs" / "cpu.yaml", shared])
    assert config.router.processes == 4
    chat = config.workers["chat"]
    assert [chat.replica_gpus(i) for i in range(2)] == [[0], [1]]
    assert chat.routing.policy == "cache_aware"


def test_two_keys_with_one_name_are_a_config_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SERVING_API_KEYS", raising=False)
    monkeypatch.delenv("SERVING_ADMIN_KEYS", raising=False)
    keys = write(tmp_path, "keys.yaml", f"router: {{api_keys: [{{name: ops, sha256: {SHA}}}, "
                 f"{{name: ops, env: OPS_KEY}}]}}")
    with pytest.raises(ConfigError) as e:
        load_config([ROOT / "configs" / "cpu.yaml", keys])
    assert str(e.value).startswith(f"{keys}: router.api_keys: the key name 'ops' is used "
                                   "twice (router.api_keys[0] and router.api_keys[1])")


def test_a_config_key_named_like_an_environment_key_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("SERVING_API_KEYS", raising=False)
    monkeypatch.delenv("SERVING_ADMIN_KEYS", raising=False)
    keys = write(tmp_path, "keys.yaml", f"router: {{api_keys: [{{name: admin-2, sha256: {SHA}}}]}}")
    cpu = ROOT / "configs" / "cpu.yaml"
    assert load_config([cpu, keys]).router.api_keys[0].name == "admin-2"
    monkeypatch.setenv("SERVING_ADMIN_KEYS", "sk-one, sk-two")
    with pytest.raises(ConfigError) as e:
        load_config([cpu, keys])
    assert str(e.value).startswith(f"{keys}: router.api_keys: the key name 'admin-2' is used "
                                   "twice (router.api_keys[0] and SERVING_ADMIN_KEYS (its key 2))")


def test_bad_catalog_entry_names_its_file(tmp_path: Path):
    (tmp_path / "models").mkdir()
    write(tmp_path / "models", "broken.yaml",
          "id: x\nmodality: chat\nengine: vllm\nsource: {hub: a/b}\ncapabilities: [telepathy]\n")
    cfg = write(tmp_path, "c.yaml", "catalog_dir: models\nworkers: {chat: {model: x}}\n")
    with pytest.raises(ConfigError) as e:
        load_config([cfg])
    assert "broken.yaml: capabilities" in str(e.value)


def test_sampling_defaults_are_checked_and_only_for_chat_models(tmp_path: Path):
    """A default out of range, a misspelt one, or one on a media model fails at start with its
    file and key."""
    (tmp_path / "models").mkdir()
    cfg = write(tmp_path, "c.yaml", "catalog_dir: models\nworkers: {chat: {model: m}}\n")
    chat = "id: m\nmodality: chat\nengine: vllm\nsource: {hub: a/b}\n"
    speech = ("id: m\nmodality: speech\nengine: hibari\nsource: {package: p}\n"
              "speech: {voices: [a], default_voice: a}\n")
    for entry, error in ((chat + "sampling_defaults: {temperature: 3}\n",
                          "m.yaml: sampling_defaults.temperature"),
                         (chat + "sampling_defaults: {temprature: 0.2}\n",
                          "m.yaml: sampling_defaults.temprature"),
                         (speech + "sampling_defaults: {temperature: 0.2}\n",
                          "sampling_defaults are for chat (vllm) models only")):
        write(tmp_path / "models", "m.yaml", entry)
        with pytest.raises(ConfigError) as e:
            load_config([cfg])
        assert error in str(e.value)


def test_tool_use_needs_a_parser(tmp_path: Path):
    (tmp_path / "models").mkdir()
    write(tmp_path / "models", "m.yaml",
          "id: m\nmodality: chat\nengine: vllm\nsource: {hub: a/b}\ncapabilities: [tool_use]\n")
    cfg = write(tmp_path, "c.yaml", "catalog_dir: models\nworkers: {chat: {model: m}}\n")
    with pytest.raises(ConfigError, match="tool_call_parser"):
        load_config([cfg])


def test_serving_up_with_bad_config_fails_at_start(tmp_path: Path):
    bad = write(tmp_path, "bad.yaml", "router: {port: -1}")
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "up", "-c", str(ROOT / "configs" / "cpu.yaml"),
         "-c", str(bad)], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}: router.port: Input should be greater than or equal to 0" in result.stderr


def test_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SERVING_CACHE_DIR", str(tmp_path))
    assert load_config([ROOT / "configs" / "cpu.yaml"]).cache_dir == tmp_path


def test_media_workers_get_their_spec():
    import json

    cfg = load_config([ROOT / "configs" / "gpu-h100.yaml"])
    specs = {s.name: s for s in worker_specs(cfg, {n: Path(f"/m/{n}") for n in cfg.workers})}
    videos = specs["videos"]
    assert videos.argv[2:4] == ["serving.workers", "videos"]
    spec = json.loads(videos.argv[videos.argv.index("--spec") + 1])
    assert spec["entry"]["id"] == "wan2.1-t2v-1.3b" and spec["device"] == "cuda"
    assert spec["args"]["offload"] == "model" and spec["args"]["vae_dtype"] == "float32"
    assert specs["images"].env["CUDA_VISIBLE_DEVICES"] == "0"


def test_media_options_are_checked(tmp_path: Path):
    (tmp_path / "models").mkdir()
    write(tmp_path / "models", "m.yaml", """
id: m
modality: image
engine: diffusers
source: {tiny: flux}
engine_defaults: {pipeline: FluxPipeline}
image:
  sizes: ["128x128"]
  default_size: "256x256"
  num_inference_steps: {default: 4, min: 1, max: 8}
  guidance_scale: {default: 0, min: 0, max: 0}
""")
    cfg = write(tmp_path, "c.yaml", "catalog_dir: models\nworkers: {images: {model: m}}\n")
    with pytest.raises(ConfigError, match="default_size '256x256' is not one of sizes"):
        load_config([cfg])


def test_disabled_workers_are_dropped(tmp_path: Path):
    overlay = write(tmp_path, "o.yaml", "workers: {chat: {enabled: false}}\n")
    cfg = load_config([ROOT / "configs" / "cpu.yaml", overlay])
    assert "chat" not in cfg.workers and "images" in cfg.workers


def test_the_editors_in_the_catalog_and_the_cpu_default():
    """FLUX.1 Kontext is an `edits` model on a GPU (gated, its non-commercial licence stated,
    the single-file checkpoints skipped as FLUX's are); the CPU default serves the tiny one
    beside, not instead of, its generator, which stays the default image model."""
    catalog = load_catalog(ROOT / "models")
    kontext = catalog["flux.1-kontext-dev"]
    assert "edits" in kontext.capabilities
    assert kontext.source.gated
    assert "flux1-kontext-dev.safetensors" in kontext.source.ignore_patterns
    assert "Non-Commercial" in (ROOT / "models" / "flux.1-kontext-dev.yaml").read_text()
    assert kontext.gpu_memory.total_weights == catalog["flux.1-dev"].gpu_memory.total_weights
    cfg = load_config([ROOT / "configs" / "cpu.yaml"])
    images = [w.entry for w in cfg.workers.values()
              if w.entry is not None and w.entry.modality.value == "image"]
    assert [e.id for e in images] == ["flux-tiny", "flux-kontext-tiny"]
    assert "edits" in images[1].capabilities and "edits" not in images[0].capabilities
    assert images[1].source.tiny == "flux-kontext"

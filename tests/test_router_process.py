"""Where a router without workers of its own finds them, and how extra router processes are
started, without starting anything."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from serving.config import ConfigError, load_config
from serving.launcher.router_process import RouterRun, bind, extra_router_specs
from serving.launcher.runtime_file import read_runtime_workers, worker_urls
from serving.upstream.worker import Endpoints

ROOT = Path(__file__).resolve().parent.parent
CPU = ROOT / "configs" / "cpu.yaml"


def _runtime(tmp: Path, workers: dict[str, str]) -> Path:
    path = tmp / "runtime.json"
    path.write_text(json.dumps({"router": "http://127.0.0.1:1", "pid": 1, "workers": {
        name: {"url": url, "pid": 2} for name, url in workers.items()}}))
    return path


def test_endpoints_win_over_the_runtime_file(tmp_path: Path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("workers: {images: {endpoints: ['http://10.0.0.7:8001/']}}\n")
    config = load_config([CPU, overlay])
    runtime = _runtime(tmp_path, {name: f"http://127.0.0.1:{9000 + i}"
                                  for i, name in enumerate(config.workers)})
    urls = worker_urls(config, runtime)
    assert urls["images"] == Endpoints(("http://10.0.0.7:8001",))
    assert urls["chat"] == Endpoints(("http://127.0.0.1:9000",))


def test_pools_from_the_runtime_file_and_from_endpoints(tmp_path: Path):
    """A chat pool's replicas come with their pool router; a media pool's are spread by the
    router itself. Several chat endpoints need a pool router `serving router` does not run."""
    path = tmp_path / "runtime.json"
    chat = [f"http://127.0.0.1:{9100 + i}" for i in range(2)]
    images = [f"http://127.0.0.1:{9200 + i}" for i in range(2)]
    path.write_text(json.dumps({"router": "http://127.0.0.1:1", "pid": 1, "workers": {
        "chat": {"url": "http://127.0.0.1:9000", "pid": 2,
                 "metrics_url": "http://127.0.0.1:9001/metrics", "replicas": [
            {"name": f"chat/{i}", "url": u, "pid": 3} for i, u in enumerate(chat)]},
        "images": {"url": images[0], "pid": 4, "replicas": [
            {"name": f"images/{i}", "url": u, "pid": 5} for i, u in enumerate(images)]},
    }}))
    found = read_runtime_workers(path)
    assert found["chat"] == Endpoints(tuple(chat), gateway="http://127.0.0.1:9000",
                                      gateway_metrics="http://127.0.0.1:9001/metrics")
    assert found["images"] == Endpoints(tuple(images))

    overlay = tmp_path / "o.yaml"
    overlay.write_text("workers: {chat: {endpoints: ['http://a:1', 'http://b:1']}}\n")
    with pytest.raises(ConfigError, match="does not start"):
        worker_urls(load_config([CPU, overlay]), path)


def test_a_worker_with_no_url_is_named(tmp_path: Path):
    config = load_config([CPU])
    runtime = _runtime(tmp_path, {"chat": "http://127.0.0.1:9000"})
    with pytest.raises(ConfigError, match=r"workers\.images: `serving router` starts no worker"):
        worker_urls(config, runtime)
    with pytest.raises(ConfigError, match="no such file"):
        worker_urls(config, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not a runtime file"):
        worker_urls(config, tmp_path / "bad.json")


def test_extra_router_processes_load_the_same_files_on_the_same_port(tmp_path: Path):
    files = (CPU, tmp_path / "o.yaml")
    run = RouterRun(load_config([CPU]), [], "0.0.0.0", 0, files, processes=3,
                    runtime_file=tmp_path / "rt.json")
    specs = extra_router_specs(run, 8000, tmp_path / "metrics")
    assert [s.name for s in specs] == ["router/1", "router/2"]
    argv = specs[0].command(8000)
    assert argv[argv.index("router") + 1:].count("-c") == 2
    assert argv[-2:] == ["--port", "8000"]
    assert "--reuse-port" in argv and "--single-process" in argv
    assert argv[argv.index("--workers-from") + 1] == str(tmp_path / "rt.json")
    # They keep their metrics with process 0's, which a scrape of any of them reads.
    assert specs[0].env == {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}


def test_reuse_port_lets_processes_share_a_port():
    first = bind("127.0.0.1", 0, reuse_port=True)
    first.listen()
    port = first.getsockname()[1]
    second = bind("127.0.0.1", port, reuse_port=True)
    second.listen()
    try:
        with pytest.raises(OSError):
            bind("127.0.0.1", port, reuse_port=False).close()
    finally:
        first.close()
        second.close()
    assert isinstance(second, socket.socket)

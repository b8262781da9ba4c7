"""Pools of replicas without a model: the router's choice of replica and its retry rule, over
real HTTP servers on loopback; and the launcher's processes for a config with replicas (names,
ports, GPU shares, cores, the pool router's command), built without starting anything."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serving.config import load_config
from serving.config.deployment import Timeouts
from serving.config.hardware import vllm_cpu_binding
from serving.errors import OpenAIError
from serving.launcher.order import process_order
from serving.launcher.pools import PoolRouterSpec
from serving.launcher.runtime_file import StackInfo, write_runtime
from serving.launcher.supervisor import Supervisor, WorkerSpec, free_port
from serving.launcher.worker_set import worker_endpoints, worker_specs
from serving.upstream.worker import Endpoints, Worker
from tests.support.loopback import LoopbackServer, QuietHandler
from tests.support.wait import await_until

ROOT = Path(__file__).resolve().parent.parent


class Server(LoopbackServer):
    """A real HTTP server on loopback that answers every POST with its own name, counts the
    POSTs, and passes its health check while `healthy` is set."""

    def __init__(self, name: str):
        self.name, self.posts, self.healthy = name, 0, True
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.send_response(200 if outer.healthy else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts += 1
                body = json.dumps({"replica": outer.name}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


class Hangup:
    """Accepts a connection, reads the request, and closes it without answering: a replica
    that died with the request in hand."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            self.requests += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[Callable[[str], Server]]:
    made: list[Server] = []

    def make(name: str) -> Server:
        made.append(Server(name))
        return made[-1]

    yield make
    for server in made:
        server.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def pool(*urls: str, interval: float = 0.05) -> Worker:
    return Worker("images", Endpoints(urls), Timeouts(connect_s=2), max_connections=8,
                  health_interval_s=interval)


def test_the_replica_with_fewest_requests_in_flight_gets_the_next():
    worker = pool(dead_url(), dead_url(), dead_url())
    a, b, c = worker.replicas
    assert [r.name for r in worker.replicas] == ["images/0", "images/1", "images/2"]
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert worker.pick() is b
    # Ties go round, so idle replicas share sequential requests.
    a.in_flight = b.in_flight = c.in_flight = 0
    assert {worker.pick().name for _ in range(3)} == {"images/0", "images/1", "images/2"}
    # A replica that is down gets nothing while another is up...
    b.up = False
    assert all(worker.pick() is not b for _ in range(6))
    # ...and when every one is down, the checks may be stale: all are tried again.
    a.up = c.up = False
    assert {worker.pick().name for _ in range(3)} == {"images/0", "images/1", "images/2"}
    # Replicas a request already tried are not picked again.
    assert worker.pick(frozenset({a, b})) is c
    assert worker.pick(frozenset({a, b, c})) is None


def test_a_refused_connection_is_retried_on_another_replica(servers):
    live = servers("live")

    async def run() -> None:
        worker = pool(dead_url(), live.url)
        try:
            for _ in range(4):
                r = await worker.send("/v1/images/generations", {"prompt": "x"})
                assert r.json() == {"replica": "live"}
            assert live.posts == 4
            assert not worker.replicas[0].up  # out of the pool until its health check passes
            assert [r.in_flight for r in worker.replicas] == [0, 0]
        finally:
            await worker.aclose()

    asyncio.run(run())


def test_no_replica_accepting_connections_is_a_503():
    async def run() -> None:
        worker = pool(dead_url(), dead_url())
        try:
            with pytest.raises(OpenAIError) as e:
                await worker.send("/v1/images/generations", {"prompt": "x"})
            assert e.value.status == 503 and e.value.code == "worker_unavailable"
        finally:
            await worker.aclose()

    asyncio.run(run())


def test_a_request_that_reached_its_replica_is_never_sent_again(servers):
    """The replica took the request and died: it may have done the work, so the client gets
    the 503 rather than a second run of it elsewhere."""
    hangup, live = Hangup(), servers("live")

    async def run() -> None:
        worker = pool(hangup.url, live.url)
        worker.replicas[1].in_flight = 5  # so the hang-up replica is picked first
        try:
            with pytest.raises(OpenAIError) as e:
                await worker.send("/v1/images/generations", {"prompt": "x"})
            assert e.value.status == 503
            assert hangup.requests == 1 and live.posts == 0
            assert worker.replicas[0].in_flight == 0
        finally:
            await worker.aclose()
            hangup.close()

    asyncio.run(run())


def test_a_streamed_answer_holds_its_replica_until_it_is_closed(servers):
    live = servers("live")

    async def run() -> None:
        worker = pool(live.url, dead_url())
        worker.replicas[1].up = False
        try:
            response = await worker.send("/v1/audio/speech", {"input": "x"}, stream=True)
            assert worker.replicas[0].in_flight == 1
            await response.aread()
            await response.aclose()
            assert worker.replicas[0].in_flight == 0
            async with worker.stream("POST", "/v1/videos/render", json={}) as r:
                assert r.status_code == 200 and worker.replicas[0].in_flight == 1
            assert worker.replicas[0].in_flight == 0
        finally:
            await worker.aclose()

    asyncio.run(run())


def test_the_health_loop_takes_a_failing_replica_out_and_back(servers):
    a, b = servers("a"), servers("b")

    async def run() -> None:
        worker = pool(a.url, b.url)
        worker.start()
        try:
            b.healthy = False
            await await_until(lambda: not worker.replicas[1].up, "replica 1 to leave the pool")
            for _ in range(4):
                assert (await worker.send("/x", {})).json() == {"replica": "a"}
            assert b.posts == 0
            assert await worker.probe() == {"images/0": True, "images/1": False}
            assert worker.serves(await worker.probe())  # a pool serves while one replica is up
            b.healthy = True
            await await_until(lambda: worker.replicas[1].up, "replica 1 to come back")
            a.healthy = False
            assert await worker.probe() == {"images/0": False, "images/1": True}
            a.healthy = b.healthy = False
            assert not worker.serves(await worker.probe())
        finally:
            await worker.aclose()

    asyncio.run(run())


def test_a_chat_pool_is_reached_through_its_pool_router(servers):
    gateway, r0, r1 = servers("router"), servers("0"), servers("1")

    async def run() -> None:
        worker = Worker("chat", Endpoints((r0.url, r1.url), gateway.url), Timeouts(), 8)
        try:
            assert (await worker.send("/v1/chat/completions", {})).json() == {
                "replica": "router"}
            assert r0.posts == r1.posts == 0
            assert worker.member("chat/router").base_url == gateway.url
            assert worker.member("chat/1").base_url == r1.url
            r0.healthy = False
            assert await worker.probe() == {"chat/0": False, "chat/1": True,
                                            "chat/router": True}
            assert worker.serves(await worker.probe())
        finally:
            await worker.aclose()

    asyncio.run(run())


# --- the launcher's side: config -> processes, nothing started ---------------------------


def config_with(tmp_path: Path, overlay: str, base: str = "configs/cpu.yaml"):
    (tmp_path / "overlay.yaml").write_text(overlay)
    return load_config([ROOT / base, tmp_path / "overlay.yaml"])


def specs_of(config) -> dict:
    urls = {}

    def url_of(name: str) -> str:
        return urls.setdefault(name, f"http://127.0.0.1:{7000 + len(urls)}")

    specs = worker_specs(config, {n: Path(f"/m/{n}") for n in config.workers}, url_of)
    return {s.name: s for s in specs}


def test_replicas_are_processes_of_their_own(tmp_path: Path):
    config = config_with(tmp_path, """
workers:
  chat: {replicas: 2, routing: {policy: round_robin, health_check_interval_s: 0.5}}
  images: {replicas: 3}
  videos: {enabled: false}
""")
    specs = specs_of(config)
    assert list(specs) == ["chat/0", "chat/1", "chat/router", "images/0", "images/1",
                           "images/2", "edits", "speech", "transcription"]
    chat0, chat1, router = specs["chat/0"], specs["chat/1"], specs["chat/router"]
    assert chat0.worker == chat1.worker == router.worker == "chat"
    # No fixed port: each gets a fresh one at its first start, and keeps it (the pool router
    # holds its URL). Media replicas move freely: the router itself follows them.
    assert chat0.port is None and chat0.keep_port and router.keep_port
    assert not specs["images/0"].keep_port and specs["images/0"].worker == "images"
    assert chat0.argv == chat1.argv
    assert "--enable-scale-out" in chat0.argv  # the render endpoints cache_aware routes by
    assert "--enable-scale-out" not in specs_of(config_with(tmp_path, "device: cpu"))["chat"].argv
    assert isinstance(router, PoolRouterSpec)
    command = router.command(8100)
    assert Path(command[0]).name == "smg" and command[1] == "launch"  # the default engine
    joined = " ".join(command)
    for flag in ("--host 127.0.0.1", "--port 8100", "--policy round_robin",
                 "--cache-threshold 0.5", "--balance-abs-threshold 2",
                 "--balance-rel-threshold 1.5", "--health-check-interval-secs 1"):
        assert flag in joined
    assert command[command.index("--prometheus-port") + 1] != "29000"
    assert command[command.index("--worker-urls") + 1:] == [
        "http://127.0.0.1:7000", "http://127.0.0.1:7001"]
    assert router.health_path == "/liveness"
    # Each media replica is told its own name (its logs say which).
    assert '"name":"images/2"' in specs["images/2"].argv[-1]
    # The pool router starts after its replicas; on CPU nothing else waits.
    order = process_order(config, specs.values())
    assert order["chat/router"] == {"chat/0", "chat/1"}
    assert order["images/0"] == set() and order["chat/0"] == set()


def test_vllm_cpu_replicas_get_cores_of_their_own():
    assert vllm_cpu_binding(0, 1, [0, 1]) == {}  # one replica: vLLM's own choice
    assert vllm_cpu_binding(0, 2, [0, 1]) == {"VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert vllm_cpu_binding(1, 2, [0, 1]) == {"VLLM_CPU_OMP_THREADS_BIND": "1"}
    assert vllm_cpu_binding(1, 2, [4, 5, 6, 7]) == {"VLLM_CPU_OMP_THREADS_BIND": "6,7"}
    # More replicas than cores: they take the cores in turn.
    assert [vllm_cpu_binding(i, 3, [0, 1])["VLLM_CPU_OMP_THREADS_BIND"] for i in range(3)] == [
        "0", "1", "0"]


def test_cpu_replica_binding_reaches_the_spec_and_the_config_env_wins(tmp_path: Path):
    specs = specs_of(config_with(tmp_path, "workers: {chat: {replicas: 2}}"))
    binds = [specs[n].env["VLLM_CPU_OMP_THREADS_BIND"] for n in ("chat/0", "chat/1")]
    assert binds == [vllm_cpu_binding(i, 2)["VLLM_CPU_OMP_THREADS_BIND"] for i in (0, 1)]
    if len(os.sched_getaffinity(0)) >= 2:
        assert binds[0] != binds[1]
    specs = specs_of(config_with(
        tmp_path, "workers: {chat: {replicas: 2, env: {VLLM_CPU_OMP_THREADS_BIND: '0-1'}}}"))
    assert specs["chat/1"].env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


def test_gpu_replicas_split_the_gpus(tmp_path: Path):
    config = config_with(tmp_path, """
gpu: {count: 4}
workers:
  chat: {gpus: [0, 1, 2, 3], replicas: 2,
         engine_args: {tensor_parallel_size: 2}, routing: {engine: smg, port: 8300}}
  images: {gpus: [2, 3], replicas: 2}
""", base="configs/gpu-h100.yaml")
    specs = specs_of(config)
    assert specs["chat/0"].env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert specs["chat/1"].env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert specs["images/0"].env["CUDA_VISIBLE_DEVICES"] == "2"
    assert specs["images/1"].env["CUDA_VISIBLE_DEVICES"] == "3"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in specs["chat/0"].env
    router = specs["chat/router"]
    assert router.port == 8300
    command = router.command(8300)
    assert Path(command[0]).name == "smg" and command[1] == "launch"
    # On a GPU, media workers start once every vLLM replica sharing their GPU is healthy.
    order = process_order(config, specs.values())
    assert order["images/0"] == {"chat/0", "chat/1"}
    assert order["chat/router"] == {"chat/0", "chat/1"}


def test_endpoints_start_no_replica_but_a_chat_pool_still_gets_its_router(tmp_path: Path):
    config = config_with(tmp_path, """
workers:
  chat: {endpoints: ["http://10.0.0.5:8001", "http://10.0.0.6:8001"]}
  images: {endpoints: ["http://10.0.0.7:9000"]}
  videos: {enabled: false}
""")
    specs = specs_of(config)
    assert "chat/0" not in specs and "images" not in specs
    command = specs["chat/router"].command(8100)
    assert command[command.index("--worker-urls") + 1:] == [
        "http://10.0.0.5:8001", "http://10.0.0.6:8001"]
    # Its metrics on loopback, on a port kept across restarts: the router merges them.
    assert command[command.index("--prometheus-host") + 1] == "127.0.0.1"
    assert command.count(str(specs["chat/router"].metrics_port)) == 1
    assert specs["chat/router"].command(8100) == command
    endpoints = worker_endpoints(config, lambda name: f"http://local/{name}")
    assert endpoints["chat"] == Endpoints(("http://10.0.0.5:8001", "http://10.0.0.6:8001"),
                                          "http://local/chat/router")
    assert endpoints["images"] == Endpoints(("http://10.0.0.7:9000",))
    assert endpoints["speech"] == Endpoints(("http://local/speech",))


def test_the_runtime_file_lists_every_replica(tmp_path: Path):
    config = config_with(tmp_path, "workers: {chat: {replicas: 2}, images: {replicas: 2}}")
    specs = worker_specs(config, {n: Path(f"/m/{n}") for n in config.workers})
    supervisors = [Supervisor(spec) for spec in specs]
    for port, s in enumerate(supervisors, start=7000):
        s.port = port
    write_runtime(tmp_path / "runtime.json", StackInfo("http://router"), supervisors)
    workers = json.loads((tmp_path / "runtime.json").read_text())["workers"]
    # `url` is what the router calls: the chat pool's router, a media pool's first replica.
    assert workers["chat"]["url"] == "http://127.0.0.1:7002"
    # The pool router's metrics, on the port its command gives it, for the router to merge.
    router = next(s.spec for s in supervisors if s.name == "chat/router")
    assert workers["chat"]["metrics_url"] == f"http://127.0.0.1:{router.metrics_port}/metrics"
    assert [r["name"] for r in workers["chat"]["replicas"]] == ["chat/0", "chat/1"]
    assert [r["url"] for r in workers["chat"]["replicas"]] == [
        "http://127.0.0.1:7000", "http://127.0.0.1:7001"]
    assert workers["images"]["url"] == "http://127.0.0.1:7003"
    assert len(workers["images"]["replicas"]) == 2
    assert "replicas" not in workers["speech"]


def test_a_replica_restarts_on_its_kept_port(tmp_path: Path):
    """A chat replica comes back where its pool router expects it."""
    serve = ("import sys, http.server; http.server.test(http.server.SimpleHTTPRequestHandler, "
             "port=int(sys.argv[2]), bind='127.0.0.1')")  # argv: -c --port N
    spec = WorkerSpec(name="chat/0", argv=[sys.executable, "-c", serve], env={},
                      health_path="/", keep_port=True, startup_timeout_s=60)
    sup = Supervisor(spec, backoff_initial_s=0.05)

    async def run() -> None:
        await sup.start()
        try:
            port, pid = sup.port, sup.process.pid
            os.killpg(pid, signal.SIGKILL)
            await await_until(lambda: sup.restarts == 1 and sup.state == "up", "the restart")
            assert sup.port == port and sup.process.pid != pid
        finally:
            await sup.stop()

    asyncio.run(run())


def test_the_memory_plan_counts_every_local_replica(tmp_path: Path):
    from serving.config.plan import memory_plan

    def rows(overlay: str) -> dict[int, list[str]]:
        config = config_with(tmp_path, overlay, base="configs/gpu-2xh100.yaml")
        return {p.index: [r.worker for r in p.rows] for p in memory_plan(config, devices=[])}

    one = rows("workers: {}")
    assert one[0].count("images") == 0 and one[1].count("images") == 1
    both = rows("workers: {images: {replicas: 2, gpus: [1, 1]}}")  # two on GPU 1
    assert both[1].count("images") == 2
    remote = rows("workers: {images: {endpoints: ['http://10.0.0.7:9000']}}")
    assert all("images" not in names for names in remote.values())

"""How much the router itself can carry, in front of a synthetic vLLM that is never the bottleneck.

A synthetic upstream (raw asyncio on uvloop, httptools, pre-encoded answers) speaks what the
router expects of the chat worker: vLLM-shaped `chat.completion` answers and compact
`chat.completion.chunk` streams with running usage on every chunk and a closing usage event,
`/health` and `/metrics`. A load client in its own process (raw asyncio, httptools) keeps
`--concurrency` connections busy. Each measurement runs the same load against the upstream
directly and through the router, interleaved in alternating order, round after round, so the
ratios hold on a machine whose other load drifts:

- `stream`: streamed chats of `--chunks` content chunks each; chunks/s relayed.
- `short`: short non-streamed chats; requests/s.
- added p50/p99: the router's request latency minus the upstream's, at the same concurrency.

Variants (`--variant`, repeatable) change the router's deployment: `sqlite` (the default ledger
and in-memory rate limits), `postgres` (`router.database` on a throwaway PostgreSQL), `redis`
(`router.rate_limit_store` on a throwaway Redis); every variant runs with `--processes` router
processes (comma-separated: `1,2`) and with per-key limits high enough never to refuse, so
admission and settlement do their full work.

    PYTHONPATH=$PWD python scripts/bench_router.py                  # sqlite, 1 and 2 processes
    python scripts/bench_router.py --variant sqlite --variant postgres --variant redis \\
        --processes 1 --concurrency 32 --duration 5 --rounds 3
    python scripts/bench_router.py --profile 20     # py-spy the router under stream+short load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_chat import bar_chart, pct  # scripts/ is on the path when a script runs

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
WORKLOADS = ("stream", "short")


# --- The synthetic upstream ----------------------------------------------------------------------

def _answers(chunks: int) -> tuple[bytes, list[bytes]]:
    """A non-streamed answer (HTTP response) and a stream (its HTTP head, then one HTTP chunk
    per SSE event), shaped as vLLM 0.32 writes them with the router's launch flags."""
    def usage(completion: int) -> dict:
        return {"prompt_tokens": 12, "total_tokens": 12 + completion,
                "completion_tokens": completion,
                "prompt_tokens_details": {"cached_tokens": 0, "created_cache_tokens": 12}}

    def chunk(choices: list, completion: int) -> str:
        return _compact({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                         "created": 1700000000, "model": MODEL, "choices": choices,
                         "usage": usage(completion)})

    def choice(delta: dict, finish: str | None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    events = [chunk(choice({"role": "assistant", "content": ""}, None), 0)]
    events += [chunk(choice({"content": " word"}, "length" if i == chunks else None), i)
               for i in range(1, chunks + 1)]
    events += [chunk([], chunks), "[DONE]"]
    framed = []
    for event in events:
        data = f"data: {event}\n\n".encode()
        framed.append(b"%x\r\n%s\r\n" % (len(data), data))
    framed.append(b"0\r\n\r\n")
    stream_head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                   b"transfer-encoding: chunked\r\n\r\n")
    body = _compact({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Four.", "refusal": None, "annotations": None,
            "audio": None, "function_call": None, "tool_calls": [], "reasoning": None},
            "logprobs": None, "finish_reason": "stop", "stop_reason": None,
            "token_ids": None}],
        "service_tier": None, "system_fingerprint": None,
        "usage": {"prompt_tokens": 12, "total_tokens": 15, "completion_tokens": 3,
                  "prompt_tokens_details": {"cached_tokens": 0, "created_cache_tokens": 12}},
        "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None,
    }).encode()
    return _response(body, b"application/json"), [stream_head, *framed]


def _compact(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _response(body: bytes, content_type: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status, content_type, len(body), body))


METRICS = b"# HELP vllm:num_requests_running Requests running.\n" \
          b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0.0\n"


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the synthetic vLLM; requests are answered in order."""

    def __init__(self, short: bytes, stream: list[bytes]):
        import httptools

        self.short, self.stream = short, stream
        self.parser = httptools.HttpRequestParser(self)
        self.url, self.body = b"", b""
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.transport.close()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def on_message_begin(self) -> None:
        self.url, self.body = b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.url == b"/v1/chat/completions":
            if b'"stream":true' in self.body.replace(b" ", b""):
                self.transport.pause_reading()  # one stream at a time on a connection
                asyncio.get_running_loop().create_task(self._stream())
            else:
                self.transport.write(self.short)
        elif self.url == b"/health":
            self.transport.write(_response(b"", b"text/plain"))
        elif self.url == b"/metrics":
            self.transport.write(_response(METRICS, b"text/plain; version=0.0.4"))
        else:
            self.transport.write(_response(b'{"error":"not found"}', b"application/json",
                                           b"404 Not Found"))

    async def _stream(self) -> None:
        """One event per write, yielding to the loop between them, as vLLM's steps interleave
        the streams it serves: the peers see separate events, not one burst."""
        for piece in self.stream:
            if self.transport.is_closing():
                return
            self.transport.write(piece)
            await asyncio.sleep(0)
            if not self.can_write.is_set():
                await self.can_write.wait()
        self.transport.resume_reading()


def serve_upstream(port: int, chunks: int) -> None:
    import uvloop

    short, stream = _answers(chunks)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _UpstreamConnection(short, stream),
                                          "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    uvloop.run(main())


# --- The load client -----------------------------------------------------------------------------

class _ClientConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection that sends one request at a time."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done.set_result((self.parser.get_status_code(), b"".join(self.body)))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.body = []
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.done


def _request(url: str, key: str, workload: str) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "max_tokens": 16}
    if workload == "stream":
        body.update(stream=True, stream_options={"include_usage": True})
    data = json.dumps(body).encode()
    host = url.removeprefix("http://")
    auth = f"authorization: Bearer {key}\r\n".encode() if key else b""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\n%scontent-type: "
            b"application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (host.encode(), auth, len(data), data))


async def _load(url: str, key: str, workload: str, concurrency: int,
                duration: float) -> dict:
    raw = _request(url, key, workload)
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "chunks": 0}
    deadline = time.perf_counter() + duration

    async def user() -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_ClientConnection, host, int(port))
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except ConnectionError:
                counts["errors"] += 1
                _, conn = await loop.create_connection(_ClientConnection, host, int(port))
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200 or (workload == "stream" and b'"choices":[]' not in body):
                counts["errors"] += 1
                continue
            counts["requests"] += 1
            if workload == "stream":
                counts["chunks"] += body.count(b"data: ") - 1  # all but [DONE]
        conn.transport.close()

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return {**counts, "seconds": time.perf_counter() - start, "latencies": latencies}


def run_client(args: argparse.Namespace) -> None:
    import uvloop

    result = uvloop.run(_load(args.url, args.key, args.workload, args.concurrency,
                              args.duration))
    json.dump(result, sys.stdout)


def measure_once(url: str, key: str, workload: str, concurrency: int, duration: float) -> dict:
    """One load run, from a client process of its own (so its CPU is not the router's)."""
    out = subprocess.run(
        [sys.executable, __file__, "_client", "--url", url, "--key", key, "--workload",
         workload, "--concurrency", str(concurrency), "--duration", str(duration)],
        capture_output=True, check=True, text=True)
    return json.loads(out.stdout)


# --- The router ----------------------------------------------------------------------------------

@dataclass
class Router:
    processes: list[subprocess.Popen]
    url: str
    log: Path

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def cpu_seconds(self) -> float:
        """CPU time its processes have used (user + system): the router's cost, whatever
        else runs on the machine."""
        ticks = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for p in self.processes:
            p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def start_router(configs: list[Path], processes: int, workdir: Path, key: str,
                 code: Path = ROOT) -> Router:
    """`serving router` (the router alone, its chat worker at the config's
    `workers.chat.endpoints`), from the `serving` package in `code`, as `processes` processes
    sharing one port (`--reuse-port`; the kernel spreads the connections). Started one by one
    rather than with `router.processes`, which asks for shared stores (PostgreSQL, Redis)
    that the sqlite variant has not."""
    from serving.launcher.supervisor import free_port

    port = free_port()
    env = {**os.environ, "SERVING_API_KEYS": key, "SERVING_STATE_DIR": str(workdir / "state"),
           "PYTHONPATH": f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "router.log"
    cmd = [sys.executable, "-m", "serving.cli", "router", "--port", str(port), "--reuse-port"]
    for config in configs:
        cmd += ["-c", str(config)]
    with log.open("ab") as out:
        procs = [subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=code)
                 for _ in range(processes)]
    router = Router(procs, f"http://127.0.0.1:{port}", log)
    _wait_healthy(router.url, procs, log)
    # Every process up (the kernel gives each connection to one of them).
    time.sleep(1.0 if processes > 1 else 0)
    return router


def _wait_healthy(url: str, procs: list[subprocess.Popen], log: Path,
                  timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            raise RuntimeError(f"{url} did not start:\n"
                               + log.read_text(errors="replace")[-3000:])
        time.sleep(0.1)


# --- Variants ------------------------------------------------------------------------------------

@dataclass
class Variant:
    """One deployment of the router: an overlay, and the servers it needs (stopped after)."""

    name: str
    overlay: dict
    stops: list = field(default_factory=list)
    check: object = None  # returns a note when the variant did not do what it names


def make_variant(name: str, workdir: Path) -> Variant:
    sys.path.insert(0, str(ROOT))
    from tests.support.local_servers import start_postgres, start_redis

    if name == "sqlite":
        return Variant(name, {})
    if name == "redis":
        redis = start_redis(workdir / "redis")
        return Variant(name, {"router": {"rate_limit_store": redis.url}}, [redis.stop])
    if name == "postgres":
        pg = start_postgres(workdir / "pg")

        def rows() -> str | None:
            import sqlalchemy

            engine = sqlalchemy.create_engine(pg.url)
            try:
                with engine.connect() as conn:
                    n = conn.execute(sqlalchemy.text("SELECT count(*) FROM usage")).scalar()
            except sqlalchemy.exc.DBAPIError:
                n = 0
            finally:
                engine.dispose()
            return None if n else "router.database is not honoured yet: ledger on SQLite"

        return Variant(name, {"router": {"database": pg.url}}, [pg.stop], rows)
    raise SystemExit(f"unknown variant {name!r}: sqlite, postgres or redis")


# --- Measuring -----------------------------------------------------------------------------------

@dataclass
class Result:
    variant: str
    processes: int
    workload: str
    concurrency: int
    target: str
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    chunks: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # seconds of the router processes' CPU (routers only)

    def add(self, run: dict) -> None:
        self.cpu += run.get("cpu", 0.0)
        self.seconds += run["seconds"]
        self.requests += run["requests"]
        self.errors += run["errors"]
        self.chunks += run["chunks"]
        self.latencies += run["latencies"]

    @property
    def rate(self) -> float:
        """Chunks/s for streams, requests/s for short chats."""
        done = self.chunks if self.workload == "stream" else self.requests
        return done / self.seconds if self.seconds else 0.0

    @property
    def unit(self) -> str:
        return "chunks/s" if self.workload == "stream" else "req/s"

    @property
    def cpu_per_unit(self) -> str:
        """The router's CPU per chunk (streams) or per request (short chats)."""
        done = self.chunks if self.workload == "stream" else self.requests
        if not self.cpu or not done:
            return ""
        per = self.cpu / done
        return f"{per * 1e6:.0f}us" if self.workload == "stream" else f"{per * 1e3:.2f}ms"


def measure(direct_url: str, routers: dict[str, Router], key: str, variant: str,
            processes: int, args: argparse.Namespace) -> list[Result]:
    """Each workload and concurrency against the upstream and every router, in turn, round
    after round (the order reversed every other round)."""
    results = []
    targets = ["direct", *routers]
    for workload in args.workload:
        for concurrency in args.concurrency:
            row = {t: Result(variant, processes, workload, concurrency, t) for t in targets}
            for router in routers.values():
                measure_once(router.url, key, workload, concurrency, args.warmup)
            for round_ in range(args.rounds):
                for target in targets if round_ % 2 == 0 else targets[::-1]:
                    router = routers.get(target)
                    cpu = router.cpu_seconds() if router else 0.0
                    run = measure_once(router.url if router else direct_url,
                                       key if router else "", workload, concurrency,
                                       args.duration)
                    if router:
                        run["cpu"] = router.cpu_seconds() - cpu
                    row[target].add(run)
                    print(f"  {variant} p={processes} {workload} c={concurrency} {target} "
                          f"round {round_ + 1}: {run['requests'] / run['seconds']:.0f} req/s, "
                          f"{run['chunks'] / run['seconds']:.0f} chunks/s, "
                          f"{run['errors']} errors", file=sys.stderr)
            results += row.values()
    return results


def table(results: list[Result]) -> str:
    head = (f"{'variant':<9}{'procs':>6}{'load':>7}{'conc':>5}{'target':>9}{'rate':>10}"
            f"{'unit':>10}{'x direct':>9}{'p50':>9}{'p99':>9}{'+p50':>9}{'+p99':>9}"
            f"{'CPU/unit':>10}{'err':>5}")
    rows = [head, "-" * len(head)]
    for r in results:
        d = _direct_of(r, results)
        ratio = added50 = added99 = ""
        if r.target != "direct" and d is not None and d.rate:
            ratio = f"{r.rate / d.rate:.2f}"
            added50 = f"{(pct(r.latencies, 50) - pct(d.latencies, 50)) * 1e3:.1f}ms"
            added99 = f"{(pct(r.latencies, 99) - pct(d.latencies, 99)) * 1e3:.1f}ms"
        rows.append(
            f"{r.variant:<9}{r.processes:>6}{r.workload:>7}{r.concurrency:>5}{r.target:>9}"
            f"{r.rate:>10.0f}{r.unit:>10}{ratio:>9}{pct(r.latencies, 50) * 1e3:>7.1f}ms"
            f"{pct(r.latencies, 99) * 1e3:>7.1f}ms{added50:>9}{added99:>9}"
            f"{r.cpu_per_unit:>10}{r.errors:>5}")
    return "\n".join(rows)


def _direct_of(r: Result, results: list[Result]) -> Result | None:
    return next((d for d in results if d.target == "direct" and d.variant == r.variant
                 and d.processes == r.processes and d.workload == r.workload
                 and d.concurrency == r.concurrency), None)


def summary(results: list[Result]) -> str:
    """Per row: router/direct rate, and with --before, this router against that one (rate and
    CPU per unit; CPU time is what the router spends, however busy the machine is)."""
    lines = []
    for r in results:
        if r.target != "router":
            continue
        d = _direct_of(r, results)
        line = (f"{r.variant} p={r.processes} {r.workload} c={r.concurrency}: router/direct "
                f"{r.unit} {r.rate / d.rate:.3f}" if d and d.rate else "")
        b = next((x for x in results if x.target == "before" and x.variant == r.variant
                  and x.processes == r.processes and x.workload == r.workload
                  and x.concurrency == r.concurrency), None)
        if b is not None and b.rate and b.cpu and r.cpu:
            done = (r.chunks, b.chunks) if r.workload == "stream" else (r.requests, b.requests)
            line += (f"; router/before {r.unit} {r.rate / b.rate:.2f}x, CPU per unit "
                     f"{(r.cpu / done[0]) / (b.cpu / done[1]):.2f}x")
        lines.append(line)
    return "\n".join(lines)


def plot(results: list[Result]) -> str:
    """Each workload's rates, router and direct, as bars: one chart per unit."""
    charts = []
    for workload in dict.fromkeys(r.workload for r in results):
        rows = [r for r in results if r.workload == workload]
        charts.append(bar_chart([(f"{r.target} {r.variant} p={r.processes} c={r.concurrency}",
                                  r.rate) for r in rows], rows[0].unit))
    return "\n\n".join(charts)


def figure(results: list[Result], path: Path) -> None:
    """The PNG for `--plot`: per workload, the rate and the latency p50/p99 of each target
    (direct, router, before) side by side, a group per variant, processes and concurrency."""
    from plots import Bars, save

    panels = []
    for workload in dict.fromkeys(r.workload for r in results):
        rows = [r for r in results if r.workload == workload]
        rates: dict[str, dict[str, float]] = {}
        latency: dict[str, dict[str, float]] = {}
        for r in rows:
            group = f"{r.variant} p={r.processes} c={r.concurrency}"
            rates.setdefault(group, {})[r.target] = r.rate
            for q in (50, 99):
                latency.setdefault(group, {})[f"{r.target} p{q}"] = pct(r.latencies, q) * 1e3
        panels += [Bars(rows[0].unit, rates, title=f"{workload}: {rows[0].unit}"),
                   Bars("latency (ms)", latency, title=f"{workload}: latency p50 / p99",
                        log_y=True)]
    save(path, "The router against a synthetic upstream (direct)", panels, columns=2)


# --- Profiling -----------------------------------------------------------------------------------

def profile(router: Router, key: str, args: argparse.Namespace, out: Path) -> None:
    """py-spy samples the (first) router process while the load runs, then the hottest
    functions are printed, by their own time and with what they call."""
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(router.pids()[0]),
         "--duration", str(int(args.profile)), "--rate", "250", "--format", "raw",
         "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    for workload in args.workload:
        measure_once(router.url, key, workload, args.concurrency[-1],
                     args.profile / len(args.workload))
    spy.wait()
    print(top_of_raw(raw))
    print(f"py-spy samples (collapsed stacks) in {raw}")


def top_of_raw(raw: Path, n: int = 40) -> str:
    """Self and total time per function from py-spy's raw (collapsed stacks) output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        samples += k
        frames = stack.split(";")
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + k
        own[frames[-1]] = own.get(frames[-1], 0) + k
    lines = [f"{'own%':>6}{'total%':>8}  function ({samples} samples)"]
    for frame, k in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{100 * k / samples:>6.1f}{100 * total[frame] / samples:>8.1f}  {frame}")
    lines.append("")
    lines.append(f"{'total%':>8}  function (inclusive, top {n})")
    for frame, k in sorted(total.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{100 * k / samples:>8.1f}  {frame}")
    return "\n".join(lines)


# --- Main ----------------------------------------------------------------------------------------

def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("_upstream", "_client"):
        return _child(sys.argv[1], sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path,
                   help="router config files (default: configs/cpu.yaml)")
    p.add_argument("--variant", action="append", choices=["sqlite", "postgres", "redis"],
                   help="router deployments to measure (repeatable; default: sqlite)")
    p.add_argument("--processes", default="1,2", help="router processes, comma-separated")
    p.add_argument("--workload", default="stream,short", help="stream, short or both")
    p.add_argument("--concurrency", default="32", help="clients, comma-separated, e.g. 1,32")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="alternating direct/router rounds")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each row")
    p.add_argument("--chunks", type=int, default=64, help="content chunks per stream")
    p.add_argument("--profile", type=float, default=0,
                   help="instead of measuring: py-spy the (first) router process this long")
    p.add_argument("--before", type=Path, metavar="CHECKOUT",
                   help="also measure the router of another checkout (target `before`), "
                   "interleaved with this one: a change's effect in one run")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--plot", type=Path, help="also write a PNG of the results here")
    args = p.parse_args()
    args.workload = args.workload.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    configs = args.config or [ROOT / "configs" / "cpu.yaml"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-router-"))
    key = "sk-bench-" + secrets.token_hex(8)

    from serving.launcher.supervisor import free_port

    port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "_upstream", "--port", str(port),
                                 "--chunks", str(args.chunks)])
    direct = f"http://127.0.0.1:{port}"
    results: list[Result] = []
    notes: dict[str, None] = {}  # in order, each once
    try:
        _wait_healthy(direct, [upstream], workdir / "none")
        for name in args.variant or ["sqlite"]:
            variant = make_variant(name, workdir / name)
            try:
                for processes in [int(n) for n in args.processes.split(",")]:
                    overlay = workdir / f"{name}-{processes}.yaml"
                    overlay.write_text(json.dumps(_overlay(configs, direct, variant)))
                    codes = {"router": ROOT, **({"before": args.before} if args.before
                                                  else {})}
                    routers: dict[str, Router] = {}
                    try:
                        for target, code in codes.items():
                            routers[target] = start_router(
                                [*configs, overlay], processes,
                                workdir / f"{name}-{processes}-{target}", key, code)
                        if args.profile:
                            return profile(routers["router"], key, args,
                                           workdir / "profile") or 0
                        results += measure(direct, routers, key, name, processes, args)
                    finally:
                        for router in routers.values():
                            router.stop()
                    if variant.check and (note := variant.check()):
                        notes[f"{name}: {note}"] = None
            finally:
                for stop in variant.stops:
                    stop()
    finally:
        upstream.terminate()
        upstream.wait()

    print(table(results))
    print()
    print(plot(results))
    print()
    print(summary(results))
    if args.plot:
        figure(results, args.plot)
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.write_text(json.dumps([
            {"variant": r.variant, "processes": r.processes, "workload": r.workload,
             "concurrency": r.concurrency, "target": r.target, "rate": r.rate, "unit": r.unit,
             "requests": r.requests, "errors": r.errors, "router_cpu_s": r.cpu,
             "p50": pct(r.latencies, 50),
             "p99": pct(r.latencies, 99)} for r in results], indent=2))
    return 0


def _overlay(configs: list[Path], direct: str, variant: Variant) -> dict:
    """Only the chat worker, at the synthetic upstream; limits that admit everything but are
    counted; the variant's stores."""
    from serving.config.loader import deep_merge, read_yaml

    workers: dict = {}
    for config in configs:
        deep_merge(workers, read_yaml(config).get("workers", {}))
    overlay = {
        "workers": {name: {"enabled": False} for name in workers if name != "chat"},
        "router": {"default_limits": {"requests_per_minute": 10**8,
                                      "tokens_per_minute": 10**12}},
    }
    overlay["workers"]["chat"] = {"model": MODEL, "endpoints": [direct]}
    deep_merge(overlay, variant.overlay)
    return overlay


def _child(role: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--chunks", type=int)
    p.add_argument("--url")
    p.add_argument("--key", default="")
    p.add_argument("--workload")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--duration", type=float)
    args = p.parse_args(argv)
    if role == "_upstream":
        serve_upstream(args.port, args.chunks)
    else:
        run_client(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

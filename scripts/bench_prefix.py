"""Prefix-cache routing for a chat pool: which router, which policy, measured on real vLLM.

Starts two vLLM CPU replicas of the config's chat model (the launcher's own command line, one
core each), then for every variant (engine x policy) starts that pool router in front of them,
runs the multi-turn workload of `prefix_load.py` through it and stops it; variants alternate
in rounds, so drift on a shared machine hits all of them alike. Each run opens its system
prompts with a fresh nonce, so no run reads the cache an earlier one left. Reports per variant:
the prefix-cache hit rate from vLLM's counters and from the usage, TTFT p50/p99, output
tokens/s, requests per replica, failed requests. Then, with `--kill`, each engine under
cache_aware loses replica 1 (SIGKILL to its process group) mid-run: failed requests are
counted apart for those in flight when it died, those sent before the router marked it down,
and those after (which should be none).

    python scripts/bench_prefix.py -c configs/cpu.yaml --rounds 2 --kill
    python scripts/bench_prefix.py -c configs/cpu.yaml \\
        --variant default=smg:cache_aware --variant abs4=smg:cache_aware:balance_abs_threshold=4
    python scripts/bench_prefix.py --url http://127.0.0.1:30000 \\
        --replica-url http://127.0.0.1:8101 --replica-url http://127.0.0.1:8102   # a pool up

Routing thresholds default to `workers.chat.routing` in the config (what `serving up` would
use); the flags override them. `--stack` measures through the product instead: each variant
is `serving up` with the chat worker alone, `replicas` and the variant's `routing` (the usage
then carries the router's `cache_read_input_tokens`; no kill test, the supervisor would restart
the replica).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
from bench_chat import bar_chart  # scripts/ is on the path when a script runs
from chat_pool import Proc, restart, start_replicas, start_router
from prefix_load import (
    SHAPES,
    Summary,
    Turn,
    Workload,
    build_workload,
    delta,
    plot_png,
    run_workload,
    scrape,
    table,
)

from serving.config import Config, load_config
from serving.config.deployment import Routing


def workload(args: argparse.Namespace) -> Workload:
    return build_workload(prompts=args.prompts, prompt_tokens=args.prompt_tokens,
                          users=args.users, conversations=args.conversations,
                          turns=args.turns, max_tokens=args.max_tokens,
                          nonce=secrets.token_hex(4), seed=args.seed)


def measure(label: str, url: str, replicas: list[str], args: argparse.Namespace,
            key: str = "") -> Summary:
    """One run of the workload through `url`, with the replicas' counters around it."""
    before = scrape(replicas)
    start = time.monotonic()
    turns = asyncio.run(run_workload(url, args.model, workload(args), key,
                                     concurrency=args.concurrency))
    seconds = time.monotonic() - start
    after = scrape(replicas)
    counters = delta(before, after)
    return Summary(label, turns, seconds, [counters[u] for u in replicas])


def warm(replicas: list[Proc], model: str) -> None:
    """A first request per replica: vLLM's first steps are slow, and no variant should pay
    for them."""
    for proc in replicas:
        httpx.post(proc.url + "/v1/chat/completions", timeout=120, json={
            "model": model, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say hello."}]}).raise_for_status()


Variant = tuple[str, Routing]  # label, routing (with its engine)


def parse_variants(args: argparse.Namespace, routing: Routing) -> list[Variant]:
    """--engines x --policies, or the --variant specs: `NAME=ENGINE:POLICY[:FIELD=V,...]`
    with `Routing` fields, e.g. `abs4=vllm-router:cache_aware:balance_abs_threshold=4`."""
    if not args.variant:
        return [(f"{e} {p}", routing.model_copy(update={"engine": e, "policy": p}))
                for e in args.engines.split(",") for p in args.policies.split(",")]
    out = []
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        engine, policy, *fields = rest.split(":")
        pairs = [f.split("=", 1) for f in ",".join(fields).split(",") if f]
        update = {"engine": engine, "policy": policy, **dict(pairs)}
        out.append((name, Routing.model_validate({**routing.model_dump(), **update})))
    return out


Pool = Callable[[str, Routing], AbstractContextManager[tuple[str, list[str], str]]]


def local_pool(replicas: list[Proc], tokenizer: Path, workdir: Path) -> Pool:
    """Variants as pool routers started here in front of the bench's own replicas."""

    @contextlib.contextmanager
    def pool(label: str, routing: Routing) -> Iterator[tuple[str, list[str], str]]:
        router = start_router(routing, replicas, workdir, tokenizer)
        try:
            yield router.url, [r.url for r in replicas], ""
        finally:
            router.stop()

    return pool


def stack_pool(args: argparse.Namespace, configs: list[Path], workdir: Path) -> Pool:
    """Variants through `serving up` itself: the chat worker alone, with `replicas` and the
    variant's routing; the usage then carries the router's `cache_read_input_tokens`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
    from tests.support.harness import start_background_stack

    workers = load_config(configs).workers

    @contextlib.contextmanager
    def pool(label: str, routing: Routing) -> Iterator[tuple[str, list[str], str]]:
        here = workdir / label.replace(" ", "-")
        here.mkdir(parents=True, exist_ok=True)
        chat = {"replicas": args.replicas, "routing": routing.model_dump(exclude={"port"})}
        overlay = {"workers": {**{n: {"enabled": False} for n in workers if n != args.worker},
                               args.worker: chat}}
        (here / "pool.yaml").write_text(json.dumps(overlay))
        stack = start_background_stack([*configs, here / "pool.yaml"], here)
        try:
            replicas = stack.runtime["workers"][args.worker]["replicas"]
            yield stack.base_url, [r["url"] for r in replicas], stack.key
        finally:
            stack.stop()

    return pool


def run_variants(args: argparse.Namespace, variants: list[Variant], pool: Pool,
                 ) -> list[Summary]:
    merged: dict[str, Summary] = {}
    for round_ in range(args.rounds):
        for label, routing in variants if round_ % 2 == 0 else variants[::-1]:
            with pool(label, routing) as (url, replicas, key):
                s = measure(label, url, replicas, args, key)
            print(f"  round {round_ + 1} {s.label}: hit {s.vllm_hit_rate:.3f} (usage "
                  f"{s.usage_hit_rate:.3f}), TTFT p50 {s.ttft(50) * 1e3:.0f} ms, "
                  f"{s.tps:.1f} tok/s, per replica {s.per_replica}, failed {s.failed}, "
                  f"{s.seconds:.0f} s", file=sys.stderr)
            if label in merged:
                merged[label].merge(s)
            else:
                merged[label] = s
    return [merged[label] for label, _ in variants]


def router_lists(router_url: str, replica_url: str) -> bool | None:
    """Whether the pool router still lists `replica_url` as a healthy worker (None: it has
    no endpoint that says)."""
    for path in ("/workers", "/list_workers"):
        try:
            r = httpx.get(router_url + path, timeout=2)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            continue
        body = r.json()
        items = body.get("workers", body.get("urls", [])) if isinstance(body, dict) else body
        for item in items:
            if isinstance(item, str) and item == replica_url:
                return True
            if isinstance(item, dict) and item.get("url") == replica_url:
                return bool(item.get("is_healthy", item.get("healthy", True)))
        return False
    return None


async def kill_run(router: Proc, victim: Proc, args: argparse.Namespace,
                   ) -> tuple[list[Turn], float, float | None, float]:
    """The workload through `router`; `victim` is killed `args.kill_after` seconds in.
    Returns the turns, the kill time, when the router stopped listing the victim (None if it
    cannot say) and when the run started."""
    start = time.monotonic()
    task = asyncio.create_task(run_workload(router.url, args.model, workload(args),
                                            concurrency=args.concurrency))
    await asyncio.sleep(args.kill_after)
    killed = time.monotonic()
    victim.signal_group(signal.SIGKILL)
    down = None
    while not task.done() and down is None:
        listed = await asyncio.to_thread(router_lists, router.url, victim.url)
        if listed is None:
            break
        if not listed:
            down = time.monotonic()
        await asyncio.sleep(0.1)
    return await task, killed, down, start


def kill_test(args: argparse.Namespace, engine: str, routing: Routing, replicas: list[Proc],
              tokenizer: Path, workdir: Path) -> str:
    """`engine` under cache_aware loses replica 1 mid-run; replica 1 is started again after."""
    router = start_router(routing.model_copy(update={"engine": engine, "policy": "cache_aware"}),
                          replicas, workdir, tokenizer, args.breaker)
    try:
        turns, killed, down, start = asyncio.run(kill_run(router, replicas[1], args))
    finally:
        router.stop()
    replicas[1] = restart(replicas[1])
    failed = [t for t in turns if not t.ok]
    in_flight = [t for t in failed if t.start < killed]
    marked = down if down is not None else killed + routing.health_check_interval_s + 1
    before_down = [t for t in failed if killed <= t.start < marked]
    after_down = [t for t in failed if t.start >= marked]
    sent_after = sum(1 for t in turns if t.start >= marked)
    breaker = f", circuit breaker after {args.breaker}" if args.breaker else ""
    lines = [
        f"kill test ({engine}, cache_aware, health checks every "
        f"{routing.health_check_interval_s:g} s{breaker}): replica 1 killed "
        f"{killed - start:.1f} s in, "
        + (f"marked down {down - killed:.1f} s later" if down is not None
           else "the router does not say when it marks it down: counted from "
                f"{marked - killed:.1f} s after the kill"),
        f"  requests: {len(turns)}, failed {len(failed)}: {len(in_flight)} in flight at the "
        f"kill, {len(before_down)} sent before it was marked down, {len(after_down)} after "
        f"(of {sent_after} sent after)",
    ]
    for t in failed[:6]:
        lines.append(f"    failed, sent at {t.start - killed:+.2f} s: {t.error}")
    return "\n".join(lines)


def run_local(args: argparse.Namespace, config: Config, variants: list[Variant],
              routing: Routing, workdir: Path) -> tuple[list[Summary], str]:
    """The variants on replicas started here, then the kill tests: results and their report."""
    replicas, model_path = start_replicas(config, args.worker, args.replicas, workdir)
    try:
        warm(replicas, args.model)
        results = run_variants(args, variants, local_pool(replicas, model_path, workdir))
        kill = "\n".join(kill_test(args, engine, routing, replicas, model_path, workdir)
                         for engine in args.engines.split(",")) if args.kill else ""
    finally:
        for proc in replicas:
            proc.stop()
    return results, kill


def report(args: argparse.Namespace, results: list[Summary], kill: str) -> None:
    """The table, the text plots, the ratios between variants; the PNG and JSON if asked."""
    w = workload(args)
    shape = (f"workload {args.workload}: {args.prompts} system prompts of "
             f"~{args.prompt_tokens} tokens, {args.users} users x {args.conversations} "
             f"conversations x {args.turns} turns = {w.requests} requests a run, "
             f"concurrency {args.concurrency or args.users}, max_tokens {args.max_tokens}")
    print(shape + ", temperature 0")
    if args.plot:
        plot_png(results, args.plot, shape)
    print(table(results))
    print()
    print(bar_chart([(s.label, s.vllm_hit_rate) for s in results], "hit rate (vLLM)", fmt=".3f"))
    print(bar_chart([(s.label, s.ttft(50) * 1e3) for s in results], "ms TTFT p50", fmt=".0f"))
    for s in results[1:] if args.variant else []:
        base = results[0]
        print(f"{s.label}/{base.label}: hit rate {s.vllm_hit_rate / base.vllm_hit_rate:.2f}x, "
              f"TTFT p50 {s.ttft(50) / base.ttft(50):.2f}x, output tok/s "
              f"{s.tps / base.tps:.2f}x, busiest/idlest replica {s.imbalance:.2f} "
              f"({base.imbalance:.2f})")
    for engine in args.engines.split(","):
        ca, rr = (next((s for s in results if s.label == f"{engine} {p}"), None)
                  for p in ("cache_aware", "round_robin"))
        if ca and rr:
            print(f"{engine}: cache_aware/round_robin hit rate "
                  f"{ca.vllm_hit_rate / rr.vllm_hit_rate:.2f}x, TTFT p50 "
                  f"{ca.ttft(50) / rr.ttft(50):.2f}x, busiest/idlest replica "
                  f"{ca.imbalance:.2f} (round_robin {rr.imbalance:.2f})")
    if kill:
        print()
        print(kill)
    if args.json:
        args.json.write_text(json.dumps([
            {"variant": s.label, "requests": len(s.turns), "failed": s.failed,
             "hit_rate_vllm": s.vllm_hit_rate, "hit_rate_usage": s.usage_hit_rate,
             "ttft_p50": s.ttft(50), "ttft_p99": s.ttft(99), "output_tok_per_s": s.tps,
             "per_replica": s.per_replica, "seconds": s.seconds} for s in results], indent=2))


def with_shape(args: argparse.Namespace) -> argparse.Namespace:
    """The named workload's settings, where no flag set one."""
    shape = SHAPES[args.workload]
    for name in ("prompts", "prompt_tokens", "users", "conversations", "turns", "concurrency"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(shape, name))
    args.concurrency = args.concurrency or None
    return args


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path,
                   help="start the replicas from these config files (default configs/cpu.yaml)")
    p.add_argument("--url", help="run once against this running pool instead")
    p.add_argument("--replica-url", action="append", default=[],
                   help="with --url: a replica whose vllm: metrics to read (repeatable)")
    p.add_argument("--key", default="", help="with --url: API key, if the pool wants one")
    p.add_argument("--worker", default="chat", help="the config's chat worker")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--engines", default="vllm-router,smg")
    p.add_argument("--policies", default="cache_aware,round_robin")
    p.add_argument("--variant", action="append", default=[],
                   metavar="NAME=ENGINE:POLICY[:FIELD=V,...]",
                   help="instead of --engines x --policies: a router and its routing fields "
                   "(repeatable), e.g. abs4=smg:cache_aware:balance_abs_threshold=4")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per variant")
    p.add_argument("--workload", choices=sorted(SHAPES), default="A",
                   help="a named shape (docs/benchmarks.md); the flags below override it")
    p.add_argument("--prompts", type=int, help="shared system prompts")
    p.add_argument("--prompt-tokens", type=int, help="about, per system prompt")
    p.add_argument("--users", type=int, help="users, each through their conversations")
    p.add_argument("--conversations", type=int, help="per user, one after another")
    p.add_argument("--turns", type=int, help="per conversation")
    p.add_argument("--concurrency", type=int, help="requests in flight at most (0: all users)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-threshold", type=float)
    p.add_argument("--balance-abs-threshold", type=int)
    p.add_argument("--balance-rel-threshold", type=float)
    p.add_argument("--health-check-interval", type=float)
    p.add_argument("--stack", action="store_true",
                   help="each variant through `serving up` with `replicas` (no kill test)")
    p.add_argument("--kill", action="store_true", help="then the kill test, for each engine")
    p.add_argument("--breaker", type=int,
                   help="routers' circuit breaker: failures before a worker is skipped")
    p.add_argument("--kill-after", type=float, default=20.0, help="seconds into the kill run")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--plot", type=Path, help="also plot the results to this PNG")
    args = with_shape(p.parse_args())
    # SIGTERM (a background run stopped) unwinds like Ctrl-C, so the replicas are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.url:
        results = [measure("pool", args.url, args.replica_url, args, args.key)]
        kill = ""
    else:
        configs = args.config or [Path(__file__).parents[1] / "configs/cpu.yaml"]
        config = load_config(configs)
        overrides = {k: v for k, v in {
            "cache_threshold": args.cache_threshold,
            "balance_abs_threshold": args.balance_abs_threshold,
            "balance_rel_threshold": args.balance_rel_threshold,
            "health_check_interval_s": args.health_check_interval}.items() if v is not None}
        routing = config.workers[args.worker].routing.model_copy(update=overrides)
        print(f"routing: {routing}", file=sys.stderr)
        workdir = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
        print(f"{args.replicas} replicas, logs in {workdir}", file=sys.stderr)
        variants = parse_variants(args, routing)
        if args.stack:
            results, kill = run_variants(args, variants, stack_pool(args, configs, workdir)), ""
        else:
            results, kill = run_local(args, config, variants, routing, workdir)

    report(args, results, kill)
    return 0


if __name__ == "__main__":
    sys.exit(main())

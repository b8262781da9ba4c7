"""A new user's first calls, with no sampling settings: README's first snippet and an Agents SDK
agent with one tool and no model settings, each run N times against the real stack.

What it shows: whether the model's own sampling defaults (the catalog's `sampling_defaults`)
make the default model answer briefly and correctly, and let an agent finish. Prints one row
per run (seconds, tokens, the answer) and, with `--plot FILE`, a PNG of the seconds per run.

    python scripts/bench_first_hour.py                                  # starts its own stack
    python scripts/bench_first_hour.py --url http://127.0.0.1:8000 --key sk-... --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m-instruct"
QUESTION = "What is 2 + 2?"  # README's first snippet


@dataclass
class Run:
    what: str
    seconds: float
    ok: bool
    tokens: int
    answer: str


def readme_snippet(base_url: str, key: str) -> Run:
    """README's snippet as printed there: no max_tokens, no sampling fields."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=600)
    start = time.perf_counter()
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    seconds = time.perf_counter() - start
    answer = r.choices[0].message.content or ""
    ok = "4" in answer and r.choices[0].finish_reason == "stop"
    return Run("readme snippet", seconds, ok, r.usage.completion_tokens, answer)


def agent_run(base_url: str, key: str) -> Run:
    """An Agents SDK agent on its default (Responses) model, one tool, no model settings."""
    import openai
    from agents import Agent, OpenAIProvider, RunConfig, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"It is sunny and 21 C in {city}."

    async def run() -> Run:
        client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0,
                                    timeout=600)
        config = RunConfig(model_provider=OpenAIProvider(openai_client=client))
        agent = Agent(name="weather", instructions="Answer with the weather tool.",
                      tools=[get_weather], model=MODEL)
        start = time.perf_counter()
        try:
            result = await Runner.run(agent, "What is the weather in Paris?", max_turns=3,
                                      run_config=config)
        except Exception as error:  # the failure is what this row reports
            return Run("agent, no settings", time.perf_counter() - start, False, 0,
                       f"{type(error).__name__}: {error}")
        finally:
            await client.close()
        tokens = sum(r.usage.output_tokens for r in result.raw_responses)
        tools = sum(item.type == "tool_call_item" for item in result.new_items)
        return Run("agent, no settings", time.perf_counter() - start,
                   bool(str(result.final_output).strip()), tokens,
                   f"[{tools} tool call(s)] {result.final_output}")

    return asyncio.run(run())


def print_table(runs: list[Run]) -> None:
    print(f"{'what':<20} {'run':>3} {'seconds':>8} {'tokens':>7} {'ok':>3}  answer")
    for what in dict.fromkeys(r.what for r in runs):
        for i, r in enumerate((r for r in runs if r.what == what), 1):
            answer = " ".join(r.answer.split())
            answer = answer if len(answer) <= 70 else answer[:67] + "..."
            print(f"{what:<20} {i:>3} {r.seconds:>8.2f} {r.tokens:>7} "
                  f"{'yes' if r.ok else 'no':>3}  {answer}")


def plot(runs: list[Run], path: Path) -> None:
    """Seconds per run, a group per kind of call; failed runs red."""
    from plots import Bars, save

    groups: dict[str, dict[str, float]] = {}
    failed = []
    for what in dict.fromkeys(r.what for r in runs):
        for i, r in enumerate((r for r in runs if r.what == what), 1):
            groups.setdefault(what, {})[f"run {i}"] = r.seconds
            if not r.ok:
                failed.append((what, f"run {i}"))
    save(path, f"First calls with no sampling settings ({MODEL})",
         [Bars("seconds per run", groups, marked=failed)], panel_size=(7, 3.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running stack's router (else one is started)")
    parser.add_argument("--key", help="its API key")
    parser.add_argument("-c", "--config", action="append", type=Path,
                        help="configs for the stack this starts (default configs/cpu.yaml)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write a PNG here")
    args = parser.parse_args()

    stack = None
    if args.url:
        base_url, key = args.url.rstrip("/"), args.key
    else:
        from tests.support.harness import start_background_stack

        workdir = Path(tempfile.mkdtemp(prefix="bench-first-hour-"))
        stack = start_background_stack(args.config or [ROOT / "configs/cpu.yaml"], workdir)
        base_url, key = stack.base_url, stack.key
    try:
        runs = [readme_snippet(base_url, key) for _ in range(args.runs)]
        runs += [agent_run(base_url, key) for _ in range(args.runs)]
    finally:
        if stack is not None:
            stack.stop()
    print_table(runs)
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()

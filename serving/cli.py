"""The `serving` command.

    serving up -c configs/cpu.yaml [-c overlay.yaml] [--host H] [--port P]
    serving models prepare -c configs/cpu.yaml
    serving config check -c configs/cpu.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from serving.config import Config, ConfigError, load_config
from serving.router.request_context import RequestIdFilter
from serving.weights.prepare import PrepareError


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(
        "serving | %(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request to a worker at INFO: noise on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _config(args: argparse.Namespace) -> Config:
    return load_config([Path(p) for p in args.config])


def cmd_up(args: argparse.Namespace) -> int:
    from serving.launcher.stack import run

    config = _config(args)
    setup_logging(config.router.log_level)
    host = args.host or config.router.host
    port = config.router.port if args.port is None else args.port
    return run(config, host, port, args.runtime_file)


def cmd_prepare(args: argparse.Namespace) -> int:
    from serving.weights.prepare import prepare_all

    setup_logging()
    for name, path in prepare_all(_config(args)).items():
        print(f"{name}: {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    for name, worker in config.workers.items():
        assert worker.args is not None
        print(f"# {name}: {worker.model} engine args: "
              f"{worker.args.model_dump(mode='json', exclude_defaults=True)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serving", description="OpenAI-compatible model serving")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", action="append", required=True, metavar="FILE",
                        help="config file; repeat to deep-merge overlays in order")
        return sp

    up = with_config(sub.add_parser("up", help="start the workers and the router"))
    up.add_argument("--host", help="router address (default: router.host, 127.0.0.1)")
    up.add_argument("--port", type=int, help="router port (default: router.port, 8000)")
    up.add_argument("--runtime-file", type=Path,
                    help="write the router and worker addresses here once ready")
    up.set_defaults(func=cmd_up)

    models = sub.add_parser("models", help="model weights").add_subparsers(
        dest="models_command", required=True)
    with_config(models.add_parser("prepare", help="download/convert every configured model")) \
        .set_defaults(func=cmd_prepare)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", required=True)
    with_config(config.add_parser("check", help="validate and print the merged config")) \
        .set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"serving: config error:\n{e}", file=sys.stderr)
        return 2
    except PrepareError as e:
        print(f"serving: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `serving` command.

    serving up -c configs/cpu.yaml [-c overlay.yaml] [--host H] [--port P]
    serving router -c CONFIG [--host H] [--port P] [--workers-from RUNTIME_FILE]
    serving reload [-c CONFIG | --runtime-file F | --url URL] [--key KEY]
    serving worker NAME -c CONFIG [--host H] [--port P]
    serving models prepare -c configs/cpu.yaml
    serving config check -c configs/cpu.yaml
    serving usage -c configs/cpu.yaml [--since 24h] [--until T] [--by key,model] [--json]
    serving keys create --name NAME [--models a,b] [--admin]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from serving.config import Config, ConfigError, load_config
from serving.config.hardware import AUTO, cpu_dtype, describe_cpu
from serving.logs import setup_logging
from serving.weights.prepare import PrepareError


def _config(args: argparse.Namespace) -> Config:
    return load_config([Path(p) for p in args.config])


def _plan(config: Config, args: argparse.Namespace) -> str:
    from serving.config.plan import checked_plan

    return checked_plan(config, args.config[-1])


def cmd_up(args: argparse.Namespace) -> int:
    from serving.launcher.stack import run

    config = _config(args)
    if config.device == "cuda":
        from serving.launcher.preflight import PreflightError, check_driver, driver_version

        print(_plan(config, args), flush=True)
        try:
            check_driver(driver_version())
        except PreflightError as e:
            print(f"serving: {e}", file=sys.stderr)
            return 1
    setup_logging(config.router.log_level)
    host = args.host or config.router.host
    port = config.router.port if args.port is None else args.port
    return run(config, host, port, args.runtime_file, tuple(Path(p) for p in args.config))


def cmd_router(args: argparse.Namespace) -> int:
    from serving.launcher.standalone import run_router

    config = _config(args)
    setup_logging(config.router.log_level)
    return run_router(config, tuple(Path(p) for p in args.config),
                      args.host or config.router.host,
                      config.router.port if args.port is None else args.port,
                      args.workers_from, reuse_port=args.reuse_port,
                      single_process=args.single_process, watch_config=args.watch_config)


def cmd_reload(args: argparse.Namespace) -> int:
    from serving.launcher.reload_client import ReloadClientError, reload_stack

    config = _config(args) if args.config else None
    try:
        return reload_stack(config, url=args.url, runtime_file=args.runtime_file,
                            key=args.key, wait=not args.no_wait, timeout_s=args.timeout)
    except ReloadClientError as e:
        print(f"serving: {e}", file=sys.stderr)
        return 2


def cmd_worker(args: argparse.Namespace) -> int:
    from serving.launcher.standalone import run_worker

    config = _config(args)
    setup_logging(config.router.log_level)
    worker = config.workers.get(args.name)
    port = args.port or (worker.port if worker is not None and worker.port else 8001)
    return run_worker(config, args.name, args.host, port)


def cmd_drain(args: argparse.Namespace) -> int:
    from serving.launcher.drain import drain

    outcome = drain(args.url, args.timeout, settle_s=args.settle)
    print(f"serving drain: {args.url}: {outcome}", flush=True)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from serving.weights.prepare import prepare_all

    setup_logging()
    for name, path in prepare_all(_config(args)).items():
        print(f"{name}: {path}")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    """Print every config key as Markdown tables: `> docs/configuration.md` regenerates it."""
    from serving.config.reference import render

    print(render(), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    for name, worker in config.workers.items():
        assert worker.args is not None
        print(f"# {name}: {worker.model} engine args: "
              f"{worker.args.model_dump(mode='json', exclude_defaults=True)}")
        dtype = getattr(worker.args, "dtype", None)
        if config.device == "cpu" and dtype == AUTO:
            print(f"# {name}: dtype auto -> {cpu_dtype()} on this CPU ({describe_cpu()})")
    if config.device == "cuda":
        print("# GPU memory plan\n" + _plan(config, args))
    return 0


def _time_arg(text: str) -> float:
    from serving.ledger import parse_since

    try:
        return parse_since(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _by_arg(text: str) -> list[str]:
    from serving.ledger.queries import check_group_fields

    try:
        return list(check_group_fields([g.strip() for g in text.split(",") if g.strip()]))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_usage(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from serving.db import database_url
    from serving.ledger import LedgerNotFound, format_table, query_totals
    from serving.ledger.queries import display_url, one_line
    from serving.ledger.report import format_time

    url = database_url(_config(args), "ledger")
    where = display_url(url)
    try:
        try:
            rows = query_totals(url, args.since, args.until, args.by)
        except LedgerNotFound:
            print(f"serving: no usage ledger at {where} yet: nothing has been recorded",
                  file=sys.stderr)
            rows = query_totals(url, args.since, args.until, args.by, missing_ok=True)
    except sa.exc.SQLAlchemyError as e:
        print(f"serving: cannot read the usage ledger {where}: {one_line(e)}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    since = "the start" if args.since is None else format_time(args.since)
    until = "now" if args.until is None else format_time(args.until)
    print(f"Usage from {since} to {until} ({where})\n")
    print(format_table(rows, args.by))
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from serving.config import ApiKey
    from serving.router.keys import generate_key, hash_key

    key = generate_key()
    entry: dict[str, object] = {"name": args.name, "sha256": hash_key(key)}
    if args.models is not None:
        models = list(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
        if not models:
            print("serving: --models needs at least one model id (omit it to allow all)",
                  file=sys.stderr)
            return 2
        entry["models"] = models
    if args.admin:
        entry["admin"] = True
    try:
        ApiKey.model_validate(entry)
    except ValidationError as e:
        if any(err["loc"][:1] == ("name",) for err in e.errors()):
            print(f"serving: invalid key name {args.name!r}: use 1 to 64 characters among "
                  "letters, digits and . _ @ -", file=sys.stderr)
        else:
            print(f"serving: invalid key: {e}", file=sys.stderr)
        return 2
    # All of it is YAML (the rest are comments), so it can be pasted or piped as it is.
    print(f"# New API key '{args.name}'. Store it now: it is shown only this once and cannot\n"
          "# be shown again (the config keeps only its SHA-256):\n"
          "#\n"
          f"#     {key}\n"
          "#\n"
          "# Paste this entry under `router.api_keys:` in a config file:")
    print(yaml.safe_dump([entry], sort_keys=False), end="")
    return 0


def _with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sp.add_argument("-c", "--config", action="append", required=True, metavar="FILE",
                    help="config file; repeat to deep-merge overlays in order")
    return sp


def _serving_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that run something: the stack, a router, a worker; and reload."""
    with_config = _with_config
    up = with_config(sub.add_parser("up", help="start the workers and the router"))
    up.add_argument("--host", help="router address (default: router.host, 127.0.0.1)")
    up.add_argument("--port", type=int, help="router port (default: router.port, 8000)")
    up.add_argument("--runtime-file", type=Path,
                    help="write the router and worker addresses here once ready (default: "
                    "state_dir/runtime.json)")
    up.set_defaults(func=cmd_up)

    router = with_config(sub.add_parser(
        "router", help="run only the router, in front of workers that run elsewhere"))
    router.add_argument("--host", help="address (default: router.host)")
    router.add_argument("--port", type=int, help="port (default: router.port)")
    router.add_argument("--workers-from", type=Path, metavar="RUNTIME_FILE",
                        help="take worker URLs from a running `serving up --runtime-file` "
                        "(followed when workers move); else from workers.NAME.endpoints")
    router.add_argument("--reuse-port", action="store_true",
                        help="share the port with other router processes (SO_REUSEPORT)")
    router.add_argument("--watch-config", action="store_true",
                        help="reload when the config files change (a Kubernetes ConfigMap)")
    router.add_argument("--single-process", action="store_true", help=argparse.SUPPRESS)
    router.set_defaults(func=cmd_router)

    reload = sub.add_parser(
        "reload", help="apply the edited config files to a running stack, in place")
    reload.add_argument("-c", "--config", action="append", metavar="FILE",
                        help="the stack's config files: where its runtime file is "
                        "(state_dir/runtime.json) and its generated key")
    reload.add_argument("--runtime-file", type=Path,
                        help="the stack's runtime file (serving up --runtime-file)")
    reload.add_argument("--url", help="the router's URL, e.g. http://127.0.0.1:8000")
    reload.add_argument("--key", help="an admin key (default: SERVING_ADMIN_KEYS' first, "
                        "else the generated key file)")
    reload.add_argument("--no-wait", action="store_true",
                        help="return once the reload is accepted")
    reload.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the reload to finish (default 1800)")
    reload.set_defaults(func=cmd_reload)

    worker = with_config(sub.add_parser("worker", help="run one worker alone (a pod, a node)"))
    worker.add_argument("name", help="the worker's name under `workers:` in the config")
    worker.add_argument("--host", default="127.0.0.1",
                        help="address (0.0.0.0 to be reached from other machines)")
    worker.add_argument("--port", type=int,
                        help="port (default: workers.NAME.port, else 8001)")
    worker.set_defaults(func=cmd_worker)

    drain = sub.add_parser(
        "drain", help="wait until a worker holds no request (a pod's preStop hook)")
    drain.add_argument("--url", default="http://127.0.0.1:8000", help="the worker's URL")
    drain.add_argument("--timeout", type=float, required=True,
                       help="seconds to wait at most (the worker's drain_timeout_s)")
    drain.add_argument("--settle", type=float, default=5.0,
                       help="seconds to wait at least, for requests already sent to arrive")
    drain.set_defaults(func=cmd_drain)



def _admin_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that prepare, check and report."""
    with_config = _with_config
    models = sub.add_parser("models", help="model weights").add_subparsers(
        dest="models_command", required=True)
    with_config(models.add_parser("prepare", help="download/convert every configured model")) \
        .set_defaults(func=cmd_prepare)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", required=True)
    with_config(config.add_parser("check", help="validate and print the merged config")) \
        .set_defaults(func=cmd_check)
    config.add_parser("reference", help="print the configuration reference "
                      "(docs/configuration.md)").set_defaults(func=cmd_reference)

    usage = with_config(sub.add_parser("usage", help="usage totals from the ledger"))
    usage.add_argument("--since", type=_time_arg, metavar="WHEN",
                       help="from this time on: 90s, 30m, 24h, 7d ago, an ISO date or "
                       "date-time (UTC unless an offset is given), or unix seconds "
                       "(default: all recorded)")
    usage.add_argument("--until", type=_time_arg, metavar="WHEN",
                       help="before this time, same forms (default: now)")
    usage.add_argument("--by", type=_by_arg, default=[], metavar="FIELDS",
                       help="group by these, comma-separated: key, model, endpoint, status "
                       "(default: grand totals)")
    usage.add_argument("--json", action="store_true", help="print a JSON list of rows")
    usage.set_defaults(func=cmd_usage)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True)
    create = keys.add_parser("create", help="make a new key; print it and its config entry")
    create.add_argument("--name", required=True,
                        help="the key's name in logs and the usage ledger")
    create.add_argument("--models", metavar="IDS",
                        help="model ids or aliases it may use, comma-separated (default: all)")
    create.add_argument("--admin", action="store_true",
                        help="may also read /v1/usage and /metrics")
    create.set_defaults(func=cmd_keys_create)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serving", description="OpenAI-compatible model serving")
    sub = p.add_subparsers(dest="command", required=True)
    _serving_commands(sub)
    _admin_commands(sub)
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

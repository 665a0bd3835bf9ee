"""`authz-sidecar serve | validate | check | demo | lambda-serve | api-keys | usage`: the command line, kept thin
over the modules that do the work."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import ConfigError, default_config, load_config

EXIT_ALLOW, EXIT_DENY, EXIT_ERROR = 0, 1, 2
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose reader closed the pipe."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz-sidecar", description="Envoy ext_authz with API Gateway's controls.")
    parser.add_argument("--version", action="version", version=f"authz-sidecar {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_authz server")
    serve.add_argument("--config", type=Path, help="config file (default: the embedded default config)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the gRPC port (SO_REUSEPORT) under a supervisor; above 1, a sigv4 replay guard "
        "must be shared through Redis (replay_redis_url)",
    )

    validate = sub.add_parser(
        "validate", help="check a config file; exit 0 valid (warnings on stderr), 1 invalid (or warned, with --strict)"
    )
    validate.add_argument("file", type=Path)
    validate.add_argument("--strict", action="store_true", help="exit 1 when there are warnings too (for CI)")

    check = sub.add_parser("check", help="decide one request offline, exactly as the server would")
    check.add_argument("--config", type=Path, help="config file (default: the embedded default config)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--http", type=Path, metavar="FILE.req", help="a raw HTTP/1.1 request")
    source.add_argument("--check-request", type=Path, metavar="FILE.json", help="a CheckRequest in protobuf JSON")
    check.add_argument("--at", help="evaluate as of this time (epoch seconds or ISO 8601)")
    check.add_argument("--source-ip", default="127.0.0.1", help="client address for --http (default 127.0.0.1)")
    check.add_argument("--scheme", default="http", choices=["http", "https"], help="scheme for --http")
    check.add_argument(
        "--raw-path",
        action="store_true",
        help="judge the --http target as written (default: normalized as the shipped Envoy forwards it)",
    )
    check.add_argument(
        "--envoy-mode",
        default="grpc",
        choices=["grpc", "http"],
        help="which shipped Envoy file asks (deploy/envoy/envoy.yaml: body cut to 64 KiB and marked partial; "
        "envoy-http.yaml: bodies up to 1 MiB, larger ones answered 413 by Envoy); default grpc",
    )
    check.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long authorizers may take to get ready (a jwks_uri fetch) before deciding anyway (default 10)",
    )
    check.add_argument("--output", default="text", choices=["text", "json"])
    check.add_argument(
        "--explain",
        action="store_true",
        help="show why, stage by stage (route, admit, authenticate, scopes, policy, meter): explain: lines in "
        "text output, an explanation list in --output json",
    )

    lambda_serve = sub.add_parser(
        "lambda-serve",
        help="serve an unchanged Lambda authorizer handler as a remote custom authorizer (target: grpc://...)",
    )
    lambda_serve.add_argument("handler", help="the handler's import string, package.module:function")
    lambda_serve.add_argument("--listen", default="127.0.0.1:9300", help="host:port to serve on (default %(default)s)")
    lambda_serve.add_argument(
        "--max-concurrency",
        type=int,
        default=16,
        help="handler calls at once; one more is refused at once (the sidecar answers 500), default %(default)s",
    )
    lambda_serve.add_argument(
        "--grace-period",
        type=float,
        default=5.0,
        help="seconds calls in flight get to finish after SIGTERM/SIGINT (default %(default)s)",
    )
    lambda_serve.add_argument(
        "--app-dir", default=".", help="directory put first on sys.path to import the handler from (default: .)"
    )

    demo = sub.add_parser("demo", help="sidecar + real Envoy + upstream on loopback, scripted requests")
    demo.add_argument("--config", type=Path, help="config file (default: the embedded default config)")
    demo.add_argument("--http", action="store_true", help="Envoy asks over HTTP (http_service) instead of gRPC")

    from .limits.apikeys_cli import add_parser as add_api_keys_parser

    add_api_keys_parser(sub)
    from .limits.usage_cli import add_parser as add_usage_parser

    add_usage_parser(sub)
    from .harness.envoy_config_cli import add_parser as add_envoy_config_parser

    add_envoy_config_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `authz-sidecar` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = {
        "serve": _serve,
        "validate": _validate,
        "check": _check,
        "demo": _demo,
        "lambda-serve": _lambda_serve,
        "api-keys": _api_keys,
        "usage": _usage,
        "envoy-config": _envoy_config,
    }[args.command]
    # httpx logs every request at INFO; the JWKS fetcher logs what matters (failures, key sets) itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code = command(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `check ... | head`: the reader has gone; stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    if args.workers > 1:
        from .serve.supervisor import run_supervisor

        return run_supervisor(args.config, args.workers, args.log_level)

    from .serve.server import serve

    return uvloop.run(serve(args.config))


class _Collected(logging.Handler):
    """What loading logs (a policy's or a JWKS file's warnings), kept to print as `warning: ...` lines: validate
    speaks to a person, in one format, and counts them for --strict."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


def _validate(args: argparse.Namespace) -> int:
    """Exit 1 on errors (every one printed, file:line:col); warnings (`sidecar.lint`, and what loading logs)
    go to stderr with exit 0, or exit 1 with --strict, so CI can refuse a config that cannot do what it says."""
    from .lint import lint
    from .runtime import compile_runtime

    collected = _Collected()
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, [collected]
    try:
        runtime = compile_runtime(load_config(args.file))
    except ConfigError as exc:
        print("\n".join([*collected.lines, str(exc)]), file=sys.stderr)
        return 1
    finally:
        root.handlers = handlers
    linted = [f"warning: {issue}" for issue in lint(runtime)]
    warnings = [*(line for line in collected.lines if line not in linted), *linted]  # the policy's are in both
    for line in warnings:
        print(line, file=sys.stderr)
    count = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
    if warnings and args.strict:
        print(f"{args.file}: valid{count}, refused by --strict", file=sys.stderr)
        return 1
    print(f"{args.file}: valid{count}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .offline import InputError, decide_http, dumps, evaluate, load_check_request, parse_time
    from .proxy_path import GRPC_MODE, HTTP_MODE

    try:
        config = load_config(args.config) if args.config else default_config()
        at = parse_time(args.at) if args.at else None
        if args.http:
            raw = args.http.read_bytes()
            limit = GRPC_MODE if args.envoy_mode == "grpc" else HTTP_MODE
            normalize = not args.raw_path
            result = asyncio.run(decide_http(config, raw, at, args.source_ip, args.scheme, normalize, limit, args.wait))
        else:
            result = asyncio.run(evaluate(config, load_check_request(args.check_request), at, args.wait))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.output == "json":
        print(dumps(result, args.explain))
    else:
        print(result.as_text(explain=args.explain))
    return EXIT_ALLOW if result.decision.allowed else EXIT_DENY


def _lambda_serve(args: argparse.Namespace) -> int:
    from .serve.lambda_host import HostOptions, run

    sys.path.insert(0, str(Path(args.app_dir).resolve()))  # as uvicorn's --app-dir: the handler's own modules
    return run(HostOptions(args.handler, args.listen, args.max_concurrency, args.grace_period))


def _api_keys(args: argparse.Namespace) -> int:
    from .limits.apikeys_cli import run

    return run(args)


def _usage(args: argparse.Namespace) -> int:
    from .limits.usage_cli import run

    return run(args, load_config)


def _envoy_config(args: argparse.Namespace) -> int:
    from .harness.envoy_config_cli import run

    return run(args)


def _demo(args: argparse.Namespace) -> int:
    from .harness.demo import run_demo

    config_text = args.config.read_text(encoding="utf-8") if args.config else None
    try:
        return run_demo(config_text, http=args.http)
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return EXIT_ERROR

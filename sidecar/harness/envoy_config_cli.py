"""`authz-sidecar envoy-config [CONFIG]`: print the Envoy bootstrap fitted to a sidecar config (`envoy_config`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import default_config, load_config
from ..issues import ConfigError
from ..runtime import compile_runtime

EXIT_ERROR = 2


def add_parser(sub: Any) -> None:
    """The `envoy-config` subcommand."""
    parser = sub.add_parser(
        "envoy-config",
        help="print the Envoy bootstrap for a sidecar config: only what its routes read crosses the hop",
    )
    parser.add_argument("config", type=Path, nargs="?", help="the sidecar config (default: the embedded one)")
    parser.add_argument(
        "--http", action="store_true", help="Envoy asks over HTTP (envoy-http.yaml) instead of gRPC (envoy.yaml)"
    )
    parser.add_argument(
        "--explain", action="store_true", help="say, route by route, what crosses the hop and why, instead"
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="Envoy decides the routes it can itself (jwt_authn + rbac); the sidecar is asked only for the rest",
    )
    parser.add_argument("--output", "-o", type=Path, help="write the bootstrap here instead of stdout")


def run(args: argparse.Namespace) -> int:
    """Render (or explain); exit 2 on a config error, printed at file:line."""
    from .envoy_config import explain, render

    try:
        runtime = compile_runtime(load_config(args.config) if args.config else default_config(), private_limits=True)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    if args.explain:
        sys.stdout.write(explain(runtime, args.offload))
        return 0
    text = render(runtime, template="envoy-http.yaml" if args.http else "envoy.yaml", offload=args.offload)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0

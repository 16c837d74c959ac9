"""``tesp-api``: serve | worker | local | hash-password.

Subcommands whose code belongs to other parts (worker, local, hash-password) are imported only when
used, so ``tesp-api serve`` starts without them and a missing part gives a clear message, not a
traceback. Bad settings print what is wrong and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

import tesp_api
from tesp_api.config.loader import SettingsError, load_settings
from tesp_api.config.settings import Settings

EXIT_USAGE = 2

# name -> (module, function, help); these take their own arguments (and their own --help).
PASSTHROUGH: dict[str, tuple[str, str, str]] = {
    "local": ("tesp_api.local", "main", "run the service with a local Pulsar in one command"),
    "hash-password": ("tesp_api.auth.passwords", "main", "hash a password for auth.users"),
}


def _fail(message: str) -> int:
    print(f"tesp-api: {message}", file=sys.stderr)
    return EXIT_USAGE


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings", metavar="FILE", help="settings file (default: settings.toml, or $TESP_API_SETTINGS)"
    )
    parser.add_argument(
        "--profile", metavar="NAME", help="settings profile (default: $FASTAPI_PROFILE or 'default')"
    )


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("port must be between 0 and 65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tesp-api", description="GA4GH TES 1.1 server running tasks on Galaxy Pulsar"
    )
    parser.add_argument("--version", action="version", version=f"tesp-api {tesp_api.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the TES API (and the engine, unless engine.enabled = false)"
    )
    _add_settings_options(serve)
    serve.add_argument("--host", help="listen address (overrides api.host)")
    serve.add_argument("--port", type=_port, help="listen port (overrides api.port)")
    worker = commands.add_parser("worker", help="run only the engine, against the shared task store")
    _add_settings_options(worker)
    for name, (_, _, text) in PASSTHROUGH.items():
        commands.add_parser(name, help=f"{text} (see: tesp-api {name} --help)", add_help=False)
    return parser


def _load(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.settings, args.profile)
    updates: dict[str, Any] = {}
    if getattr(args, "host", None):
        updates["host"] = args.host
    if getattr(args, "port", None) is not None:
        updates["port"] = args.port
    if updates:
        settings = settings.model_copy(update={"api": settings.api.model_copy(update=updates)})
    return settings


def _import(module: str, function: str, what: str) -> Callable[..., Any] | None:
    try:
        return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        print(f"tesp-api: {what} is not available in this installation ({exc})", file=sys.stderr)
        return None


def _exit_code(result: Any) -> int:
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]
    return result if isinstance(result, int) else 0


def _serve(args: argparse.Namespace) -> int:
    from tesp_api.service import StartupError, configure_logging, serve

    settings = _load(args)
    configure_logging(settings.logging)
    try:
        return serve(settings)
    except StartupError as exc:
        return _fail(str(exc))


def _worker(args: argparse.Namespace) -> int:
    settings = _load(args)
    main = _import("tesp_api.engine.worker_main", "main", "the worker (tesp_api.engine.worker_main)")
    if main is None:
        return EXIT_USAGE
    from tesp_api.service import configure_logging

    configure_logging(settings.logging)
    return _exit_code(main(settings))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list and args_list[0] in PASSTHROUGH:
            module, function, _ = PASSTHROUGH[args_list[0]]
            entry = _import(module, function, f"`tesp-api {args_list[0]}` ({module})")
            return EXIT_USAGE if entry is None else _exit_code(entry(args_list[1:]))
        parser = build_parser()
        args = parser.parse_args(args_list)
        if args.command == "serve":
            return _serve(args)
        if args.command == "worker":
            return _worker(args)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    except SettingsError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())

"""The ``fleetwatch`` command: run, check-config, notice-link, demo, simulate, score.

Exit codes (README, docs/operating.md), decided here and nowhere else:

    0  stopped by SIGTERM or SIGINT after committing what it held
    1  an unexpected error: a bug, logged once with its traceback
    2  the configuration (file missing or unreadable, bad TOML, unknown key, bad value),
       or a bad command line
    3  the store cannot be opened, locked or written
    4  a TLS or credential file cannot be read (or the generated token file written)
    5  the HTTP listen address cannot be bound
    6  this instance was active and lost the high-availability lease (it could not renew it
       in time, or another instance took it over): it stopped acknowledging and stepped
       down; the supervisor starts it again, as a standby
  130  interrupted (Ctrl-C) before the daemon took over SIGINT, e.g. during the restore

Each fatal error is one line on stderr naming the problem: a log line for ``run`` and
``demo`` (JSON, or readable text on a terminal), a plain line for ``check-config`` and
``notice-link``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Final

from fleetwatch import __version__
from fleetwatch.config import Settings, deprecated_settings, effective_settings, load_settings
from fleetwatch.errors import (
    ConfigError,
    CredentialFileError,
    FleetwatchError,
    LeaseLost,
    ListenError,
    StoreError,
)

EXIT_CODES: Final[dict[type[FleetwatchError], int]] = {
    ConfigError: 2, StoreError: 3, CredentialFileError: 4, ListenError: 5, LeaseLost: 6,
}
EXIT_BUG: Final = 1


def exit_code(exc: BaseException) -> int:
    """The documented exit code of a fatal error (its most specific mapped class), else EXIT_BUG."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_BUG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fleetwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="TOML settings file (every setting has a default)")
    check = sub.add_parser("check-config", help="validate a config and print the effective settings")
    check.add_argument("path", nargs="?", help="TOML settings file")
    link = sub.add_parser("notice-link", help="print a signed link to a merchant's notice page")
    link.add_argument("--config", help="TOML settings file (the daemon's)")
    link.add_argument("merchant_id")
    span = link.add_mutually_exclusive_group()
    span.add_argument("--days", type=float, help="how long the link works, in days (default 30)")
    span.add_argument("--seconds", type=float, help="how long the link works, in seconds")
    demo = sub.add_parser("demo", help="local broker + daemon + a small simulated fleet")
    demo.add_argument("--terminals", type=int, default=40)
    demo.add_argument("--http", default="127.0.0.1:9464", help="where the demo daemon listens")
    demo.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
    sub.add_parser("simulate", help="simulate a fleet (see `fleetwatch simulate --help`)", add_help=False)
    sub.add_parser("score", help="score incidents against a ground truth file", add_help=False)
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (measured faster for ingest: docs/PERFORMANCE.md), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("simulate", "score"):
        from fleetwatch.sim.cli import score_main, simulate_main

        command = simulate_main if args_list[0] == "simulate" else score_main
        return command(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        return _command(args)
    except FleetwatchError as exc:
        code = exit_code(exc)
        _report(args.command, str(exc), code)
        return code
    except KeyboardInterrupt:
        return 130
    except Exception:
        _report_bug(args.command)
        return EXIT_BUG


def _command(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        from fleetwatch.adapters.catalogues import load_catalogues
        from fleetwatch.credentials import mqtt_tls_context

        settings = load_settings(args.path)
        mqtt_tls_context(settings.mqtt)  # the same file checks as `run` (exit 4)
        load_catalogues(settings.notice.catalogue_dir)  # the operator's texts, checked as `run` does
        for warning in deprecated_settings(settings):
            print(f"fleetwatch check-config: warning: {warning}", file=sys.stderr)
        print(json.dumps(effective_settings(settings), indent=2, sort_keys=True))
        return 0
    if args.command == "run":
        settings = load_settings(args.config)
        from fleetwatch.app import run_daemon
        from fleetwatch.logs import configure_logging

        configure_logging(settings.log)
        with asyncio.Runner(loop_factory=_loop_factory()) as loop_runner:
            code: int = loop_runner.run(run_daemon(settings))
        return code
    if args.command == "notice-link":
        settings = load_settings(args.config)
        print(asyncio.run(notice_link(settings, args.merchant_id, args.days, args.seconds)))
        return 0
    if args.command == "demo":
        from fleetwatch.demo import run_demo

        return run_demo(terminals=args.terminals, http=args.http, duration=args.duration)
    raise ConfigError(f"unknown command {args.command!r}")


def _report(command: str, message: str, code: int) -> None:
    """The one line an operator reads for a fatal error."""
    if command in ("check-config", "notice-link"):
        print(f"fleetwatch {command}: {message}", file=sys.stderr)
        return
    import structlog

    from fleetwatch.logs import configure_default_logging

    configure_default_logging()
    structlog.get_logger("fleetwatch").error(message, exit_code=code)


def _report_bug(command: str) -> None:
    import structlog

    from fleetwatch.logs import configure_default_logging

    configure_default_logging()
    structlog.get_logger("fleetwatch").exception(f"fleetwatch {command} stopped by an unexpected error (a bug)",
                                                 exit_code=EXIT_BUG)


async def notice_link(settings: Settings, merchant_id: str, days: float | None, seconds: float | None) -> str:
    """A signed link; a generated link key is read from (or first written to) the store."""
    import time

    from fleetwatch.adapters.sqlite import stored_secret
    from fleetwatch.app import LINK_KEY_SECRET, calendar_of, link_key, notice_base_url, open_store
    from fleetwatch.core.links import MERCHANT_ID
    from fleetwatch.merchant_notices import NoticeLinks

    if not MERCHANT_ID.match(merchant_id):
        raise ConfigError(f"not a merchant id: {merchant_id!r} (1 to 32 of A-Z a-z 0-9 - .)")
    if (days is not None and days <= 0) or (seconds is not None and seconds <= 0):
        raise ConfigError("--days and --seconds must be positive")
    configured = settings.notice.link_key.get_secret_value()
    beside_daemon = not configured and settings.store.backend == "sqlite"  # PostgreSQL has no lock to mind
    stored = stored_secret(settings.store.sqlite_path, LINK_KEY_SECRET) if beside_daemon else None
    if configured:
        key = configured.encode()
    elif stored is not None:  # read beside a running daemon, which holds the store
        key = stored.encode()
    else:  # no daemon has started on this SQLite store yet (or PostgreSQL, which any process may open)
        store, _ = await open_store(settings.store, application_name="fleetwatch notice-link")
        try:
            key = await link_key(settings, store)
        finally:
            await store.close()
    links = NoticeLinks(key, notice_base_url(settings), calendar_of(settings))
    url, _ = links.make(merchant_id, time.time(), days=days, seconds=seconds)
    return url

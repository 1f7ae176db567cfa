"""The ``fleetwatch`` command: run, check-config, notice-link, demo, simulate, score."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence

from fleetwatch import __version__
from fleetwatch.config import Settings, effective_settings, load_settings
from fleetwatch.errors import ConfigError, StoreError


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
        if args.command == "check-config":
            settings = load_settings(args.path)
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
    except ConfigError as exc:
        print(f"fleetwatch: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"fleetwatch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


async def notice_link(settings: Settings, merchant_id: str, days: float | None, seconds: float | None) -> str:
    """A signed link; a generated link key is read from (or first written to) the store."""
    import time

    from fleetwatch.adapters.sqlite import SqliteStore
    from fleetwatch.app import calendar_of, link_key, notice_base_url
    from fleetwatch.core.links import MERCHANT_ID
    from fleetwatch.merchant_notices import NoticeLinks

    if not MERCHANT_ID.match(merchant_id):
        raise ConfigError(f"not a merchant id: {merchant_id!r} (1 to 32 of A-Z a-z 0-9 - .)")
    if (days is not None and days <= 0) or (seconds is not None and seconds <= 0):
        raise ConfigError("--days and --seconds must be positive")
    if settings.notice.link_key.get_secret_value():
        key = settings.notice.link_key.get_secret_value().encode()
    else:
        store = await SqliteStore.open(settings.store.sqlite_path)
        try:
            key = await link_key(settings, store)
        finally:
            await store.close()
    links = NoticeLinks(key, notice_base_url(settings), calendar_of(settings))
    url, _ = links.make(merchant_id, time.time(), days=days, seconds=seconds)
    return url

"""The ``fleetwatch`` command: run, check-config, demo, simulate, score."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence

from fleetwatch import __version__
from fleetwatch.config import effective_settings, load_settings
from fleetwatch.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fleetwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="TOML settings file (every setting has a default)")
    check = sub.add_parser("check-config", help="validate a config and print the effective settings")
    check.add_argument("path", nargs="?", help="TOML settings file")
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
        if args.command == "demo":
            from fleetwatch.demo import run_demo

            return run_demo(terminals=args.terminals, http=args.http, duration=args.duration)
    except ConfigError as exc:
        print(f"fleetwatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2

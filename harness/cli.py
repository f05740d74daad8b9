"""The ``harness`` command line.

Exit status: 0 success, 1 a verdict that is not as required, 2 a usage or
setup error (the message says what to do), 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from harness.config import SETTINGS, HarnessConfig, resolve_config
from harness.errors import HarnessError
from harness.stack import signals

STACK_SETTINGS = ("backend", "pg_bindir", "pgbouncer", "cache_dir", "keep_tmp", "start_timeout",
                  "session_pool_size", "transaction_pool_size")


def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for setting in SETTINGS:
        if setting.name in names:
            parser.add_argument(setting.option, dest=setting.name, default=None,
                                help=f"{setting.help} (env {setting.env})")


def _config(args: argparse.Namespace) -> HarnessConfig:
    return resolve_config({s.name: getattr(args, s.name, None) for s in SETTINGS})


def cmd_up(args: argparse.Namespace) -> int:
    from harness.stack import start_stack

    config = _config(args)
    with signals.teardown_on_signals():
        with start_stack(config) as stack:
            print(stack.describe())
            print(f"  pids         {' '.join(str(p) for p in stack.pids)}")
            print(f"  started in   {stack.timings['start']:.2f}s; press Ctrl-C to stop and tear down",
                  flush=True)
            deadline = None if args.seconds is None else time.monotonic() + args.seconds
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2 if deadline else 3600)
    print("stack stopped", flush=True)
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from harness.stack.account import server_account
    from harness.stack.binaries import ensure_binaries

    config = _config(args)
    binaries = ensure_binaries(config.pg_bindir, config.pgbouncer, install=args.install)
    account = server_account()
    print(f"postgres   {binaries.postgres} ({binaries.postgres_version()})")
    print(f"initdb     {binaries.initdb}")
    print(f"pgbouncer  {binaries.pgbouncer} ({binaries.pgbouncer_version()})")
    print(f"servers run as account {account.name!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a stack, print its URLs, stay up until Ctrl-C")
    _add_settings(up, STACK_SETTINGS)
    up.add_argument("--seconds", type=float, default=None, help="tear down after this many seconds")
    up.set_defaults(func=cmd_up)

    setup = sub.add_parser("setup", help="find (or install) PostgreSQL and PgBouncer")
    _add_settings(setup, STACK_SETTINGS)
    setup.add_argument("--install", action="store_true",
                       help="install Debian's postgresql and pgbouncer when missing (root + apt-get)")
    setup.set_defaults(func=cmd_setup)

    # Listed for --help; main() hands `scan` to the scanner before parsing.
    sub.add_parser("scan", help="find SET search_path leftovers in Python code (harness scan PATH ... [--json])")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scan"]:
        # The scanner owns its arguments (and its --help).
        from harness.scan import scanner

        return scanner.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except signals.Terminated as exc:
        print(f"harness: {exc}; torn down", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("harness: interrupted; torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``harness`` command line.

Exit status: 0 success, 1 a verdict that is not as required, 2 a usage or
setup error (the message says what to do), 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from harness.config import FLAGS, REPEATABLE, SETTINGS, STACK_SETTINGS, VERIFY_SETTINGS, HarnessConfig, resolve_config
from harness.errors import HarnessError, UsageError
from harness.stack import signals



def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for setting in SETTINGS:
        if setting.name in FLAGS and setting.name in names:
            parser.add_argument(setting.option, dest=setting.name, default=None, action="store_const",
                                const=True, help=f"{setting.help} (env {setting.env}=1)")
        elif setting.name in REPEATABLE and setting.name in names:
            parser.add_argument(setting.option, dest=setting.name, default=None, action="append",
                                help=f"{setting.help} Repeatable. (env {setting.env})")
        elif setting.name in names:
            parser.add_argument(setting.option, dest=setting.name, default=None,
                                help=f"{setting.help} (env {setting.env})")


def _cli_values(args: argparse.Namespace) -> dict:
    return {s.name: getattr(args, s.name, None) for s in SETTINGS}


def _config(args: argparse.Namespace) -> HarnessConfig:
    return resolve_config(_cli_values(args))


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


def cmd_verify(args: argparse.Namespace) -> int:
    import random

    from harness.report import write_report
    from harness.verify import run_verify

    cli = _cli_values(args)
    if args.strategy:
        cli["strategies"] = ",".join(args.strategy)
    if args.derandomize:
        cli["derandomize"] = True
    config = resolve_config(cli)
    seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(32)
    scan = [Path(p) for p in args.scan or ()]
    for path in scan:
        if not path.exists():
            raise UsageError(f"--scan {path}: no such file or folder.", fix=["give the folder of your application code"])
    gathered = PartialResults(config.report_dir)
    try:
        with signals.teardown_on_signals():
            run = run_verify(config, seed=seed, scan=scan, on_progress=gathered.update)
    except BaseException:
        gathered.keep()  # a run that fails late keeps the cells it finished, in a report marked incomplete
        raise
    folder = write_report(run, config.report_dir)
    print(summary(run, folder / "index.html"))
    return 0 if run.ok else 1


class PartialResults:
    """results.json rewritten as cells finish (at most once a second), and a whole report of the finished
    cells when the run stops early: what a late failure cannot take away."""

    INTERVAL = 1.0
    #: at most this share of the parent's time goes to rewriting: a run of a thousand cells has a results.json
    #: of megabytes, and a parent that rewrites it after every cell leaves its workers' results waiting
    SHARE = 0.1

    def __init__(self, report_dir: Path):
        self.report_dir = report_dir
        self.run = None
        self.written = 0.0
        self.interval = self.INTERVAL

    def update(self, run) -> None:
        from harness.report.results import results_json
        from harness.report.writer import write_partial_results

        self.run = run
        now = time.monotonic()
        if now - self.written >= self.interval:
            write_partial_results(results_json(run), self.report_dir)
            self.written = time.monotonic()
            self.interval = max(self.INTERVAL, (self.written - now) / self.SHARE)

    def keep(self) -> None:
        from harness.report import write_report

        if self.run is None or not self.run.cells:
            return
        try:
            folder = write_report(self.run, self.report_dir)
        except Exception as exc:  # noqa: BLE001 - the run's own error is what the user must see first
            print(f"harness: the {len(self.run.cells)} finished cell(s) could not be written: {exc}", file=sys.stderr)
            return
        print(f"harness: the run stopped early; the {len(self.run.cells)} cell(s) that finished are in "
              f"{folder / 'index.html'} (marked incomplete)", file=sys.stderr)


def summary(run, report: Path) -> str:
    """The one paragraph on the terminal: the verdict, the failing cells, the report's path."""
    cells = run.cells
    off = run.failing_cells
    what = ("the built-in strategies against their expectation table" if run.builtin_self_check
            else ", ".join(run.strategies))
    lines = [f"harness verify: {'PASS' if run.ok else 'FAIL'}: {what}, {len(cells)} cells on "
             f"{', '.join(run.routes or run.config.routes)} in {run.seconds:.0f}s (profile {run.config.profile}, "
             f"seed {'derandomized' if run.config.derandomize else run.seed})."]
    if off:
        names = "; ".join(f"{f'{c.column}: ' if c.column else ''}{c.strategy} x {c.route} x {c.scenario} measured "
                          f"{c.verdict.value}, required {c.required.label}" for c in off[:8])
        lines.append(f"{len(off)} cell(s) not as required: {names}{' ...' if len(off) > 8 else ''}.")
    if run.not_run:
        lines.append(f"Not run (neither passed nor failed): "
                     f"{'; '.join(item['what'] + ': ' + item['reason'] for item in run.not_run)}.")
    if run.scan:
        gating = sum(1 for f in run.scan if f.gating)
        lines.append(f"The static scan found {len(run.scan)} finding(s), {gating} gating, in {', '.join(run.scan_paths)}.")
    lines.append(f"Report: {report}")
    return " ".join(lines)


def cmd_report_merge(args: argparse.Namespace) -> int:
    from harness.report.merge import load_shard, merge_results
    from harness.report.writer import headline, write_report_folder

    report_dir = _config(args).report_dir
    merged = merge_results([load_shard(Path(p)) for p in args.shards])
    folder = write_report_folder(merged, report_dir)
    off = [c for c in merged["cells"] if not c["as_required"]]
    names = "; ".join(f"{f'{where}: ' if (where := c.get('variant') or c.get('deployment')) else ''}"
                      f"{c['strategy']} x {c['route']} x {c['scenario']} measured {c['verdict']}, "
                      f"required {c['required']}" for c in off[:8])
    print(f"harness report merge: {headline(merged)}; {len(merged['merged_from'])} shard(s) of plan "
          f"{merged['plan'][:12]}, {len(merged['cells'])} cells."
          + (f" {len(off)} cell(s) not as required: {names}{' ...' if len(off) > 8 else ''}." if off else "")
          + f" Report: {folder / 'index.html'}")
    return merged["exit_status"]


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

    verify = sub.add_parser("verify", help="run every scenario for every strategy x route and write the report")
    verify.add_argument("--strategy", action="append", metavar="SPEC",
                        help="a strategy to gate (package.module:attr or a built-in name); repeatable. "
                             "Without it the built-ins run against their expectation table.")
    verify.add_argument("--scan", action="append", metavar="PATH",
                        help="also scan this code (search_path bindings, unqualified raw SQL on tenant tables, models "
                             "missing the placeholder); repeatable")
    verify.add_argument("--derandomize", action="store_true",
                        help="reproducible generated programs, bit for bit (release gates)")
    _add_settings(verify, VERIFY_SETTINGS)
    verify.set_defaults(func=cmd_verify)

    report = sub.add_parser("report", help="work with written reports: merge the shards of one run")
    report_sub = report.add_subparsers(dest="report_command", required=True)
    merge = report_sub.add_parser(
        "merge", help="one report from the report folders of every shard of one run (harness verify --shard K/N)",
        description="Join the shards of one run into one report: exit 0 when the merged verdict passes, "
                    "1 when it does not, 2 when the shards cannot be merged.")
    merge.add_argument("shards", nargs="+", metavar="DIR",
                       help="a shard's report folder (or its results.json); give every shard once")
    _add_settings(merge, ("report_dir",))
    merge.set_defaults(func=cmd_report_merge)

    # Listed for --help; main() hands `scan` to the scanner before parsing.
    sub.add_parser("scan", help="find search_path bindings, unqualified raw SQL on tenant tables and models "
                                "missing the placeholder (harness scan PATH ... [--models SPEC] [--json] [--sarif FILE])")
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
    except Exception as exc:  # noqa: BLE001 - a clear line, not a traceback; the stack is already down
        print(f"harness: error: {type(exc).__name__}: {exc}\n"
              "This is not a finding about your tenancy layer: the run itself failed. Re-run with "
              "HARNESS_KEEP_TMP=1 to keep the server logs.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

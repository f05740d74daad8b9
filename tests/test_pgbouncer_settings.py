"""The team's own PgBouncer settings: --pgbouncer-config (a production pgbouncer.ini) and --pgbouncer-set.

Parsing and precedence need no server; what PgBouncer does with them (an unknown
name, a bad value, the values it runs with) is checked on a real native stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.cli import _cli_values, build_parser
from harness.config import resolve_config
from harness.errors import UsageError
from harness.pooler_settings.pgbouncer import CARRIED_SETTINGS, KEPT_SETTINGS, from_file, requested, split_assignments
from harness.stack import pgbouncer as pgbouncer_module
from harness.stack import start_stack
from harness.stack.binaries import binary_version, find_pgbouncer
from harness.stack.native import OWNER_FILE, RUN_DIR_PREFIX, run_root
from harness.stack.pgbouncer import render_config

PRODUCTION_INI = """\
;; a production pgbouncer.ini
[databases]
shop = host=db.internal port=5432 dbname=shop

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
auth_type = md5
auth_file = /etc/pgbouncer/userlist.txt
logfile = /var/log/pgbouncer/pgbouncer.log
pidfile = /var/run/pgbouncer/pgbouncer.pid
pool_mode = transaction
# what clients see
Server_Reset_Query_Always = 0
default_pool_size = 5
query_wait_timeout = 17
server_check_query = select 2
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- the file: carried over, ignored, refused ---------------------------------------------------------------
def test_a_production_ini_carries_over_what_clients_see_and_ignores_the_harnesss_own(tmp_path):
    settings = from_file(write(tmp_path / "pgbouncer.ini", PRODUCTION_INI))
    assert settings.values == {"server_reset_query_always": "0", "default_pool_size": "5",
                               "query_wait_timeout": "17", "server_check_query": "select 2"}
    # In the file's order: other sections first.
    assert settings.ignored == ("[databases]", "listen_addr", "listen_port", "auth_type", "auth_file", "logfile",
                                "pidfile", "pool_mode")
    assert settings.origins["query_wait_timeout"].endswith("pgbouncer.ini:16")
    assert "ignored (the harness's own): [databases], listen_addr" in settings.describe()


def test_a_setting_in_neither_list_is_refused_with_its_line_and_what_to_do(tmp_path):
    ini = write(tmp_path / "pgbouncer.ini",
                PRODUCTION_INI + "client_tls_sslmode = require\nmax_client_conn = 50\n")
    with pytest.raises(UsageError) as refused:
        from_file(ini)
    text = str(refused.value)
    assert "not carried over: client_tls_sslmode, max_client_conn" in text
    assert "pgbouncer.ini:18" in text and "--pgbouncer-set" in text and "To fix this" in text


def test_the_file_must_exist_and_have_a_pgbouncer_section(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        resolve_config({"pgbouncer_config": str(tmp_path / "missing.ini")}, env={}, cwd=tmp_path)
    only_databases = write(tmp_path / "databases.ini", "[databases]\n* = host=db\n")
    with pytest.raises(UsageError, match=r"has no \[pgbouncer\] section"):
        resolve_config({"pgbouncer_config": str(only_databases)}, env={}, cwd=tmp_path)
    garbled = write(tmp_path / "garbled.ini", "[pgbouncer]\nthis is not a setting\n")
    with pytest.raises(UsageError, match="garbled.ini:2.*NAME = VALUE"):
        from_file(garbled)


def test_an_include_is_read_in_place_and_a_later_line_wins(tmp_path):
    write(tmp_path / "extra.ini", "query_timeout = 9\ndefault_pool_size = 7\n")
    main = write(tmp_path / "pgbouncer.ini", "[pgbouncer]\ndefault_pool_size = 5\n%include extra.ini\n")
    assert from_file(main).values == {"default_pool_size": "7", "query_timeout": "9"}


# -- --pgbouncer-set: parsing, the three sources, precedence over the file ----------------------------------
def test_pgbouncer_set_items_and_their_commas():
    assert split_assignments(["track_extra_parameters = search_path"]) == ("track_extra_parameters=search_path",)
    # In the environment: comma-separated, and a piece without NAME= continues a list-valued setting.
    assert split_assignments("ignore_startup_parameters=extra_float_digits,options,query_timeout=5") == (
        "ignore_startup_parameters=extra_float_digits,options", "query_timeout=5")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        split_assignments(["server_lifetime"])
    with pytest.raises(ValueError, match="listen_port is not a PgBouncer setting the harness carries over .the harness keeps"):
        split_assignments(["listen_port=1"])
    with pytest.raises(ValueError, match="no_such_setting is not a PgBouncer setting"):
        split_assignments(["no_such_setting=1"])
    # PgBouncer reads names case-insensitively: another case is the same name; one letter off is a misspelling.
    assert split_assignments(["Query_Timeout=5"]) == ("query_timeout=5",)
    with pytest.raises(ValueError, match="did you mean server_reset_query_always"):
        split_assignments(["server_reset_query_alway=1"])


def test_pgbouncer_set_from_the_command_line_the_environment_and_pyproject(tmp_path):
    write(tmp_path / "pyproject.toml", '[tool.harness]\npgbouncer_set = ["query_timeout=4"]\n'
                                       'pgbouncer_config = "conf/pgbouncer.ini"\n')
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "pgbouncer.ini", PRODUCTION_INI)
    from_pyproject = resolve_config({}, env={}, cwd=tmp_path)
    assert from_pyproject.pgbouncer_set == ("query_timeout=4",)
    assert from_pyproject.pgbouncer_config == tmp_path / "conf" / "pgbouncer.ini"  # relative to pyproject.toml
    from_env = resolve_config({}, env={"HARNESS_PGBOUNCER_SET": "query_timeout=6,server_lifetime=60"}, cwd=tmp_path)
    assert from_env.pgbouncer_set == ("query_timeout=6", "server_lifetime=60")
    args = build_parser().parse_args(["verify", "--pgbouncer-set", "server_reset_query_always=1",
                                      "--pgbouncer-set", "query_wait_timeout=17"])
    from_cli = resolve_config(_cli_values(args), env={"HARNESS_PGBOUNCER_SET": "query_timeout=6"}, cwd=tmp_path)
    assert from_cli.pgbouncer_set == ("server_reset_query_always=1", "query_wait_timeout=17")
    with pytest.raises(UsageError, match="Bad value for --pgbouncer-set: pool_mode"):
        resolve_config({"pgbouncer_set": ["pool_mode=statement"]}, env={}, cwd=tmp_path)


def test_pgbouncer_set_wins_over_the_file_and_is_applied_last(tmp_path):
    ini = write(tmp_path / "pgbouncer.ini", PRODUCTION_INI)
    settings = requested(ini, ["server_reset_query_always=1", "query_timeout=3"])
    assert settings.values["server_reset_query_always"] == "1"
    assert settings.origins["server_reset_query_always"] == "--pgbouncer-set"
    assert list(settings.values)[-2:] == ["server_reset_query_always", "query_timeout"]
    rendered = render_config(pool_mode="transaction", listen_addr="127.0.0.1", listen_port=1, server_host="h",
                             server_port=2, auth_file="a", admin_user="u", pool_size=10, extra=settings.values)
    lines = rendered.splitlines()
    # the team's lines come after the harness's own (PgBouncer takes the last line of a name)
    assert lines.index("default_pool_size = 5") > lines.index("default_pool_size = 10")
    assert lines.index("query_wait_timeout = 17") > lines.index("query_wait_timeout = 30")


def test_the_stack_commands_take_both_settings_and_pgbouncer_set_repeats():
    for command in ("verify", "up"):
        text = subprocess.run([sys.executable, "-m", "harness", command, "--help"], capture_output=True, text=True,
                              check=True, env={**os.environ, "COLUMNS": "200"}).stdout
        assert "--pgbouncer-config" in text and "--pgbouncer-set" in text
        assert "Repeatable. (env HARNESS_PGBOUNCER_SET)" in " ".join(text.split())


def test_a_replay_command_carries_both_settings(tmp_path):
    import shlex

    from harness.jobs import verify_replay
    from harness.tenancy.strategy import load_strategy
    from harness.workload.generated import PROFILES

    ini = write(tmp_path / "pgbouncer.ini", PRODUCTION_INI)
    config = resolve_config({"pgbouncer_config": str(ini), "pgbouncer_set": [
        "ignore_startup_parameters=extra_float_digits,options", "query_timeout=5"]}, env={}, cwd=tmp_path)
    command = verify_replay(config, seed=7)(load_strategy("search_path_set", config.pythonpath), "transaction",
                                            "generated", PROFILES["ci"])
    assert ("--pgbouncer-set ignore_startup_parameters=extra_float_digits,options --pgbouncer-set query_timeout=5"
            in command) and f"--pgbouncer-config {ini}" in command
    again = resolve_config(_cli_values(build_parser().parse_args(shlex.split(command)[1:])), env={}, cwd=tmp_path)
    assert (again.pgbouncer_config, again.pgbouncer_set) == (config.pgbouncer_config, config.pgbouncer_set)


def test_the_lists_do_not_overlap():
    assert not set(CARRIED_SETTINGS) & set(KEPT_SETTINGS)


# -- the external backend cannot apply them -------------------------------------------------------------------
def test_the_external_backend_refuses_them_before_connecting(tmp_path):
    dsns = {"backend": "external", "direct_dsn": "postgresql://app:x@127.0.0.1:1/db",
            "superuser_dsn": "postgresql://admin:x@127.0.0.1:1/db"}
    with pytest.raises(UsageError) as refused:
        resolve_config({**dsns, "pgbouncer_set": ["query_timeout=5"]}, env={}, cwd=tmp_path)
    assert "the external backend's poolers are yours: set these in their own pgbouncer.ini" in str(refused.value)
    done = subprocess.run([sys.executable, "-m", "harness", "verify", "--backend", "external",
                           "--direct-dsn", dsns["direct_dsn"], "--superuser-dsn", dsns["superuser_dsn"],
                           "--pgbouncer-config", str(write(tmp_path / "p.ini", PRODUCTION_INI))],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "--pgbouncer-config" in done.stderr and "external backend" in done.stderr


# -- on a real native stack -----------------------------------------------------------------------------------
def _children() -> list[str]:
    """Server processes this test process started and that still run (pgbouncer, postgres)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == os.getpid() and rest[0] not in "ZX" and comm in ("pgbouncer", "postgres"):
            found.append(f"{entry.name} {comm}")
    return found


def _own_run_dirs() -> list[Path]:
    """Run folders of this process (another run on the machine may have its own)."""
    mine = []
    for folder in run_root().glob(f"{RUN_DIR_PREFIX}*"):
        try:
            if (folder / OWNER_FILE).read_text().strip() == str(os.getpid()):
                mine.append(folder)
        except OSError:
            continue
    return mine


def _probe_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("tenant-harness-probe-*"))


@pytest.mark.server
def test_an_unknown_setting_is_refused_before_the_stack_starts_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(pgbouncer_module, "_KNOWN", {})  # the throwaway PgBouncer runs, whatever ran before
    version = binary_version(find_pgbouncer(None))
    probes_before = _probe_dirs()
    # Another stack of this process (the session's) may be running: only what this start leaves counts.
    children_before, runs_before = set(_children()), set(_own_run_dirs())
    config = resolve_config({"backend": "native", "cache_dir": str(tmp_path / "cache"),
                             "pgbouncer_set": ["track_extra_parameters=search_path", "query_timeout=5"]},
                            env={}, cwd=tmp_path)
    with pytest.raises(UsageError) as refused:
        start_stack(config)
    text = str(refused.value)
    # The machine's PgBouncer is Debian bookworm's 1.18 (as CI installs it): it knows no track_extra_parameters.
    assert f"PgBouncer {version}" in text and "does not know the setting(s) track_extra_parameters" in text
    assert "query_timeout" not in text.split("\n")[0]  # a name it knows is not named
    assert "To fix this" in text and "--pgbouncer" in text
    assert set(_children()) == children_before and set(_own_run_dirs()) == runs_before
    assert _probe_dirs() == probes_before
    # The names are kept: in this process, and in the cache folder for the next one.
    cached = list((tmp_path / "cache" / "pgbouncer-settings").glob("*.json"))
    assert len(cached) == 1 and "query_timeout" in json.loads(cached[0].read_text())
    monkeypatch.setattr(pgbouncer_module, "_KNOWN", {})
    monkeypatch.setattr(pgbouncer_module, "_probe_settings", lambda *a: pytest.fail("probed again"))
    with pytest.raises(UsageError, match="track_extra_parameters"):
        start_stack(config)


@pytest.mark.server
def test_a_value_pgbouncer_refuses_is_a_clear_error_naming_the_setting(tmp_path):
    children_before, runs_before = set(_children()), set(_own_run_dirs())  # the session's stack may be running
    config = resolve_config({"backend": "native", "pgbouncer_set": ["server_lifetime=abc"]}, env={}, cwd=tmp_path)
    with pytest.raises(UsageError) as refused:
        start_stack(config)
    text = str(refused.value)
    version = binary_version(find_pgbouncer(None))
    assert f"PgBouncer {version}" in text and "refused the setting(s) server_lifetime" in text
    assert "server_lifetime = 'abc' (from --pgbouncer-set)" in text
    assert 'invalid value "abc" for parameter server_lifetime' in text  # PgBouncer's own words, from its log
    assert set(_children()) == children_before and set(_own_run_dirs()) == runs_before


@pytest.mark.server
def test_the_values_pgbouncer_runs_with_are_read_back(tmp_path):
    ini = write(tmp_path / "pgbouncer.ini", PRODUCTION_INI)
    config = resolve_config({"backend": "native", "pgbouncer_config": str(ini),
                             "pgbouncer_set": ["server_reset_query_always=1"]}, env={}, cwd=tmp_path)
    with start_stack(config) as stack:
        for route in ("session", "transaction"):
            live = {row["key"]: row["value"] for row in stack.admin(route, "SHOW CONFIG")}
            assert stack.pooler_settings[route] == {name: live[name] for name in stack.pooler_settings[route]}
            assert live["pool_mode"] == route  # the harness keeps each route's pool_mode
            assert live["listen_port"] == str(stack.bouncers[route].port)  # and its own port
            assert live["default_pool_size"] == "5"  # the team's pool size wins on both routes
            assert live["server_reset_query_always"] == "1"  # --pgbouncer-set wins over the file's 0
            assert live["query_wait_timeout"] == "17" and live["server_check_query"] == "select 2"
        assert "ignored (the harness's own): [databases], listen_addr" in stack.pooler_requested
        assert "pgbouncer" in stack.describe() and "server_reset_query_always = 1" in stack.describe()


@pytest.mark.server
def test_results_json_and_the_report_carry_the_effective_values(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "harness", "verify", "--backend", "native", "--report-dir", str(tmp_path / "reports"),
         "--example-db", str(tmp_path / "examples"), "--profile", "dev", "--seed", "1", "--jobs", "1",
         "--strategy", "harness.tenancy.strategies.builtin:translate_map_pinned", "--routes", "transaction",
         "--scenarios", "fresh_session",
         "--pgbouncer-set", "server_reset_query_always=1", "--pgbouncer-set", "query_wait_timeout=17"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = tmp_path / "reports" / "latest"
    environment = json.loads((report / "results.json").read_text())["environment"]
    for route in ("session", "transaction"):
        assert environment["pooler_settings"][route]["server_reset_query_always"] == "1"
        assert environment["pooler_settings"][route]["query_wait_timeout"] == "17"
        assert environment["pooler_settings"][route]["pool_mode"] == route
    assert "query_wait_timeout = 17" in environment["pooler_requested"]
    html = (report / "index.html").read_text()
    assert "server_reset_query_always = 1" in html and "read back from each pooler" in html

"""The pgagroal part (harness.stack.pgagroal): the team's settings, then a real pgagroal on a real PostgreSQL.

Reading settings needs no server. Everything else runs the ``trixie-pgagroal`` deployment's own binaries
(PostgreSQL 17 and pgagroal 1.6.0 from Debian trixie, built by ``scripts/build-deployment trixie --with
pgagroal``): one throwaway PostgreSQL for the module, each test with its own pgagroal on a leased port below
10000.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest

from harness.config import HarnessConfig, resolve_config
from harness.deployments import Deployment
from harness.errors import SetupError, StartupTimeout, UsageError
from harness.pooler_settings import PoolerSettings, requested_for
from harness.pooler_settings.pgagroal import (PGAGROAL_CARRIED, PGAGROAL_KEPT, from_pgagroal_file,
                                              parse_pgagroal_assignment, pgagroal_requested, read_pgagroal_conf,
                                              session_pipeline, split_pgagroal_assignments)
from harness.stack.account import Account, server_account
from harness.stack.binaries import find_binaries
from harness.stack.deployment_builds import manifest, native_binaries
from harness.stack.pgagroal import (MAX_PORT, Pgagroal, PgagroalBinaries, lease_listen_port, master_key_path,
                                    refuse_unknown_pgagroal_settings, render_pgagroal_conf, render_pgagroal_limits)
from harness.stack.ports import PortLease, lease_port
from harness.stack.postgres import APP_ROLE, DATABASE, SUPERUSER, Logins, PostgresServer, prepare_data_dir

#: not a built-in deployment yet (harness/deployments.py): its part is tested on trixie's root
DEPLOYMENT = Deployment("trixie-pgagroal", "17", "1.6.0", pooler="pgagroal", suite="trixie")

PRODUCTION_CONF = """\
# a production pgagroal.conf
[pgagroal]
host = *
port = 2345
log_type = file
log_level = info            # trailing comment
max_connections = 100
pipeline = 'session'
validation = background ; a comment after ;
background_interval = 60
idle_timeout = 600
disconnect_client = "5"
track_prepared_statements = yes
update_process_title = verbose
metrics = 2346
ev_backend = auto

[primary]
host = db1.internal
port = 5432
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- the team's settings, no server -----------------------------------------------------------------------------
def test_a_production_conf_carries_over_what_clients_see_and_ignores_the_rest(tmp_path):
    settings = from_pgagroal_file(write(tmp_path / "pgagroal.conf", PRODUCTION_CONF))
    assert settings.values == {"max_connections": "100", "pipeline": "session", "validation": "background",
                               "background_interval": "60", "idle_timeout": "600", "disconnect_client": "5",
                               "track_prepared_statements": "on"}
    assert settings.origins["validation"] == f"{tmp_path / 'pgagroal.conf'}:9"
    # The server section and the harness's own settings by name, then a count of the others.
    assert settings.ignored[:4] == ("[primary]", "host", "port", "log_type")
    assert "update_process_title" in settings.ignored and "metrics" in settings.ignored
    assert settings.ignored[-1] == "1 more that do not decide what a pooled connection carries"
    assert "carried over: max_connections = 100" in settings.describe()


def test_the_conf_reader_follows_pgagroals_format(tmp_path):
    found = read_pgagroal_conf(write(tmp_path / "p.conf", "[pgagroal]\na = 'x # y'  # comment\nb=7;c\n"
                                                          "[server]\nc = 1\n[pgagroal]\na = again\n"))
    assert {name: value for name, (value, _) in found.items()} == {"b": "7", "[server]": "", "a": "again"}
    with pytest.raises(UsageError, match="not a NAME = VALUE line"):
        read_pgagroal_conf(write(tmp_path / "bad.conf", "[pgagroal]\njust words\n"))
    with pytest.raises(UsageError, match="no such file"):
        from_pgagroal_file(tmp_path / "absent.conf")


@pytest.mark.parametrize(("item", "expected"), [
    ("validation=FOREGROUND", ("validation", "foreground")),
    ("disconnect_client_force=true", ("disconnect_client_force", "on")),
    ("track_prepared_statements = 0", ("track_prepared_statements", "off")),
    ("idle_timeout='30'", ("idle_timeout", "30")),
    ("pipeline=auto", ("pipeline", "auto")),
])
def test_a_setting_is_written_as_pgagroal_reads_it(item, expected):
    assert parse_pgagroal_assignment(item) == expected


@pytest.mark.parametrize(("item", "problem"), [
    ("idle_timeout=2m", "not a whole number .*no unit"),  # pgagroal 1.6 runs with 0 ("Unknown key")
    ("validation=bogus", "not one of off, foreground, background"),  # it would run with off
    ("pipeline=bogus", "not one of auto, performance, session, transaction"),
    ("keep_alive=maybe", "the harness keeps its own"),
    ("max_connections=99999", "outside 1 .. 10000"),  # it would run with 10000
    ("disconnect_client_force=maybe", "not a boolean"),
    ("idle_timout=5", "did you mean idle_timeout"),
    ("no_such_setting=1", "carries over: pipeline, validation"),
])
def test_a_setting_pgagroal_would_misread_is_refused_with_the_reason(item, problem):
    with pytest.raises(ValueError, match=problem):
        parse_pgagroal_assignment(item)
    with pytest.raises(UsageError):
        pgagroal_requested(None, [item])


def test_set_items_and_their_order(tmp_path):
    assert split_pgagroal_assignments("validation=off, idle_timeout=5") == ("validation=off", "idle_timeout=5")
    conf = write(tmp_path / "p.conf", "[pgagroal]\nidle_timeout = 60\nvalidation = foreground\n")
    settings = pgagroal_requested(conf, ["idle_timeout=5"])
    assert list(settings.values.items()) == [("validation", "foreground"), ("idle_timeout", "5")]
    assert settings.origins == {"validation": f"{conf}:3", "idle_timeout": "--pgagroal-set"}
    assert set(PGAGROAL_CARRIED).isdisjoint(PGAGROAL_KEPT)


def test_the_configuration_reads_the_options_as_pgagroal_would(tmp_path):
    conf = write(tmp_path / "pgagroal.conf", PRODUCTION_CONF)
    config = resolve_config({"deployment": "trixie-pgagroal", "pgagroal_config": str(conf),
                             "pgagroal_set": ["pipeline='performance'", "validation=OFF"]}, env={}, cwd=tmp_path)
    settings = requested_for(config, "pgagroal")
    assert (settings.values["pipeline"], settings.values["validation"]) == ("performance", "off")
    assert settings.origins["pipeline"] == "--pgagroal-set" and settings.origins["idle_timeout"] == f"{conf}:11"
    assert session_pipeline(settings) == "performance" and settings.ignored[0] == "[primary]"


def test_the_pipeline_of_each_route():
    assert session_pipeline(None) == "auto"  # pgagroal's default: performance, or session with disconnect_client
    assert session_pipeline(PoolerSettings({"pipeline": "session"}, {})) == "session"
    assert session_pipeline(PoolerSettings({"pipeline": "transaction"}, {})) == "auto"
    conf = render_pgagroal_conf(pipeline="transaction", listen_addr="127.0.0.1", listen_port=6432,
                                socket_dir="/run/x", log_path="/run/x.log", server_host="/run/pg", server_port=15432,
                                pool_size=4, extra={"pipeline": "session", "disconnect_client": "5",
                                                    "idle_timeout": "7"})
    lines = conf.splitlines()
    assert "pipeline = transaction" in lines and "pipeline = session" not in lines
    # The transaction pipeline refuses disconnect_client: it goes to the session route only.
    assert "disconnect_client = 5" not in lines
    assert lines.index("idle_timeout = 7") > lines.index("idle_timeout = 0")  # the team's line comes last
    assert lines[-3:] == ["[postgres]", "host = /run/pg", "port = 15432"]
    assert render_pgagroal_limits("app", ["app"], 4).splitlines()[-1] == "app app 4 4 4"


def test_a_port_pgagroal_would_crash_on_is_refused_and_a_leased_one_is_below_it(tmp_path):
    with pytest.raises(SetupError, match="buffer overflow detected"):
        Pgagroal(Path("/nonexistent/pgagroal"), server_account(), "session", tmp_path, MAX_PORT + 1, tmp_path, 5432,
                 {APP_ROLE: "x"}, SUPERUSER, 1)
    with pytest.raises(SetupError, match="TCP port of five digits"):
        Pgagroal(Path("/nonexistent/pgagroal"), server_account(), "transaction", tmp_path, 6432, "127.0.0.1",
                 15432, {APP_ROLE: "x"}, SUPERUSER, 1)
    first, second = lease_listen_port(), lease_listen_port()
    try:
        assert first.port <= MAX_PORT and second.port <= MAX_PORT and first.port != second.port
    finally:
        first.release()
        second.release()


# -- a real pgagroal --------------------------------------------------------------------------------------------------
def test_the_deployment_holds_pgagroal_its_tools_and_versions():
    """scripts/build-deployment trixie --with pgagroal: the executables patched to run here, and the manifest."""
    bindir, pooler = native_binaries(DEPLOYMENT)
    binaries = PgagroalBinaries(Path(pooler))
    binaries.check()
    assert binaries.version() == "1.6.0"
    built = manifest("trixie")
    assert built["extra_packages"] == ["pgagroal"] and built["pgagroal_version"] == "1.6.0"
    assert built["pgagroal_package"].startswith("1.6.0-")
    assert set(built["pgagroal_binaries"]) == {"pgagroal", "pgagroal-cli", "pgagroal-admin"}
    assert built["pgagroal_binaries"]["pgagroal-cli"] == str(binaries.cli)


def _group(pgid: int | None) -> list[int]:
    """Processes of a process group that still run."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pgid is not None:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                found.append(int(entry.name))
    return found


class Backend:
    """The module's PostgreSQL: its socket folder and port, the stack's logins, a superuser query over its socket."""

    def __init__(self, server: PostgresServer, logins: Logins, run_dir: Path, account: Account,
                 binaries: PgagroalBinaries):
        self.server, self.logins, self.run_dir, self.account, self.binaries = server, logins, run_dir, account, binaries

    @property
    def users(self) -> dict[str, str]:
        return {SUPERUSER: self.logins.superuser, APP_ROLE: self.logins.app}

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(host=str(self.server.socket_dir), port=self.server.port, user=SUPERUSER,
                             dbname=DATABASE, autocommit=True) as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else []

    def app_backends(self) -> set[int]:
        return {row[0] for row in self.query("SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = %s",
                                             APP_ROLE, DATABASE)}


@pytest.fixture(scope="module")
def backend(harness_config: HarnessConfig) -> Iterator[Backend]:
    bindir, pooler = native_binaries(DEPLOYMENT)  # not built: SetupError saying how to build it
    pg = find_binaries(Path(bindir), Path(manifest("trixie")["pgbouncer"]))
    account = server_account()
    run_dir = Path(tempfile.mkdtemp(prefix="tenant-harness-pgagroal-test-"))
    account.own(run_dir)
    os.chmod(run_dir, 0o700)
    lease = lease_port()
    server = PostgresServer(pg, account, run_dir / "data", run_dir, lease.port, run_dir / "postgres.log")
    try:
        prepare_data_dir(pg, account, harness_config.template_cache, run_dir, run_dir / "data")
        logins = Logins()
        server.start(harness_config.start_timeout)
        server.bootstrap(logins)
        probe = Backend(server, logins, run_dir, account, PgagroalBinaries(Path(pooler)))
        if not probe.query("SELECT 1 FROM pg_database WHERE datname = %s", DATABASE):  # the stack's database
            probe.query(f"CREATE DATABASE {DATABASE}")
            probe.query(f"GRANT CREATE, CONNECT ON DATABASE {DATABASE} TO {APP_ROLE}")
        probe.query(f"CREATE SCHEMA tenant_a AUTHORIZATION {APP_ROLE}")
        yield probe
    finally:
        server.stop()
        lease.release()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def start_pgagroal(backend: Backend, harness_config: HarnessConfig) -> Iterator[Callable[..., Pgagroal]]:
    """Start a pgagroal in front of the module's PostgreSQL (``pool_mode``, ``pool_size``, the team's
    ``settings``); every one is stopped after the test, and the test fails if a process or a backend of it
    outlives the stop."""
    started: list[tuple[Pgagroal, PortLease]] = []

    def start(pool_mode: str = "session", pool_size: int = 2, settings: tuple[str, ...] = (),
              extra: PoolerSettings | None = None, run: bool = True) -> Pgagroal:
        lease = lease_listen_port()
        part = Pgagroal(backend.binaries, backend.account, pool_mode, backend.run_dir, lease.port,
                        backend.server.socket_dir, backend.server.port, backend.users, SUPERUSER, pool_size,
                        extra if extra is not None else pgagroal_requested(None, settings),
                        name=f"pgagroal-{pool_mode}-{len(started)}")
        started.append((part, lease))
        if run:
            part.start(harness_config.start_timeout)
        return part

    yield start
    groups = []
    for part, lease in started:
        groups.append(part.pid)
        part.stop()
        lease.release()
    assert [pid for pgid in groups for pid in _group(pgid)] == []
    deadline = time.monotonic() + 5
    while backend.app_backends() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.app_backends() == set()


def connect(part: Pgagroal, backend: Backend, **options) -> psycopg.Connection:
    """A client of the route: the login role, its password (md5), the stack's database."""
    return psycopg.connect(host="127.0.0.1", port=part.port, user=APP_ROLE, password=backend.logins.app,
                           dbname=DATABASE, autocommit=True, connect_timeout=10, **options)


def one(conn: psycopg.Connection, sql: str):
    return conn.execute(sql).fetchone()


@pytest.mark.server
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_both_routes_answer_as_the_login_role_with_md5(start_pgagroal, backend, pool_mode):
    part = start_pgagroal(pool_mode)
    assert part.version == "1.6.0" and part.kind == "pgagroal" and part.pool_mode == pool_mode
    with connect(part, backend, require_auth="md5") as conn:  # libpq refuses any other method (not SCRAM: see pgagroal.py)
        assert one(conn, "SELECT current_user, current_database()") == (APP_ROLE, DATABASE)
    assert part.alive() and part.pid is not None and part.port <= MAX_PORT
    assert f"started on 127.0.0.1:{part.port}" in part.log_since(0) and part.log_tail(3)
    # Every server connection is prefilled: the state probe lands on each of them.
    assert part.idle_servers(APP_ROLE, DATABASE) == 2 and part.idle_servers(APP_ROLE, "other") == 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=part.port, user=APP_ROLE, password="wrong", dbname=DATABASE,
                        connect_timeout=5).close()
    # pgagroal 1.6.0's transaction pipeline keeps the server connection of a refused login "in use" for good
    # (measured): one fewer for clients, until the connections are dropped.
    time.sleep(0.2)
    assert part.idle_servers(APP_ROLE, DATABASE) == (2 if pool_mode == "session" else 1)
    part.drop_server_connections([DATABASE])
    assert part.idle_servers(APP_ROLE, DATABASE) == 2


@pytest.mark.server
def test_the_settings_it_runs_with_are_read_back(start_pgagroal):
    session = start_pgagroal("session", pool_size=3, settings=(
        "validation=foreground", "idle_timeout=60", "blocking_timeout=10", "disconnect_client=5",
        "track_prepared_statements=yes"))
    # pipeline auto with disconnect_client runs the session pipeline, as it would for the team
    assert session.settings() == {"pipeline": "session", "max_connections": "3", "validation": "foreground",
                                  "idle_timeout": "60", "blocking_timeout": "10", "disconnect_client": "5",
                                  "track_prepared_statements": "on"}
    transaction = start_pgagroal("transaction", pool_size=2, settings=("disconnect_client=5", "idle_timeout=0"))
    assert transaction.settings() == {"pipeline": "transaction", "max_connections": "2", "validation": "off",
                                      "idle_timeout": "0", "blocking_timeout": "30", "disconnect_client": "0"}
    assert start_pgagroal("session").settings()["pipeline"] == "performance"  # auto, nothing asks for more
    assert start_pgagroal("session", settings=("pipeline=session",)).settings()["pipeline"] == "session"


@pytest.mark.server
def test_a_setting_the_binary_does_not_know_or_take_is_refused_before_anything_starts(backend):
    # Names and values the parser admits are given here as they are: another release may lack a name.
    unknown = PoolerSettings({"idle_timeout": "5", "no_such_setting": "1"},
                             {"idle_timeout": "--pgagroal-set", "no_such_setting": "pgagroal.conf:3"})
    with pytest.raises(UsageError) as refused:
        refuse_unknown_pgagroal_settings(unknown, backend.binaries, account=backend.account)
    text = str(refused.value)
    assert "did not take the setting(s) no_such_setting" in text.splitlines()[0]
    assert "no_such_setting = 1 (from pgagroal.conf:3): unknown to it" in text
    assert "Unknown key <no_such_setting> with value <1>" in text  # its own words
    misread = PoolerSettings({"validation": "bogus", "max_connections": "99999", "idle_timeout": "2m"},
                             {"validation": "x", "max_connections": "x", "idle_timeout": "x"})
    with pytest.raises(UsageError) as refused:
        refuse_unknown_pgagroal_settings(misread, backend.binaries, account=backend.account)
    text = str(refused.value)
    assert "idle_timeout = 2m (from x): a value it cannot read: it runs with its default" in text
    assert "validation = bogus (from x): it runs with off" in text
    assert "max_connections = 99999 (from x): it runs with 10000" in text
    refuse_unknown_pgagroal_settings(pgagroal_requested(None, ["pipeline=transaction", "idle_timeout=0"]),
                                     backend.binaries, account=backend.account)
    refuse_unknown_pgagroal_settings(pgagroal_requested(None, ["validation=background", "disconnect_client=5"]),
                                     backend.binaries, account=backend.account)
    assert not [p for p in Path(tempfile.gettempdir()).glob("tenant-harness-pgagroal-probe-*")]


@pytest.mark.server
def test_a_setting_it_did_not_take_at_start_is_a_usage_error_naming_it_and_nothing_is_left(start_pgagroal):
    part = start_pgagroal(extra=PoolerSettings({"no_such_setting": "1"}, {"no_such_setting": "--pgagroal-set"}),
                          run=False)
    with pytest.raises(UsageError, match=r"did not take the setting\(s\) no_such_setting"):
        part.start(10)
    assert not part.alive() and _group(part.pid) == []


@pytest.mark.server
def test_a_committed_set_search_path_reaches_another_client_on_the_transaction_pipeline(start_pgagroal, backend):
    part = start_pgagroal("transaction", pool_size=1)
    with connect(part, backend) as first, connect(part, backend) as second:
        first.execute("BEGIN")
        pid = one(first, "SELECT pg_backend_pid()")[0]
        first.execute("SET search_path = tenant_a")
        first.execute("COMMIT")
        assert one(second, "SELECT pg_backend_pid()")[0] == pid  # the one server connection, between transactions
        assert one(second, "SHOW search_path")[0] == "tenant_a"
        # and startup options are not the client's: the connection was opened by pgagroal (prefill)
    with connect(part, backend, options="-c search_path=tenant_a", application_name="tenant_b_app") as third:
        assert one(third, "SELECT current_setting('application_name')")[0] == "pgagroal"


@pytest.mark.server
def test_the_session_route_resets_what_a_client_set_before_the_next_one(start_pgagroal, backend):
    part = start_pgagroal("session", pool_size=1)
    with connect(part, backend) as first:
        pid = one(first, "SELECT pg_backend_pid()")[0]
        first.execute("SET search_path = tenant_a")
        first.execute("SELECT set_config('app.tenant', 'a', false)")
    with connect(part, backend) as second:
        assert one(second, "SELECT pg_backend_pid()")[0] == pid  # the same pooled backend, after DISCARD ALL
        assert one(second, "SHOW search_path")[0] == '"$user", public'
        assert one(second, "SELECT coalesce(current_setting('app.tenant', true), '')")[0] == ""


@pytest.mark.server
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_drop_server_connections_leaves_no_backend_of_the_login_role_it_had(start_pgagroal, backend, pool_mode):
    other = start_pgagroal(pool_mode, pool_size=2)  # the stack's other pooler comes in through the same socket
    others = backend.app_backends()
    part = start_pgagroal(pool_mode, pool_size=2)
    clients = [connect(part, backend) for _ in range(2)]
    for client in clients:
        client.execute("SET search_path = tenant_a")
    mine = backend.app_backends() - others
    assert len(mine) == 2
    started = time.monotonic()
    part.drop_server_connections([DATABASE], timeout=10)
    assert time.monotonic() - started < 2
    after = backend.app_backends()
    assert mine.isdisjoint(after)  # none of its backends is left
    assert others <= after  # the other pooler's are left alone
    with connect(other, backend) as still:
        assert one(still, "SELECT 1") == (1,)
    for client in clients:  # its clients are cut, as PgBouncer's KILL cuts them
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
        client.close()
    with connect(part, backend) as fresh:  # it accepts a client at once, on a fresh server connection
        assert one(fresh, "SHOW search_path")[0] == '"$user", public'
        assert one(fresh, "SELECT pg_backend_pid()")[0] not in mine


@pytest.mark.server
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_restart_keeps_the_port_and_cuts_the_clients_before_it(start_pgagroal, backend, pool_mode):
    part = start_pgagroal(pool_mode)
    client = connect(part, backend)
    one(client, "SELECT 1")
    pid, port = part.pid, part.port
    started = time.monotonic()
    part.restart(10)
    assert time.monotonic() - started < 2
    assert part.pid != pid and part.port == port and _group(pid) == []
    with pytest.raises(psycopg.OperationalError):
        client.execute("SELECT 1")
    client.close()
    with connect(part, backend) as fresh:
        assert one(fresh, "SELECT current_user")[0] == APP_ROLE
    part.stop()
    with pytest.raises(RuntimeError, match="was stopped"):
        part.restart(1)


@pytest.mark.server
def test_its_master_key_is_the_accounts_and_is_kept(start_pgagroal, backend):
    start_pgagroal()
    key = master_key_path(backend.account)
    assert key.parent.parent == Path(os.path.expanduser(f"~{backend.account.name}"))
    stamp = key.stat().st_mtime_ns
    start_pgagroal()  # a second vault: the same key, not a new one
    assert key.stat().st_mtime_ns == stamp and oct(key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.server
def test_a_start_that_times_out_shows_what_it_said(start_pgagroal, backend):
    part = start_pgagroal(run=False)
    part.server_host = str(backend.run_dir / "nowhere")  # no PostgreSQL there: its prefill never gets a connection
    with pytest.raises(StartupTimeout) as slow:
        part.start(1.5)
    text = str(slow.value)
    assert f"{part.name} on port {part.port} was not ready after 1.5s" in text
    assert "prefilled server connections" in text and "log tail" in text

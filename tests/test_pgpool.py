"""The Pgpool-II part (harness.stack.pgpool): the team's settings, then a real Pgpool-II on a real PostgreSQL.

Reading settings needs no server. Everything else runs Debian's pgpool (``apt-get install pgpool2``) in front
of a throwaway PostgreSQL of this module, each test with its own Pgpool-II on a leased port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest

from harness.config import HarnessConfig, resolve_config
from harness.errors import UsageError
from harness.pooler_settings import PoolerSettings, requested_for
from harness.pooler_settings.pgpool import (PGPOOL, PGPOOL_CARRIED, PGPOOL_KEPT, PGPOOL_REPORTED, from_pgpool_file,
                                            parse_bool, parse_pgpool_assignment, pgpool_requested, read_pgpool_conf,
                                            split_pgpool_assignments)
from harness.stack.account import Account, server_account
from harness.stack.binaries import find_binaries
from harness.stack.pgpool import (NEVER_CACHED, Pgpool, find_pgpool, pgpool_version, probe_pgpool_settings,
                                  refuse_unknown_pgpool_settings, render_pgpool_conf)
from harness.stack.ports import PortLease, lease_port
from harness.stack.postgres import APP_ROLE, DATABASE, SUPERUSER, Logins, PostgresServer, prepare_data_dir
from harness.stack.process import pid_alive

PRODUCTION_CONF = """\
# a production pgpool.conf
backend_clustering_mode = 'streaming_replication'
listen_addresses = '*'
port = 9999
backend_hostname0 = 'db1.internal'
backend_port0 = 5432
backend_hostname1 = 'db2.internal'
num_init_children = 32
sr_check_user = 'pgpool'
log_statement = on
max_pool 2                      # no "=": Pgpool-II reads it too
reset_query_list = 'ABORT; DISCARD ALL'
child_life_time = 5min
connection_cache = on
include = 'pooling.conf'
"""
POOLING_CONF = """\
reset_query_list = 'ABORT'   # what our tenancy layer relied on
client_idle_limit = '30'
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- the team's settings, no server -----------------------------------------------------------------------------
def test_a_production_conf_carries_over_what_clients_see_and_ignores_the_rest(tmp_path):
    write(tmp_path / "pooling.conf", POOLING_CONF)
    settings = from_pgpool_file(write(tmp_path / "pgpool.conf", PRODUCTION_CONF))
    # The include is read in place and its later lines win; the order is the order of application.
    assert settings.values == {"max_pool": "2", "child_life_time": "5min", "connection_cache": "on",
                               "reset_query_list": "ABORT", "client_idle_limit": "30"}
    assert settings.origins["reset_query_list"] == f"{tmp_path / 'pooling.conf'}:1"
    assert settings.origins["max_pool"] == f"{tmp_path / 'pgpool.conf'}:11"
    # The harness's own (indexed backend names too), then a count of the others.
    assert settings.ignored[:6] == ("backend_clustering_mode", "listen_addresses", "port", "backend_hostname0",
                                    "backend_port0", "backend_hostname1")
    assert "num_init_children" in settings.ignored
    assert settings.ignored[-1] == "2 more that do not decide what a pooled connection carries"
    assert "carried over: max_pool = 2" in settings.describe()


def test_the_conf_reader_follows_pgpools_lexer(tmp_path):
    found = read_pgpool_conf(write(tmp_path / "p.conf", "a = 'x # y'  # comment\nb 7\nc=on\nd = '1 min'\n"
                                                       "e = 'back\\slash'\na = 'again'\n"))
    assert {name: value for name, (value, _) in found.items()} == {
        "b": "7", "c": "on", "d": "1 min", "e": "back\\slash", "a": "again"}
    assert list(found) == ["b", "c", "d", "e", "a"]  # a later line wins, and is applied last
    for bad in ("reset_query_list = ABORT; DISCARD ALL\n", "max_pool = 4 5\n", "x = 'unterminated\n", "= 3\n"):
        with pytest.raises(UsageError, match="not a line Pgpool-II reads"):
            read_pgpool_conf(write(tmp_path / "bad.conf", bad))
    write(tmp_path / "loop.conf", "include = 'loop.conf'\n")
    with pytest.raises(UsageError, match="nests more than"):
        read_pgpool_conf(tmp_path / "loop.conf")


def test_a_misspelled_carried_name_is_refused_since_pgpool_would_ignore_it(tmp_path):
    with pytest.raises(UsageError) as refused:
        from_pgpool_file(write(tmp_path / "p.conf", "Reset_Query_List = 'ABORT'\nconection_cache = off\n"))
    text = str(refused.value)
    assert "Reset_Query_List, conection_cache is not a Pgpool-II setting" in text
    assert "did you mean reset_query_list?" in text and "did you mean connection_cache?" in text
    with pytest.raises(ValueError, match="did you mean reset_query_list"):
        parse_pgpool_assignment("RESET_QUERY_LIST=ABORT")


def test_values_pgpool_would_misread_are_refused(tmp_path):
    # Pgpool-II 4.3 runs "connection_cache = maybe" as on, and "max_pool = 0" serves nobody.
    for item, message in (("connection_cache=maybe", "not a boolean"), ("max_pool=0", "serve no client"),
                          ("max_pool=four", "not a whole number"), ("child_life_time=soon", "not a time"),
                          ("reset_query_list=SET search_path = 'public'", "quote or a backslash")):
        with pytest.raises(ValueError, match=message):
            parse_pgpool_assignment(item)
    with pytest.raises(UsageError, match=r"p.conf:1: connection_cache = 'maybe' is not a boolean"):
        from_pgpool_file(write(tmp_path / "p.conf", "connection_cache = maybe\n"))
    assert [parse_bool(word) for word in ("on", "OFF", "t", "yes", "0", "of", "o", "maybe", "")] == [
        True, False, True, True, False, False, None, None, None]
    assert parse_pgpool_assignment("connection_cache=false") == ("connection_cache", "off")
    assert parse_pgpool_assignment("reset_query_list='ABORT'") == ("reset_query_list", "ABORT")


def test_pgpool_set_takes_carried_names_only_and_wins_over_the_file(tmp_path):
    with pytest.raises(ValueError, match="the harness keeps its own"):
        parse_pgpool_assignment("num_init_children=5")
    with pytest.raises(ValueError, match="not a Pgpool-II setting the harness carries over"):
        parse_pgpool_assignment("no_such_setting=1")
    items = "reset_query_list=ABORT,cache_unsafe_memqcache_table_list=a.t,b.t,max_pool=1"
    assert split_pgpool_assignments(items) == (
        "reset_query_list=ABORT", "cache_unsafe_memqcache_table_list=a.t,b.t", "max_pool=1")
    write(tmp_path / "pooling.conf", POOLING_CONF)
    settings = pgpool_requested(write(tmp_path / "pgpool.conf", PRODUCTION_CONF),
                                ["reset_query_list=ABORT; DISCARD ALL"])
    assert settings.values["reset_query_list"] == "ABORT; DISCARD ALL"
    assert settings.origins["reset_query_list"] == "--pgpool-set"
    assert list(settings.values)[-1] == "reset_query_list"
    with pytest.raises(UsageError, match="--pgpool-set port=1"):
        pgpool_requested(None, ["port=1"])


def test_the_configuration_reads_the_options_as_pgpool_would(tmp_path):
    # HARNESS_PGPOOL_*: a table list keeps its commas, a quoted value loses its quotes, the file's include is
    # read relative to it; the deployment that runs Pgpool-II gets them all, in the order they are applied.
    write(tmp_path / "pooling.conf", POOLING_CONF)
    conf = write(tmp_path / "pgpool.conf", PRODUCTION_CONF)
    config = resolve_config({"deployment": "bookworm-pgpool"}, cwd=tmp_path, env={
        "HARNESS_PGPOOL_CONFIG": str(conf),
        "HARNESS_PGPOOL_SET": "cache_unsafe_memqcache_table_list=a.t,b.t,reset_query_list='ABORT; DISCARD ALL'"})
    assert config.pgpool_set == ("cache_unsafe_memqcache_table_list=a.t,b.t", "reset_query_list=ABORT; DISCARD ALL")
    settings = requested_for(config, "pgpool")
    assert list(settings.values)[-2:] == ["cache_unsafe_memqcache_table_list", "reset_query_list"]
    assert settings.values["reset_query_list"] == "ABORT; DISCARD ALL"
    assert settings.origins["client_idle_limit"] == f"{tmp_path / 'pooling.conf'}:2"


def test_the_lists_do_not_overlap_and_the_team_lines_come_last():
    assert not set(PGPOOL_CARRIED) & set(PGPOOL_KEPT)
    assert set(PGPOOL_REPORTED) - {"num_init_children"} <= set(PGPOOL_CARRIED)
    conf = render_pgpool_conf(folder="/run/x", listen_addr="127.0.0.1", listen_port=7000, server_host="127.0.0.1",
                              server_port=7001, pool_size=12, extra={"max_pool": "1", "reset_query_list": "ABORT"})
    lines = conf.splitlines()
    assert lines.index("max_pool = '1'") > lines.index("connection_cache = on")
    assert lines[-1] == "reset_query_list = 'ABORT'"
    assert "num_init_children = 12" in lines and "backend_port0 = 7001" in lines and "port = 7000" in lines


# -- a real Pgpool-II -----------------------------------------------------------------------------------------------
class Backend:
    """The module's PostgreSQL: its port, the stack's logins, a superuser query over its socket."""

    def __init__(self, server: PostgresServer, logins: Logins, run_dir: Path, account: Account, database: str):
        self.server, self.logins, self.run_dir = server, logins, run_dir
        self.account, self.database = account, database

    @property
    def users(self) -> dict[str, str]:
        return {SUPERUSER: self.logins.superuser, APP_ROLE: self.logins.app}

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(host=str(self.server.socket_dir), port=self.server.port, user=SUPERUSER,
                             dbname=self.database, autocommit=True) as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else []

    def app_backends(self) -> list[int]:
        """Backends of the login role on the pooled database (every one through a Pgpool-II of this module)."""
        return [row[0] for row in self.query(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = %s", APP_ROLE, self.database)]


@pytest.fixture(scope="module")
def backend(harness_config: HarnessConfig) -> Iterator[Backend]:
    account = server_account()
    binaries = find_binaries(harness_config.pg_bindir, harness_config.pgbouncer)
    run_dir = Path(tempfile.mkdtemp(prefix="tenant-harness-pgpool-test-"))
    account.own(run_dir)
    os.chmod(run_dir, 0o700)
    lease = lease_port()
    server = PostgresServer(binaries, account, run_dir / "data", run_dir, lease.port, run_dir / "postgres.log")
    try:
        prepare_data_dir(binaries, account, harness_config.template_cache, run_dir, run_dir / "data")
        logins = Logins()
        server.start(harness_config.start_timeout)
        server.bootstrap(logins)
        # Pgpool-II never caches connections to postgres: the pooled database must be another one.
        database = DATABASE if DATABASE not in NEVER_CACHED else "app"
        probe = Backend(server, logins, run_dir, account, DATABASE)
        if database != DATABASE:
            probe.query(f"CREATE DATABASE {database}")
            probe.query(f"GRANT CREATE, CONNECT ON DATABASE {database} TO {APP_ROLE}")
        probe.database = database
        probe.query(f"CREATE SCHEMA tenant_a AUTHORIZATION {APP_ROLE}")
        probe.query(f"CREATE SCHEMA tenant_b AUTHORIZATION {APP_ROLE}")
        yield probe
    finally:
        server.stop()
        lease.release()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def start_pgpool(backend: Backend, harness_config: HarnessConfig) -> Iterator[Callable[..., Pgpool]]:
    """Start a Pgpool-II in front of the module's PostgreSQL (``pool_size`` children, the team's ``settings``);
    every one is stopped after the test, and the test fails if a backend of it outlives the stop."""
    started: list[tuple[Pgpool, PortLease]] = []

    def start(pool_size: int = 2, settings: tuple[str, ...] = (), run: bool = True) -> Pgpool:
        lease = lease_port()
        part = Pgpool(find_pgpool(), backend.account, backend.run_dir, lease.port, backend.server.port,
                      backend.users, SUPERUSER, pool_size, pgpool_requested(None, settings),
                      name=f"pgpool-{len(started)}")
        started.append((part, lease))
        if run:
            part.start(harness_config.start_timeout)
        return part

    yield start
    for part, lease in started:
        part.stop()
        lease.release()
        shutil.rmtree(part.folder, ignore_errors=True)
    deadline = time.monotonic() + 5
    while backend.app_backends() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.app_backends() == []


def connect(part: Pgpool, backend: Backend, **options) -> psycopg.Connection:
    """A client of the route: the login role, its password (md5), the pooled database."""
    return psycopg.connect(host="127.0.0.1", port=part.port, user=APP_ROLE, password=backend.logins.app,
                           dbname=backend.database, autocommit=True, connect_timeout=5, **options)


def one(conn: psycopg.Connection, sql: str):
    return conn.execute(sql).fetchone()


def _group(pgid: int) -> list[int]:
    """Processes of a process group that still run."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                found.append(int(entry.name))
    return found


def _shared_memory_of(pids: list[int]) -> list[str]:
    """System V shared memory segments created by any of ``pids`` that still exist."""
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return [row.split()[1] for row in rows if int(row.split()[4]) in pids]


@pytest.mark.server
def test_the_route_answers_as_the_login_role_with_md5(start_pgpool, backend):
    part = start_pgpool()
    assert part.version == pgpool_version(part.binary) and part.version.startswith("4.")
    with connect(part, backend, require_auth="md5") as conn:  # libpq refuses any other method (not SCRAM: see pgpool.py)
        assert one(conn, "SELECT current_user, current_database()") == (APP_ROLE, backend.database)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=part.port, user=APP_ROLE, password="wrong", dbname=backend.database,
                        connect_timeout=5).close()
    assert part.alive() and part.pid is not None and part.kind == "pgpool" and part.pool_mode == "session"
    assert "successfully started" in part.log_since(0) and part.log_tail(3)


@pytest.mark.server
def test_the_settings_it_runs_with_are_read_back(start_pgpool):
    part = start_pgpool(pool_size=3, settings=("reset_query_list=ABORT", "child_life_time=5min", "max_pool=2",
                                               "connection_life_time=30", "connection_cache=true"))
    assert part.settings() == {"reset_query_list": "ABORT", "connection_cache": "on", "max_pool": "2",
                               "num_init_children": "3", "child_life_time": "5min", "connection_life_time": "30s",
                               "child_max_connections": "0", "client_idle_limit": "0", "memory_cache_enabled": "off"}
    # Every carried name is a setting of this Pgpool-II, and none of its own is taken for a misspelling of one.
    known = {row["item"] for row in part.query("PGPOOL SHOW ALL")}
    assert set(PGPOOL_CARRIED) <= known
    assert [name for name in known if PGPOOL.misspelled(name)] == []


@pytest.mark.server
def test_a_setting_the_binary_does_not_know_or_take_is_refused_before_anything_starts(backend):
    binary = find_pgpool()
    # A name another release lacks (the parser admits carried names only, so it is given here as is).
    unknown = PoolerSettings({"child_life_time": "5min", "no_such_setting": "1"},
                             {"child_life_time": "--pgpool-set", "no_such_setting": "pgpool.conf:3"})
    with pytest.raises(UsageError) as refused:
        refuse_unknown_pgpool_settings(unknown, binary, account=backend.account)
    text = str(refused.value)
    assert "refused the setting(s) no_such_setting" in text
    assert "no_such_setting (from pgpool.conf:3): unknown to this Pgpool-II" in text
    assert 'unrecognized configuration parameter "no_such_setting"' in text  # its own words
    assert "child_life_time" not in text.split("\n")[0]
    # A value it would not take: FATAL at start, so refused here.
    too_long = pgpool_requested(None, ["child_life_time=99999999999"])
    with pytest.raises(UsageError, match='invalid value for parameter "child_life_time"'):
        refuse_unknown_pgpool_settings(too_long, binary, account=backend.account)
    refuse_unknown_pgpool_settings(pgpool_requested(None, ["reset_query_list=ABORT", "client_idle_limit=1h"]),
                                   binary, account=backend.account)
    # The probe starts nothing: no pgpool is left of it.
    assert "could not read pid file" in probe_pgpool_settings({}, binary, backend.account)


@pytest.mark.server
def test_a_value_refused_at_start_is_a_usage_error_naming_it_and_nothing_is_left(start_pgpool):
    part = start_pgpool(settings=("child_life_time=99999999999",), run=False)
    with pytest.raises(UsageError) as refused:
        part.start(5)
    assert "refused the setting(s) child_life_time" in str(refused.value)
    assert "(from --pgpool-set)" in str(refused.value) and "Value exceeds allowed range" not in str(refused.value)
    assert 'FATAL:  invalid value for parameter "child_life_time"' in str(refused.value)
    assert not part.alive() and _group(part.pid) == []


@pytest.mark.server
@pytest.mark.parametrize(("settings", "carried"), [((), False), (("reset_query_list=ABORT",), True)],
                         ids=["default reset", "ABORT only"])
def test_a_session_set_reaches_the_next_client_of_the_child_only_without_discard_all(
        start_pgpool, backend, settings, carried):
    part = start_pgpool(pool_size=1, settings=settings)
    with connect(part, backend) as first:
        pid = one(first, "SELECT pg_backend_pid()")[0]
        first.execute("SET search_path = tenant_a")
    with connect(part, backend) as second:
        assert one(second, "SELECT pg_backend_pid()")[0] == pid  # the same pooled backend
        assert one(second, "SHOW search_path")[0] == ("tenant_a" if carried else '"$user", public')


@pytest.mark.server
def test_an_empty_reset_list_hands_the_next_client_an_open_transaction(start_pgpool, backend):
    part = start_pgpool(pool_size=1, settings=("reset_query_list=",))
    first = connect(part, backend)
    first.execute("BEGIN")
    first.execute("SET LOCAL statement_timeout = 1234")
    xid = one(first, "SELECT pg_current_xact_id()")[0]
    first.close()  # no COMMIT, no ROLLBACK
    with connect(part, backend) as second:
        assert one(second, "SELECT pg_current_xact_id_if_assigned(), current_setting('statement_timeout')") == (
            xid, "1234ms")
        second.execute("ROLLBACK")


@pytest.mark.server
def test_startup_options_reach_the_backend_and_never_a_client_without_them(start_pgpool, backend):
    part = start_pgpool(pool_size=1, settings=("reset_query_list=ABORT",))
    with connect(part, backend, options="-c search_path=tenant_a") as with_options:
        pid = one(with_options, "SELECT pg_backend_pid()")[0]
        assert one(with_options, "SHOW search_path")[0] == "tenant_a"
    with connect(part, backend) as plain:  # another startup packet: a fresh backend
        assert one(plain, "SELECT pg_backend_pid(), current_setting('search_path')") != (pid, "tenant_a")
        assert one(plain, "SHOW search_path")[0] == '"$user", public'


@pytest.mark.server
def test_a_backend_is_shared_between_libpq_drivers_not_with_asyncpg(start_pgpool, backend):
    psycopg2 = pytest.importorskip("psycopg2")
    asyncpg = pytest.importorskip("asyncpg")
    part = start_pgpool(pool_size=1, settings=("reset_query_list=ABORT",))
    with connect(part, backend) as first:
        first.execute("SET search_path = tenant_a")
        pid = one(first, "SELECT pg_backend_pid()")[0]
    classic = psycopg2.connect(host="127.0.0.1", port=part.port, user=APP_ROLE, password=backend.logins.app,
                               dbname=backend.database)
    try:
        cursor = classic.cursor()
        cursor.execute("SELECT pg_backend_pid(), current_setting('search_path')")
        assert cursor.fetchone() == (pid, "tenant_a")  # the same startup packet: the same backend
    finally:
        classic.close()

    async def through_asyncpg():
        conn = await asyncpg.connect(host="127.0.0.1", port=part.port, user=APP_ROLE,
                                     password=backend.logins.app, database=backend.database)
        try:
            return tuple(await conn.fetchrow("SELECT pg_backend_pid(), current_setting('search_path')"))
        finally:
            await conn.close()

    assert asyncio.run(through_asyncpg()) != (pid, "tenant_a")
    with connect(part, backend) as again:  # the cached backend was closed for asyncpg's
        assert one(again, "SELECT pg_backend_pid(), current_setting('search_path')")[1] == '"$user", public'


@pytest.mark.server
def test_the_query_cache_serves_one_tenants_rows_to_another(start_pgpool, backend):
    for schema in ("tenant_a", "tenant_b"):
        backend.query(f"CREATE TABLE IF NOT EXISTS {schema}.product (owner text)")
        backend.query(f"TRUNCATE {schema}.product")
        backend.query(f"INSERT INTO {schema}.product VALUES ('{schema}')")
        backend.query(f"GRANT SELECT ON {schema}.product TO {APP_ROLE}")
    part = start_pgpool(settings=("memory_cache_enabled=on",))
    seen = {}
    for schema in ("tenant_a", "tenant_b"):
        with connect(part, backend) as conn:
            conn.execute(f"SET search_path = {schema}")
            seen[schema] = one(conn, "SELECT owner FROM product")[0]
    assert seen == {"tenant_a": "tenant_a", "tenant_b": "tenant_a"}


@pytest.mark.server
def test_idle_servers_clients_at_once_reach_every_cached_backend(start_pgpool, backend):
    part = start_pgpool(pool_size=3, settings=("reset_query_list=ABORT",))
    assert part.idle_servers(APP_ROLE, backend.database) == 3
    assert part.idle_servers(APP_ROLE, "postgres") == 0  # never cached
    clients = [connect(part, backend) for _ in range(3)]
    for conn in clients:
        conn.execute("SET search_path = tenant_b")
    for conn in clients:
        conn.close()
    cached = set(backend.app_backends())
    assert len(cached) == 3
    probe = [connect(part, backend) for _ in range(part.idle_servers(APP_ROLE, backend.database))]
    try:
        for conn in probe:
            conn.execute("BEGIN")
        assert {one(conn, "SELECT pg_backend_pid()")[0] for conn in probe} == cached
        assert {one(conn, "SHOW search_path")[0] for conn in probe} == {"tenant_b"}
    finally:
        for conn in probe:
            conn.close()


@pytest.mark.server
def test_dropping_server_connections_leaves_no_backend_and_the_next_clients_work(start_pgpool, backend):
    part = start_pgpool(pool_size=4, settings=("reset_query_list=ABORT",))
    clients = [connect(part, backend) for _ in range(4)]
    for conn in clients:
        conn.execute("SET search_path = tenant_a")
    for conn in clients[1:]:
        conn.close()
    held = clients[0]  # a client still connected: its backend goes too, as with PgBouncer's KILL
    before = set(backend.app_backends())
    assert len(before) == 4
    started = time.monotonic()
    part.drop_server_connections([backend.database])
    assert time.monotonic() - started < 2
    assert backend.app_backends() == []
    with pytest.raises(psycopg.Error, match="EOF encountered with backend"):  # Pgpool-II's words
        held.execute("SELECT 1")
    held.close()
    after = [connect(part, backend) for _ in range(4)]  # every child, at once: no error, nothing carried
    try:
        assert {one(conn, "SHOW search_path")[0] for conn in after} == {'"$user", public'}
        assert not {one(conn, "SELECT pg_backend_pid()")[0] for conn in after} & before
    finally:
        for conn in after:
            conn.close()
    assert part.alive()
    part.drop_server_connections([backend.database])  # nothing cached to a database: nothing to do
    part.drop_server_connections(["other"])


@pytest.mark.server
def test_restart_keeps_the_port_and_cuts_the_clients_connected_before(start_pgpool, backend):
    part = start_pgpool(pool_size=2)
    port, old_pid = part.port, part.pid
    before = connect(part, backend)
    one(before, "SELECT 1")
    part.restart()
    assert part.port == port and part.pid != old_pid and not pid_alive(old_pid)
    with pytest.raises(psycopg.Error):
        before.execute("SELECT 1")
    before.close()
    with connect(part, backend) as after:
        assert one(after, "SELECT current_user")[0] == APP_ROLE


@pytest.mark.server
def test_stop_leaves_no_process_backend_or_shared_memory(start_pgpool, backend):
    part = start_pgpool(pool_size=3)
    clients = [connect(part, backend) for _ in range(3)]
    for conn in clients:
        conn.close()
    pid = part.pid
    group = _group(pid)
    assert len(group) >= 3 + 1  # the main process and its children
    segments = _shared_memory_of(group)  # the main process's, the PCP process's
    assert len(segments) >= 2
    part.stop()
    part.stop()  # twice is fine
    assert _group(pid) == [] and not part.alive()
    assert [segment for segment in _shared_memory_of(group) if segment in segments] == []
    with pytest.raises(RuntimeError, match="was stopped"):
        part.restart()

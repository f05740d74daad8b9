"""The docker backend on a real Docker engine, with the images of scripts/build-images.

The stack tests of the native backend run here against a docker stack
(imported below, so they use this module's ``stack``); then what only the
docker backend has: labels, a private network, cleanup of containers and
networks on teardown, Ctrl-C, SIGTERM and after a SIGKILL, clear errors, and
the same verdicts as the native backend.

`make test` runs this module (marker ``docker``) when a Docker engine answers,
after building the images; HARNESS_POSTGRES_IMAGE / HARNESS_PGBOUNCER_IMAGE
name them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from harness.config import resolve_config, without_deployment_settings
from harness.deployments import DEPLOYMENTS, DeploymentFacts, POOLERS
from harness.errors import SetupError, StartupTimeout
from harness.stack import ROUTES, choose_backend, start_stack
from harness.stack.containers import LABEL_OWNER, LABEL_PART, LABEL_RUN, docker_client, remove_abandoned_runs
from harness.stack.deployment_builds import docker_images
from harness.stack.stack import Missing
from harness.stack.postgres import DATABASE
from harness.workload.expectations import required_verdict
from harness.workload.named import NAMED_SCENARIOS
from harness.tenancy.strategy import BUILTINS
from test_stack import connect
from test_stack import (  # noqa: F401 - collected here, against the docker stack
    test_each_pgbouncer_reports_its_pool_mode,
    test_each_route_answers_a_query_as_the_login_role,
    test_login_role_is_not_a_superuser,
    test_session_pooling_and_direct_do_not_leak_it,
    test_stack_exposes_versions_and_a_superuser_url,
    test_transaction_pooling_leaks_a_session_set_to_another_client_unless_pgbouncer_tracks_it,
)

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docker_config(tmp_path_factory):
    return resolve_config({"backend": "docker"}, cwd=tmp_path_factory.mktemp("docker-config"))


@pytest.fixture(scope="module")
def stack(docker_config):
    with start_stack(docker_config) as running:
        yield running


@pytest.fixture(scope="module")
def client():
    engine = docker_client()
    yield engine
    engine.close()


def labelled(client, label: str) -> tuple[list, list]:
    """Containers (running or not) and networks carrying ``label`` (``key`` or ``key=value``)."""
    return (client.containers.list(all=True, filters={"label": label}),
            client.networks.list(filters={"label": label}))


def labelled_volumes(client, label: str) -> list:
    return client.volumes.list(filters={"label": label})


def test_the_stack_is_three_labelled_containers_on_a_private_network(stack, client, docker_config):
    containers, networks = labelled(client, f"{LABEL_RUN}={stack.run_id}")
    assert sorted(c.labels[LABEL_PART] for c in containers) == ["pgbouncer-session", "pgbouncer-transaction",
                                                                 "postgres"]
    assert len(networks) == 1 and networks[0].name == f"tenant-harness-{stack.run_id}"
    for container in containers:
        assert container.labels[LABEL_OWNER].endswith(f":{os.getpid()}")
        assert list(container.attrs["NetworkSettings"]["Networks"]) == [networks[0].name]
        for bindings in container.attrs["HostConfig"]["PortBindings"].values():
            assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    by_part = {c.labels[LABEL_PART]: c for c in containers}
    postgres = by_part["postgres"].attrs["Config"]
    assert postgres["Image"] == docker_config.postgres_image
    assert {"POSTGRES_USER=harness", f"POSTGRES_DB={DATABASE}"} <= set(postgres["Env"])
    for mode in ("session", "transaction"):
        bouncer = by_part[f"pgbouncer-{mode}"].attrs["Config"]
        # The harness's own configuration and an explicit command, not the image's environment.
        assert bouncer["Image"] == docker_config.pgbouncer_image
        assert bouncer["Entrypoint"] == ["pgbouncer"]
        assert bouncer["Cmd"] == ["/etc/tenant-harness/pgbouncer.ini"]
        assert bouncer["User"] not in ("", "root", "0")


def test_clients_authenticate_with_scram(stack):
    url = stack.superuser_url
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=url.database) as conn:
        assert conn.execute("SELECT current_setting('password_encryption')").fetchone() == ("scram-sha-256",)
        secret = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").fetchone()[0]
        assert secret.startswith("SCRAM-SHA-256$")
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed|password authentication failed"):
        route = stack.url("transaction")
        psycopg.connect(host=route.host, port=route.port, user="app", password="wrong", dbname="postgres")


def test_teardown_removes_every_container_and_the_network(docker_config, client):
    running = start_stack(docker_config)
    label = f"{LABEL_RUN}={running.run_id}"
    containers, networks = labelled(client, label)
    assert len(containers) == 3 and len(networks) == 1
    assert all(c.status == "running" for c in containers)
    volumes = {m["Name"] for c in containers for m in c.attrs["Mounts"] if m["Type"] == "volume"}
    running.close()
    assert labelled(client, label) == ([], [])
    remaining = {v.name for v in client.volumes.list()}
    assert not volumes & remaining, "the data volume of the PostgreSQL container was left behind"
    running.close()  # twice is harmless


def test_a_start_that_times_out_removes_what_it_started_and_shows_the_logs(client, tmp_path):
    config = resolve_config({"backend": "docker", "start_timeout": 0.05}, cwd=tmp_path)
    owner = f"{LABEL_OWNER}"
    before = {c.id for c in labelled(client, owner)[0]}
    with pytest.raises(StartupTimeout) as caught:
        start_stack(config)
    message = str(caught.value)
    assert "PostgreSQL container" in message and "last observation" in message and "docker logs" in message
    containers, networks = labelled(client, owner)
    assert {c.id for c in containers} <= before
    assert not [n for n in networks if n.attrs["Labels"][LABEL_OWNER].endswith(f":{os.getpid()}")]


def test_a_missing_image_is_a_clear_error_before_anything_starts(client, tmp_path):
    config = resolve_config({"backend": "docker", "pgbouncer_image": "tenant-harness/no-such-image:never"},
                            cwd=tmp_path)
    before = labelled(client, LABEL_OWNER)
    with pytest.raises(SetupError) as caught:
        start_stack(config)
    assert "tenant-harness/no-such-image:never" in str(caught.value)
    assert "scripts/build-images" in str(caught.value)
    after = labelled(client, LABEL_OWNER)
    assert [c.id for c in after[0]] == [c.id for c in before[0]]
    assert [n.id for n in after[1]] == [n.id for n in before[1]]


def test_auto_picks_docker_without_native_binaries_and_explains_when_neither_works(tmp_path, monkeypatch):
    from harness.stack import binaries

    def no_binaries(*_args):
        raise SetupError("The PostgreSQL server binaries (initdb, postgres) were not found.")

    auto = resolve_config({"backend": "auto"}, cwd=tmp_path)
    assert choose_backend(auto) == "native"  # this machine has them
    monkeypatch.setattr(binaries, "find_binaries", no_binaries)
    assert choose_backend(auto) == "docker"
    # Binaries named on purpose are not second-guessed: their error is the one to see.
    named = resolve_config({"backend": "auto", "pg_bindir": str(tmp_path)}, cwd=tmp_path)
    assert choose_backend(named) == "native"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(SetupError) as caught:
        choose_backend(auto)
    message = str(caught.value)
    assert "make setup" in message and "Docker engine" in message and "--backend external" in message


def start_harness_up_docker(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, dict[str, str], str]:
    """`harness up --backend docker` in a child; return it, its routes and its run id."""
    # A shell without job control starts background jobs with SIGINT ignored, and Python then
    # keeps ignoring it; a terminal's Ctrl-C reaches a process whose SIGINT is at its default.
    proc = subprocess.Popen([sys.executable, "-m", "harness", "up", "--backend", "docker"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    routes: dict[str, str] = {}
    run_id = ""
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    for line in proc.stdout:
        parts = line.split()
        if parts and parts[0] == "stack":
            run_id = parts[1]
        if parts and parts[0] in ROUTES:
            routes[parts[0]] = parts[1]
        if parts and parts[0] == "started":
            return proc, routes, run_id
        assert time.monotonic() < deadline, "harness up did not start in time"
    raise AssertionError(f"harness up ended early: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_to_harness_up_leaves_no_container_and_no_network(client, sig):
    proc, routes, run_id = start_harness_up_docker()
    try:
        assert set(routes) == set(ROUTES) and run_id
        from sqlalchemy import create_engine, text

        engine = create_engine(routes["transaction"])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == "app"
        engine.dispose()
        assert len(labelled(client, f"{LABEL_RUN}={run_id}")[0]) == 3
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert labelled(client, f"{LABEL_RUN}={run_id}") == ([], [])


def test_after_a_sigkill_the_next_start_removes_the_abandoned_containers(client):
    proc, _, run_id = start_harness_up_docker()
    proc.kill()
    proc.wait(timeout=10)
    containers, networks = labelled(client, f"{LABEL_RUN}={run_id}")
    assert len(containers) == 3 and len(networks) == 1, "a SIGKILLed harness cannot tidy up: they are left"
    removed = remove_abandoned_runs(client)
    assert f"tenant-harness-{run_id}" in removed
    assert labelled(client, f"{LABEL_RUN}={run_id}") == ([], [])


def verdicts(report_dir: Path) -> dict[tuple[str | None, str, str, str], str]:
    data = json.loads((report_dir / "latest" / "results.json").read_text())
    assert data["complete"], f"{report_dir}: the run did not finish"
    return {(c["deployment"], c["strategy"], c["route"], c["scenario"]): c["verdict"] for c in data["cells"]}


PGBOUNCER_DEPLOYMENTS = [name for name, d in DEPLOYMENTS.items() if d.pooler == "pgbouncer"]
OTHER_POOLERS = [name for name, d in DEPLOYMENTS.items() if d.pooler != "pgbouncer"]
#: What the deployments of Pgpool-II and pgagroal run in the comparison: the built-ins whose verdicts turn on
#: what a pooler does with a server connection between clients (a committed session SET, a binding made when a
#: connection opens, startup options, protocol-level prepared statements) and two that hold on any pooler, on
#: the scenarios of a request's lifetime and of what it leaves behind: 120 cells, about 40 s native and 70 s
#: docker. Every built-in on every named scenario (680 cells) would take about ten minutes more: a pgagroal
#: stack restarts both its pgagroals (60 and 10 prefilled server connections) between cells, 1 to 1.5 s a cell
#: on docker.
OTHER_POOLER_BUILTINS = ("search_path_set", "search_path_local", "translate_map", "search_path_per_connection",
                         "startup_options_search_path", "translate_map_prepared")
OTHER_POOLER_SCENARIOS = ("fresh_session", "after_commit", "after_rollback", "pool_state")


def verify(backend: str, report_dir: Path, deployments: list[str], scenarios, builtins=()) -> dict:
    """`harness verify` of the built-ins (all, or ``builtins`` gated one by one) on these deployments; the
    verdict of every cell. A deployment names its own binaries and images."""
    gated = [arg for name in builtins for arg in ("--strategy", name)]
    done = subprocess.run(
        [sys.executable, "-m", "harness", "verify", "--backend", backend, "--report-dir", str(report_dir),
         "--deployments", ",".join(deployments), "--scenarios", ",".join(scenarios), "--seed", "1", *gated],
        capture_output=True, text=True, timeout=1800, cwd=ROOT, env=without_deployment_settings(os.environ))
    # Self-checked built-ins pass against their expectation table; gated ones fail where they leak (exit 1).
    assert done.returncode in ((0, 1) if gated else (0,)), done.stdout[-4000:] + done.stderr[-4000:]
    return verdicts(report_dir)


def test_named_scenarios_give_the_same_verdicts_on_native_and_docker_on_every_deployment(tmp_path):
    """Every deployment x built-in x route x named scenario: the two backends' results.json agree cell by cell
    (the deployments of the other poolers on OTHER_POOLER_BUILTINS x OTHER_POOLER_SCENARIOS)."""
    matrices: dict[str, dict] = {}
    for backend in ("native", "docker"):
        matrices[backend] = {
            **verify(backend, tmp_path / backend / "pgbouncer", PGBOUNCER_DEPLOYMENTS, NAMED_SCENARIOS),
            **verify(backend, tmp_path / backend / "others", OTHER_POOLERS, OTHER_POOLER_SCENARIOS,
                     OTHER_POOLER_BUILTINS)}
    routes = {name: 1 + len(POOLERS[d.pooler].modes) for name, d in DEPLOYMENTS.items()}  # direct and its modes
    assert len(matrices["native"]) == (
        sum(routes[name] for name in PGBOUNCER_DEPLOYMENTS) * len(BUILTINS) * len(NAMED_SCENARIOS)
        + sum(routes[name] for name in OTHER_POOLERS) * len(OTHER_POOLER_BUILTINS) * len(OTHER_POOLER_SCENARIOS))
    differ = {cell: (v, matrices["docker"].get(cell)) for cell, v in matrices["native"].items()
              if matrices["docker"].get(cell) != v and not timing_decides(cell, v, matrices["docker"].get(cell))}
    assert not differ, differ
    # every kind of verdict the built-ins measure on named scenarios: a leak, a layer PgBouncer refuses
    # (startup_options_search_path before sid) or breaks (translate_map_prepared's prepared statements,
    # bookworm): cannot_run; none is inconclusive
    assert set(matrices["native"].values()) == {"pass", "fail", "cannot_run"}
    others = {cell: v for cell, v in matrices["native"].items() if cell[0] in OTHER_POOLERS}
    assert {"pass", "fail"} <= set(others.values()), others


def timing_decides(cell: tuple[str, str, str, str], one: str, other: str | None) -> bool:
    """Does the expectation table allow both verdicts on this cell of the other poolers' deployments, because
    the pooler's choice of server there depends on timing (pgagroal's transaction pipeline: ``pass|fail``)?"""
    deployment, strategy, route, scenario = cell
    wanted = DEPLOYMENTS[deployment]
    if wanted.pooler == "pgbouncer" or other is None:
        return False
    facts = DeploymentFacts(int(wanted.postgres), tuple(map(int, wanted.pooler_version.split("."))),
                            pooler=wanted.pooler)
    expected = required_verdict(strategy, scenario, route, facts=facts)
    return bool(expected.also) and {one, other} <= set(expected.label.split("|"))


# -- the deployments of the other poolers: Pgpool-II and pgagroal from their suite's images ---------------------

@pytest.fixture(scope="module", params=OTHER_POOLERS)
def pooler_stack(request, tmp_path_factory):
    """A docker stack of a deployment whose pooler is Pgpool-II or pgagroal (the deployment names its images)."""
    config = resolve_config({"backend": "docker", "deployment": request.param},
                            env=without_deployment_settings(os.environ), cwd=tmp_path_factory.mktemp("pooler"))
    with start_stack(config) as running:
        yield running


def pooled_routes(stack) -> list[str]:
    return [route for route in ("session", "transaction") if route in stack.routes]


def test_another_pooler_runs_from_its_deployments_image_in_labelled_containers(pooler_stack, client):
    stack = pooler_stack
    wanted = DEPLOYMENTS[stack.deployment]
    kind = wanted.pooler
    assert stack.pooler == kind and stack.versions[kind] == wanted.pooler_version
    assert stack.versions["postgres"].startswith(wanted.postgres + ".")
    postgres_image, pooler_image = docker_images(client, wanted.name)
    assert (stack.versions["postgres_image"], stack.versions["pooler_image"]) == (postgres_image, pooler_image)
    assert f"/{'pgpool2' if kind == 'pgpool' else kind}:{wanted.debian_suite}-" in pooler_image
    # The pooler's modes are the routes: Pgpool-II has no transaction pooling, and the stack says why.
    assert pooled_routes(stack) == list(POOLERS[kind].modes)
    if kind == "pgpool":
        assert stack.why_not(Missing.ROUTE, "transaction") == POOLERS["pgpool"].lacks
    containers, networks = labelled(client, f"{LABEL_RUN}={stack.run_id}")
    assert sorted(c.labels[LABEL_PART] for c in containers) == sorted(
        ["postgres", *(f"{kind}-{route}" for route in pooled_routes(stack))])
    assert len(networks) == 1
    for container in containers:
        assert container.labels[LABEL_OWNER].endswith(f":{os.getpid()}")
        assert list(container.attrs["NetworkSettings"]["Networks"]) == [networks[0].name]
        for bindings in container.attrs["HostConfig"]["PortBindings"].values():
            assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
        if container.labels[LABEL_PART] != "postgres":
            config = container.attrs["Config"]
            # The harness's configuration and start script, run as the image's postgres user.
            assert config["Image"] == pooler_image and config["User"] == "postgres"
            assert config["Entrypoint"] == ["/bin/sh", "/etc/tenant-harness/start"]
    # pgagroal reaches PostgreSQL through its socket, in a volume of the run (as natively, through the socket).
    volumes = labelled_volumes(client, f"{LABEL_RUN}={stack.run_id}")
    assert len(volumes) == (1 if kind == "pgagroal" else 0)


def test_another_poolers_routes_answer_as_the_login_role_and_it_reports_its_settings(pooler_stack):
    stack = pooler_stack
    for route in stack.routes:
        with connect(stack.url(route)) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", DATABASE)
    settings = stack.pooler_settings
    assert sorted(settings) == pooled_routes(stack)
    if stack.pooler == "pgpool":
        assert settings["session"]["connection_cache"] == "on"
        assert settings["session"]["reset_query_list"] == "ABORT;DISCARD ALL"
        assert settings["session"]["num_init_children"] == str(stack.poolers["session"].pool_size)
    else:
        assert settings["session"]["pipeline"] == "performance"  # pgagroal's auto, as it runs by default
        assert settings["transaction"]["pipeline"] == "transaction"
    # What decides the deployment's verdicts is read from the same settings as natively.
    facts = stack.facts
    assert (facts.pooler, facts.postgres_major) == (stack.pooler, int(DEPLOYMENTS[stack.deployment].postgres))


def test_another_pooler_drops_its_server_connections_and_restarts_in_place(pooler_stack):
    stack = pooler_stack
    with connect(stack.superuser_url) as server:
        def backends() -> set[int]:
            return {row[0] for row in server.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND datname = %s", (DATABASE,))}

        for route in pooled_routes(stack):
            pooler = stack.poolers[route]
            with connect(stack.url(route)) as conn:
                conn.execute("SET search_path TO somewhere_else")
                pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert pooler.idle_servers("app", DATABASE) >= 1  # the server connection it keeps for the next client
            assert pid in backends()
            started = time.monotonic()
            pooler.drop_server_connections([DATABASE])
            dropped = time.monotonic() - started
            assert pid not in backends()
            # A restart keeps the container and its mapped port: the route's URL still answers, afresh.
            client = connect(stack.url(route))
            port = pooler.port
            pooler.restart()
            assert pooler.port == port and pooler.alive()
            with pytest.raises(psycopg.OperationalError):  # a client from before is cut
                client.execute("SELECT 1")
            client.close()
            with connect(stack.url(route)) as conn:
                assert conn.execute("SELECT current_setting('search_path')").fetchone()[0] == '"$user", public'
            assert dropped < 10, f"{pooler.name} took {dropped:.1f}s to drop its server connections"


def test_teardown_of_another_pooler_removes_its_containers_network_and_volume(pooler_stack, client):
    stack = pooler_stack
    label = f"{LABEL_RUN}={stack.run_id}"
    containers, _ = labelled(client, label)
    volumes = {m["Name"] for c in containers for m in c.attrs["Mounts"] if m["Type"] == "volume"}
    stack.close()
    assert labelled(client, label) == ([], []) and labelled_volumes(client, label) == []
    assert not volumes & {v.name for v in client.volumes.list()}

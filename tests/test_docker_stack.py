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
from harness.deployments import DEPLOYMENTS
from harness.errors import SetupError, StartupTimeout
from harness.stack import ROUTES, choose_backend, start_stack
from harness.stack.containers import LABEL_OWNER, LABEL_PART, LABEL_RUN, docker_client, remove_abandoned_runs
from harness.stack.postgres import DATABASE
from harness.workload.named import NAMED_SCENARIOS
from harness.tenancy.strategy import BUILTINS
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
    return {(c["deployment"], c["strategy"], c["route"], c["scenario"]): c["verdict"] for c in data["cells"]}


def test_named_scenarios_give_the_same_verdicts_on_native_and_docker_on_every_deployment(tmp_path):
    """Every deployment x built-in x route x named scenario: the two backends' results.json agree cell by cell."""
    # a deployment names its own binaries and images
    env = without_deployment_settings(os.environ)
    matrices = {}
    for backend in ("native", "docker"):
        report_dir = tmp_path / backend
        done = subprocess.run(
            [sys.executable, "-m", "harness", "verify", "--backend", backend, "--report-dir", str(report_dir),
             "--deployments", ",".join(DEPLOYMENTS), "--scenarios", ",".join(NAMED_SCENARIOS), "--seed", "1"],
            capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        matrices[backend] = verdicts(report_dir)
    assert len(matrices["native"]) == len(DEPLOYMENTS) * len(BUILTINS) * 3 * len(NAMED_SCENARIOS)
    differ = {cell: (v, matrices["docker"].get(cell)) for cell, v in matrices["native"].items()
              if matrices["docker"].get(cell) != v}
    assert not differ, differ
    # every kind of verdict the built-ins measure on named scenarios: a leak, a layer PgBouncer refuses
    # (startup_options_search_path before sid) or breaks (translate_map_prepared's prepared statements,
    # bookworm): cannot_run; none is inconclusive
    assert set(matrices["native"].values()) == {"pass", "fail", "cannot_run"}

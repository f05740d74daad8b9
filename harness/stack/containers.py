"""The docker backend: the stack from images, through testcontainers.

One PostgreSQL container and a pooler container per pooled route (two
PgBouncers by default: session, transaction; one Pgpool-II, or two pgagroals,
for a deployment of theirs) on a private network created for the run; their
ports are mapped by Docker to 127.0.0.1 (to the engine's host when the engine
is remote).

- PostgreSQL: any image following the official ``postgres`` image's contract
  (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data directory initialised
  on first start). Clients authenticate with scram-sha-256.
- PgBouncer: any image with a ``pgbouncer`` binary on its PATH. The harness
  renders the configuration, copies it into the container before it starts,
  and gives an explicit entrypoint and command; no image's environment
  variables are relied on.
- Pgpool-II and pgagroal: the images scripts/build-deployment builds from a
  suite's pgpool2 and pgagroal packages. They run the configuration the native
  parts render, under a small shell that restarts the pooler in place
  (:class:`SupervisedPooler`).

Every container and network carries the run id and its owner (host, pid) as
labels. Teardown removes everything labelled with the run, also after Ctrl-C;
a run killed outright (SIGKILL) is swept by the next start, found by its
owner's pid being gone. Testcontainers' reaper (Ryuk) is used only when its
image is already present: where it cannot be pulled, the labels suffice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shlex
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable

import psycopg
from sqlalchemy.engine import URL

from harness.config import HarnessConfig
from harness.deployments import POOLERS, Deployment, deployment
from harness.errors import SetupError, StartupTimeout
from harness.pooler_settings import PoolerSettings, requested_for
from harness.pooler_settings.pgagroal import PIPELINES, session_pipeline
from harness.stack.deployment_builds import docker_images, native_binaries
from harness.stack.pgagroal import (PgagroalPooler, refuse_unknown_pgagroal_settings, render_pgagroal_conf,
                                    render_pgagroal_hba, render_pgagroal_limits, vault_users)
from harness.stack.pgbouncer import (AdminConsole, PgBouncerPooler, effective_settings, pool_size, refuse_unknown_settings,
                                     render_config, render_userlist, settings_refusal, wait_for_admin)
from harness.stack.pgpool import (ADMIN_DATABASE, PgpoolPooler, refuse_unknown_pgpool_settings, render_pgpool_conf,
                                  render_pool_hba, render_pool_passwd)
from harness.stack.pgpool import settings_refusal as pgpool_settings_refusal
from harness.stack.postgres import (APP_ROLE, DATABASE, RLS_DATABASE, SERVER_SETTINGS, SUPERUSER, Logins,
                                    bootstrap_roles)
from harness.stack.process import owner_gone, run_owner
from harness.stack.stack import POOLED_ROUTES, Missing, Stack, StackAssembly, conninfo, launch, route_url
from harness.stack.wait import wait_until

if TYPE_CHECKING:  # testcontainers is imported only when the docker backend runs
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

LABEL_RUN = "tenant-harness.run"
LABEL_OWNER = "tenant-harness.owner"  # "<hostname>:<pid>" of the harness process
LABEL_PART = "tenant-harness.part"  # postgres, pgbouncer-session, pgbouncer-transaction, pgpool-session...
POSTGRES_PORT = 5432
BOUNCER_PORT = 6432
SERVER_ALIAS = "postgres"
CONFIG_DIR = "/etc/tenant-harness"
DOCKER_TIMEOUT = 10  # seconds for one call to the engine

# In a container the server must listen on the network; durability stays off.
CONTAINER_SETTINGS = {**SERVER_SETTINGS, "listen_addresses": "*"}

BUILD_HINT = ("build local images from Debian's packages: eval \"$(scripts/build-images)\" "
              "(sets HARNESS_POSTGRES_IMAGE and HARNESS_PGBOUNCER_IMAGE)")


def _docker_module():
    """The docker package (installed with testcontainers); a clear error when it is missing."""
    try:
        import docker
        import testcontainers.core.container  # noqa: F401 - the backend needs both
    except ImportError as exc:
        raise SetupError("The docker backend needs the testcontainers package, which is not installed.",
                         checked=[f"import failed: {exc}"],
                         fix=["pip install 'testcontainers>=4.8' (make setup installs it)",
                              "or use --backend native"]) from exc
    return docker


def engine_answers() -> bool:
    """True when a Docker engine answers a ping (for ``--backend auto``)."""
    try:
        docker = _docker_module()
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


def docker_client():
    """A client of the engine named by DOCKER_HOST (or the default socket); a clear error when none answers."""
    docker = _docker_module()
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001
        raise SetupError("The docker backend needs a Docker engine, and none answers.",
                         checked=[f"DOCKER_HOST={os.environ.get('DOCKER_HOST', '(unset: the local socket)')}",
                                  f"{type(exc).__name__}: {exc}"],
                         fix=["start the Docker engine (systemctl start docker), or point DOCKER_HOST at one",
                              "or use --backend native (make setup installs PostgreSQL and PgBouncer)"]) from exc


def ensure_image(client, image: str) -> None:
    """The image is present, or is pulled now; otherwise a clear error (before anything starts)."""
    docker = _docker_module()
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(image)
    except Exception as exc:  # noqa: BLE001 - no registry, unknown image, auth...
        raise SetupError(f"Docker image {image!r} is not present and could not be pulled.",
                         checked=[f"{type(exc).__name__}: {str(exc).strip()[:400]}"],
                         fix=[BUILD_HINT,
                              "or docker load / docker pull the image, or set HARNESS_POSTGRES_IMAGE / "
                              "HARNESS_PGBOUNCER_IMAGE to images this engine has",
                              "or use the native backend: make setup installs PostgreSQL and PgBouncer"]) from exc


def _configure_reaper(client) -> None:
    """Use Ryuk only when its image is here already: pulling it would fail without a registry."""
    from testcontainers.core.config import testcontainers_config as tc

    if "TESTCONTAINERS_RYUK_DISABLED" in os.environ:
        return
    try:
        client.images.get(tc.ryuk_image)
    except Exception:  # noqa: BLE001
        tc.ryuk_disabled = True


def remove_run(client, run_id: str) -> list[str]:
    """Remove every container (with its anonymous volumes), network and volume labelled with ``run_id``."""
    removed = []
    label = f"{LABEL_RUN}={run_id}"
    for container in client.containers.list(all=True, filters={"label": label}):
        try:
            container.remove(force=True, v=True)
            removed.append(container.name)
        except Exception as exc:  # noqa: BLE001
            if "No such container" not in str(exc) and "already in progress" not in str(exc):
                raise
    for network in client.networks.list(filters={"label": label}):
        try:
            network.remove()
            removed.append(network.name)
        except Exception as exc:  # noqa: BLE001
            if "not found" not in str(exc).lower():
                raise
    for volume in client.volumes.list(filters={"label": label}):
        try:
            volume.remove(force=True)
            removed.append(volume.name)
        except Exception as exc:  # noqa: BLE001
            if "no such volume" not in str(exc).lower():
                raise
    return removed


def remove_abandoned_runs(client) -> list[str]:
    """Remove the containers, networks and volumes of runs whose harness process on this host is gone."""
    runs: set[str] = set()
    labelled = [*client.containers.list(all=True, filters={"label": LABEL_OWNER}),
                *client.networks.list(filters={"label": LABEL_OWNER}),
                *client.volumes.list(filters={"label": LABEL_OWNER})]
    for item in labelled:
        labels = item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels") or {}
        owner_host, _, pid = labels.get(LABEL_OWNER, "").rpartition(":")
        if owner_gone(owner_host, pid) and labels.get(LABEL_RUN):
            runs.add(labels[LABEL_RUN])
    removed = []
    for run_id in sorted(runs):
        removed += remove_run(client, run_id)
    return removed


def _connect_host(client) -> tuple[str, str]:
    """(address to connect to, host address to bind mapped ports to)."""
    base = str(client.api.base_url)
    if base.startswith(("http+unix", "http+docker://localunixsocket", "npipe")) or "localhost" in base \
            or "127.0.0.1" in base:
        return "127.0.0.1", "127.0.0.1"
    from testcontainers.core.docker_client import DockerClient

    return DockerClient().host(), ""


@dataclasses.dataclass
class _DockerRun:
    """What the containers of one docker stack share: the run's labels, its network and the host's addresses."""

    run_id: str
    labels: dict[str, str]
    network: Network
    #: the address clients connect to
    host: str
    #: the host address Docker binds mapped ports to ("" on a remote engine: every address)
    bind: str

    def container(self, part: str, image: str, container_port: int, **create: Any) -> DockerContainer:
        """A container of the run, made with testcontainers' public builder: named and labelled
        after the run and the part, on the run's network, ``container_port`` mapped to the host.

        ``create`` is passed on to Docker's create call (entrypoint, user...).
        """
        from testcontainers.core.container import DockerContainer

        container = (DockerContainer(image)
                     .with_name(f"tenant-harness-{self.run_id}-{part}")
                     .with_network(self.network)
                     .with_kwargs(labels={**self.labels, LABEL_PART: part}, **create))
        if self.bind:
            # with_bind_ports() takes a host port, not an address; docker-py reads a
            # one-element tuple in the public ``ports`` mapping as "any free port on it".
            container.ports[f"{container_port}/tcp"] = (self.bind,)
        else:
            container.with_exposed_ports(container_port)
        return container


class ContainerServer:
    """One container of the stack, seen like a native server process (name, port, logs, alive, stop)."""

    def __init__(self, name: str, container: DockerContainer, container_port: int, host: str):
        self.name = name
        self.container = container
        self.container_port = container_port
        self.host = host
        #: the port Docker mapped ``container_port`` to; known once the container started
        self.port = 0
        self._pid: int | None = None

    @property
    def wrapped(self):
        return self.container.get_wrapped_container()

    def start(self, image: str) -> None:
        """Create, fill and start the container; an engine error becomes a SetupError naming the image.

        No wait here: the harness waits itself, from the host, so that a
        timeout names what it saw and shows the container's log.
        """
        docker = _docker_module()
        try:
            self.container.start()
        except docker.errors.APIError as exc:
            raise SetupError(f"Docker could not start a container from {image!r}.",
                             checked=[str(exc).strip()[:600]],
                             fix=["check the image (docker run --rm -it " + image + ")", BUILD_HINT]) from exc
        self.port = int(self.container.get_exposed_port(self.container_port))

    @property
    def pid(self) -> int | None:
        """The main process's pid on the engine's host (``docker inspect``'s State.Pid)."""
        if self._pid is None:
            try:
                self.wrapped.reload()
                self._pid = int(self.wrapped.attrs["State"]["Pid"]) or None
            except Exception:  # noqa: BLE001
                return None
        return self._pid

    def alive(self) -> bool:
        try:
            self.wrapped.reload()
            return self.wrapped.status in ("created", "running")
        except Exception:  # noqa: BLE001 - gone, or never created
            return False

    def _logs(self) -> bytes:
        try:
            return self.wrapped.logs()
        except Exception:  # noqa: BLE001 - removed, or never created
            return b""

    def log_size(self) -> int:
        return len(self._logs())

    def log_since(self, offset: int) -> str:
        return self._logs()[offset:].decode("utf-8", "replace")

    def log_tail(self, lines: int = 30) -> str:
        tail = "\n".join(self._logs().decode("utf-8", "replace").splitlines()[-lines:])
        try:
            source = self.wrapped.name
        except Exception:  # noqa: BLE001 - never created
            source = self.name
        # Name the container, so that the reader of a wait's error knows where the whole log is.
        return f"docker logs {source}:\n{tail}"

    def stop(self, timeout: float = 5.0) -> None:
        """Remove the container with its anonymous volumes (the data directory)."""
        try:
            self.container.stop(force=True, delete_volume=True)
        except Exception:  # noqa: BLE001 - already gone; remove_run checks by label anyway
            pass


class ContainerBouncer(PgBouncerPooler, ContainerServer):
    """A PgBouncer container: its pool mode, its mapped port and its admin console."""

    def __init__(self, container: DockerContainer, pool_mode: str, host: str, admin_user: str, password: str,
                 extra: PoolerSettings | None = None):
        ContainerServer.__init__(self, f"pgbouncer-{pool_mode}", container, BOUNCER_PORT, host)
        self.pool_mode = pool_mode
        self.extra = extra or PoolerSettings({}, {})
        self.admin_user = admin_user
        self.password = password
        #: its version ("1.18.0"), once its admin console answered
        self.version = ""
        self._console: AdminConsole | None = None

    def start(self, image: str) -> None:
        super().start(image)
        self._console = AdminConsole(self.host, self.port, self.admin_user, self.password)

    def admin(self, command: str) -> list[dict[str, Any]]:
        if self._console is None:
            raise RuntimeError(f"{self.name}: the container has not started; no admin console yet")
        return self._console(command)

    def stop(self, timeout: float = 5.0) -> None:
        if self._console is not None:
            self._console.close()
        super().stop(timeout)


# -- Pgpool-II and pgagroal: the other poolers a deployment may run ----------------------------------------------

#: where a pooler container keeps what it writes (sockets, pid files, Pgpool-II's pool_passwd, pgagroal's users
#: vault): the image's /run/postgresql, which its postgres user owns (a file copied in belongs to root, and so
#: does a folder made for one)
POOLER_RUN_DIR = "/run/postgresql"
#: the user a pooler container runs as: the owner of POOLER_RUN_DIR in scripts/build-deployment's images
POOLER_USER = "postgres"
#: the port a pooler listens on inside its container (below 10000: pgagroal 1.6 crashes on a port of five digits)
POOLER_PORT = 6432
#: PostgreSQL's socket folder in its container, and where a pgagroal container mounts it (a volume they share)
POSTGRES_SOCKET_DIR = "/var/run/postgresql"
SERVER_SOCKET_DIR = "/run/tenant-harness-server"
_START_SCRIPT = f"{CONFIG_DIR}/start"
_CLI_CONF = f"{CONFIG_DIR}/pgagroal.conf"
# the supervising shell's own files (the pooler's user may write to /tmp)
_POOLER_PID = "/tmp/tenant-harness-pooler.pid"
_RESTART_ASKED = "/tmp/tenant-harness-restart"

# The container's main process: the pooler is its child, in a session of its own (setsid: a process group the
# restart can SIGKILL as a whole, as the native parts do). `docker stop` (SIGTERM to this shell) is passed on as
# the pooler's own stop signal.
_SUPERVISOR = """#!/bin/sh
# Written by the harness: {title} runs as a child of this shell, so that the harness can restart it in place:
# it creates {restart} and stops {title}, and the loop starts it again. Any other exit of {title} ends the
# container with its status.
set -u
{prepare}
pooler=""
stop() {{
  [ -z "$pooler" ] || {{ kill -s {signal} "$pooler" 2>/dev/null; wait "$pooler"; }}
  exit 0
}}
trap stop TERM INT
while :; do
  rm -f {restart} {leftovers}
  setsid {command} &
  pooler=$!
  echo "$pooler" > {pid_file}
  status=0
  wait "$pooler" || status=$?
  [ -e {restart} ] || exit "$status"
done
"""

# What restart() runs in the container: the pooler's fast shutdown, SIGKILL for its process group after
# {kill_after} ticks of 10 ms, and an exit once it is gone (the shell above starts it again).
_RESTART = """pid="$(cat {pid_file})" && touch {restart} && kill -s {signal} "$pid" || exit 1
tick=0
while kill -0 "$pid" 2>/dev/null; do
  tick=$((tick + 1))
  [ "$tick" -ne {kill_after} ] || kill -s KILL -- "-$pid" 2>/dev/null
  [ "$tick" -le {give_up} ] || exit 2
  sleep 0.01
done
"""


class SupervisedPooler(ContainerServer):
    """A pooler container (Pgpool-II, pgagroal) whose main process is a shell that runs the pooler, so that it
    restarts in place (:meth:`restart`): the container keeps its address and its mapped port (Docker maps a new
    host port when a container with an ephemeral one restarts: seen on 20.10), and a restart takes what the
    pooler's own start takes (a ``docker restart`` takes a second and more).

    A subclass renders the pooler's files (``files``: path in the container -> text), what runs once before
    it first starts (``prepare``, shell lines), its command, its leftovers (a pid file or socket it refuses
    to start over), the volumes it mounts (``mounts``: volume -> path) and ``_ready``: a real query on the
    real path.
    """

    kind: str
    pool_mode: str
    prefills = False
    #: the pooler's fast shutdown, as ``kill -s`` names it
    stop_signal = "TERM"
    #: seconds between two readiness probes
    ready_interval = 0.02

    def __init__(self, name: str, run: _DockerRun, image: str, *, files: dict[str, str], prepare: list[str],
                 command: list[str], leftovers: list[str], extra: PoolerSettings | None,
                 mounts: dict[str, str] | None = None):
        script = _SUPERVISOR.format(title=command[0], prepare="\n".join(prepare), signal=self.stop_signal,
                                    restart=_RESTART_ASKED, pid_file=_POOLER_PID, leftovers=" ".join(leftovers),
                                    command=shlex.join(command))
        container = run.container(name, image, POOLER_PORT, entrypoint=["/bin/sh", _START_SCRIPT],
                                  user=POOLER_USER)
        for volume, path in (mounts or {}).items():
            container.with_volume_mapping(volume, path, "rw")
        # Readable by the pooler's user: every file copied in belongs to root.
        for path, text in {**files, _START_SCRIPT: script}.items():
            container.with_copy_into_container(text.encode(), path, 0o644)
        super().__init__(name, container, POOLER_PORT, run.host)
        self.image = image
        #: the team's settings, written after the harness's own
        self.extra = extra or PoolerSettings({}, {})
        self.version = ""
        self._lifecycle = threading.RLock()  # restart() and stop() one at a time
        self._stopped = False  # stop() ran: restart() no longer starts the pooler

    def _ready(self) -> Any:
        raise NotImplementedError

    def launch(self, timeout: float) -> Any:
        """Start the container and wait until the pooler answers a query; return what its readiness said."""
        self.start(self.image)
        return self._wait(f"{self.name} container ({self.image}) on {self.host}:{self.port}", timeout)

    def _wait(self, what: str, timeout: float) -> Any:
        return wait_until(self._ready, what=what, timeout=timeout, interval=self.ready_interval,
                          log_tail=self.log_tail, alive=self.alive)

    def run(self, *argv: str) -> tuple[int, str, str]:
        """One command in the container, as the pooler's user: its exit status, stdout and stderr."""
        result = self.wrapped.exec_run(list(argv), demux=True)
        out, err = result.output
        return result.exit_code, (out or b"").decode("utf-8", "replace"), (err or b"").decode("utf-8", "replace")

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the pooler (its fast shutdown; SIGKILL for what is left of it after half of ``timeout``) and let
        the container's shell start it again, same configuration, address and port; return once it answers
        (a fault step, and the way pgagroal drops its server connections).

        Its clients and server connections are gone: a client connected before gets an error on its next
        statement.
        """
        with self._lifecycle:
            if self._stopped:
                raise RuntimeError(f"{self.name} was stopped: it is not restarted")
            deadline = time.monotonic() + timeout
            # One engine call must end within the client's timeout.
            ticks = int(min(timeout, DOCKER_TIMEOUT * 0.8) * 100)
            status, out, err = self.run("/bin/sh", "-c", _RESTART.format(
                pid_file=_POOLER_PID, restart=_RESTART_ASKED, signal=self.stop_signal, kill_after=ticks // 2,
                give_up=ticks))
            if status != 0:
                raise StartupTimeout(f"{self.name}: the pooler did not stop to restart.",
                                     checked=[f"exit {status}: {(out + err).strip() or '(no output)'}",
                                              "log tail:\n" + self.log_tail(10)],
                                     fix=["read the log tail above (docker logs of the container)"])
            self._wait(f"{self.name} restarting on {self.host}:{self.port}", max(0.1, deadline - time.monotonic()))

    def stop(self, timeout: float = 5.0) -> None:
        with self._lifecycle:
            self._stopped = True
            super().stop(timeout)


class ContainerPgpool(PgpoolPooler, SupervisedPooler):
    """Pgpool-II in a container of the deployment's pgpool2 image, serving the session route.

    The native part's configuration (:func:`~harness.stack.pgpool.render_pgpool_conf`: raw mode, connection
    cache on, the team's settings last), with clients from the engine's network, and the native part's own
    queries (:class:`~harness.stack.pgpool.PgpoolPooler`: its settings, the servers it may keep idle, dropping
    its cached backends) through a connection of its own (:meth:`_connect`), with :meth:`restart` as the
    fallback of a drop.
    """

    # Fast shutdown: SIGTERM would be a smart shutdown, which waits for clients.
    stop_signal = "INT"

    def __init__(self, run: _DockerRun, image: str, users: dict[str, str], admin_user: str, pool_size: int,
                 extra: PoolerSettings | None = None):
        if admin_user not in users:
            raise ValueError(f"admin_user {admin_user!r} needs a password in users")
        self.users = dict(users)
        self.admin_user = admin_user
        #: num_init_children: at least the largest client pool of the route (clients beyond it wait)
        self.pool_size = pool_size
        conf, hba, pcp = f"{CONFIG_DIR}/pgpool.conf", f"{CONFIG_DIR}/pool_hba.conf", f"{CONFIG_DIR}/pcp.conf"
        files = {
            conf: render_pgpool_conf(folder=POOLER_RUN_DIR, listen_addr="*", listen_port=POOLER_PORT,
                                     server_host=SERVER_ALIAS, server_port=POSTGRES_PORT, pool_size=pool_size,
                                     extra=(extra.values if extra else None)),
            # Clients come through the engine (from its network's gateway, or a proxy on it).
            hba: render_pool_hba("0.0.0.0/0"),
            pcp: "# no PCP users: the harness does not use PCP\n",
            f"{POOLER_RUN_DIR}/pool_passwd": render_pool_passwd(self.users),
        }
        # -n: in the foreground, logging to stderr (the container's log); -D: forget a node's status.
        super().__init__(f"pgpool-{self.pool_mode}", run, image, files=files, prepare=[],
                         command=["pgpool", "-n", "-D", "-f", conf, "-F", pcp, "-a", hba],
                         leftovers=[f"{POOLER_RUN_DIR}/pgpool.pid", f"{POOLER_RUN_DIR}/.s.PGSQL.*"], extra=extra)

    def _connect(self, timeout: float = 2.0) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user=self.admin_user,
                               password=self.users[self.admin_user], dbname=ADMIN_DATABASE,
                               connect_timeout=max(1, int(timeout)), autocommit=True)

    def launch(self, timeout: float) -> str:
        """Start it and wait until a query answers through it; return its version ("4.3.5")."""
        self.version = super().launch(timeout)
        return self.version


class ContainerPgagroal(PgagroalPooler, SupervisedPooler):
    """pgagroal in a container of the deployment's pgagroal image, serving one pooled route.

    The native part's configuration (:func:`~harness.stack.pgagroal.render_pgagroal_conf`: the route's pipeline,
    every server connection prefilled, the team's settings last), its log on the container's stderr, and the
    users vault made in the container by the image's own pgagroal-admin, under a master key of its own.
    PostgreSQL is reached as the native part reaches it: through its Unix socket (trusted), in a volume the
    PostgreSQL container shares (``server_socket``: its name), so that its server connections are opened as
    natively (no SCRAM login for each of the 60 it prefills at every drop) and told from TCP clients the same
    way (no client address).

    ``pgagroal-cli`` runs in the container (:meth:`cli`); the native part's readings of it (settings, free
    server connections, the prefill check) and its drop (a restart, then the socket backends it held gone) are
    shared: :class:`~harness.stack.pgagroal.PgagroalPooler`.
    """

    stop_signal = "TERM"
    # Its readiness asks pgagroal-cli in the container: a docker exec costs the engine about 0.1 s of CPU, and
    # polled every 20 ms it slowed the prefill it waits for (measured on a busy 2-core host, 60 connections:
    # 1.4 to 2.2 s, against 0.7 to 1 s seen from PostgreSQL's side with no polling).
    ready_interval = 0.1

    def __init__(self, run: _DockerRun, image: str, pool_mode: str, users: dict[str, str], admin_user: str,
                 pool_size: int, server: URL, server_socket: str, extra: PoolerSettings | None = None,
                 database: str = DATABASE, also_prefill: Iterable[str] = ()):
        if pool_mode not in PIPELINES:
            raise ValueError(f"pool_mode {pool_mode!r}: pgagroal serves {', '.join(PIPELINES)}")
        self.pool_mode = pool_mode
        self.pipeline = session_pipeline(extra) if pool_mode == "session" else PIPELINES[pool_mode]
        self.users = dict(users)
        self.admin_user = admin_user
        self.pool_size = pool_size
        self.database = database
        #: the databases it prefills: ``database``, and ``also_prefill`` (the transaction pipeline serves no
        #: other database: the row-level-security layout's, say)
        self.prefilled_databases = (database, *(d for d in also_prefill if d != database))
        #: the superuser's URL of PostgreSQL (direct): which of its backends are gone after a drop
        self.server = server
        #: PostgreSQL's socket folder, as this container mounts it
        self.server_host = SERVER_SOCKET_DIR
        self.server_port = POSTGRES_PORT
        #: every server connection is opened by pgagroal before clients come (see harness.stack.pgagroal)
        self.prefill = True
        self.client_user = APP_ROLE if APP_ROLE in self.users else next(
            (u for u in self.users if u != admin_user), admin_user)
        hba, limits = f"{CONFIG_DIR}/pgagroal_hba.conf", f"{CONFIG_DIR}/pgagroal_databases.conf"
        vault = f"{POOLER_RUN_DIR}/pgagroal_users.conf"
        files = {
            _CLI_CONF: render_pgagroal_conf(pipeline=self.pipeline, listen_addr="0.0.0.0", listen_port=POOLER_PORT,
                                            socket_dir=POOLER_RUN_DIR, log_path="/dev/stderr",
                                            server_host=self.server_host, server_port=self.server_port,
                                            # room for every prefilled connection
                                            pool_size=pool_size * len(self.limited_users)
                                            * len(self.prefilled_databases),
                                            extra=(extra.values if extra else None)),
            hba: render_pgagroal_hba(),
            limits: render_pgagroal_limits(self.prefilled_databases, self.limited_users, pool_size),
        }
        # The vault's master key is read from ~/.pgagroal of the user it runs as: the container's own, made once.
        prepare = ["umask 077",
                   f"pgagroal-admin master-key -P {shlex.quote(secrets.token_urlsafe(24))} >/dev/null || exit 1",
                   *(f"pgagroal-admin -f {vault} -U {shlex.quote(user)} -P {shlex.quote(password)} user add "
                     ">/dev/null || exit 1" for user, password in self.users.items()),
                   "umask 022"]
        super().__init__(f"pgagroal-{pool_mode}", run, image, files=files, prepare=prepare,
                         command=["pgagroal", "-c", _CLI_CONF, "-a", hba, "-u", vault, "-l", limits],
                         leftovers=[f"{POOLER_RUN_DIR}/pgagroal.*.pid"], extra=extra,
                         mounts={server_socket: SERVER_SOCKET_DIR})

    def _connect(self, timeout: float = 2.0) -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user=self.client_user,
                               password=self.users[self.client_user], dbname=self.database,
                               connect_timeout=max(1, int(timeout)), autocommit=True, prepare_threshold=None)

    def _server_connection(self, timeout: float) -> psycopg.Connection:
        return psycopg.connect(**conninfo(self.server), connect_timeout=max(1, int(timeout)), autocommit=True)

    def launch(self, timeout: float) -> str:
        """Start it and wait until its prefilled connections are there and a query answers through it as the
        code under test's role; return its version ("1.6.0")."""
        super().launch(timeout)
        _, out, err = self.run("pgagroal", "--version")
        match = re.search(r"(\d+\.\d+(?:\.\d+)?)", out + err)
        self.version = match.group(1) if match else ""
        return self.version

    def cli(self, *args: str) -> Any:
        """One ``pgagroal-cli`` command in the container (``status details``, ``conf get pipeline``...); its JSON
        ``output`` (None for a command that has none). RuntimeError if it fails."""
        status, out, err = self.run("pgagroal-cli", "-c", _CLI_CONF, "-F", "json", *args)
        if status == 0 and not out.strip():
            return None  # flush, shutdown: 1.6.0 prints nothing, also in JSON
        try:
            command = json.loads(out)["command"]
        except (ValueError, KeyError, TypeError):
            command = None
        if status != 0 or command is None or command.get("status") != "OK":
            raise RuntimeError(f"pgagroal-cli {' '.join(args)} failed (exit {status}): {(out + err).strip()[-500:]}")
        return command.get("output")


def start_docker_stack(config: HarnessConfig) -> Stack:
    """Start PostgreSQL and its pooler (two PgBouncers by default) as containers on a network of their own.

    Images and engine are checked before anything is created; a failure
    part-way removes every container and network of the run.
    """
    return launch("docker", config, _boot)


def _boot(assembly: StackAssembly) -> None:
    from testcontainers.core.network import Network

    config = assembly.config
    wanted = deployment(config.deployment) if config.deployment else None
    kind = wanted.pooler if wanted else "pgbouncer"
    extra = requested_for(config, kind)
    client = docker_client()
    assembly.on_close(client.close)
    pooler_image = config.pgbouncer_image
    if wanted:  # the images scripts/build-deployment built for it
        postgres_image, pooler_image = docker_images(client, wanted.name)
        config = dataclasses.replace(config, postgres_image=postgres_image,
                                     pgbouncer_image=pooler_image if kind == "pgbouncer" else config.pgbouncer_image)
        _refuse_unknown_settings(wanted, extra, config)
    for image in (config.postgres_image, pooler_image):
        ensure_image(client, image)
    _configure_reaper(client)
    remove_abandoned_runs(client)
    run_id = assembly.run_id
    # Whatever a step below leaves behind carries the run's label: this finds it.
    assembly.on_close(lambda: remove_run(client, run_id))

    stack = assembly.stack
    stack.pooler = kind
    stack.versions["postgres_image"] = config.postgres_image
    stack.versions["pooler_image"] = pooler_image
    host, bind = _connect_host(client)
    logins = Logins()

    labels = {LABEL_RUN: run_id, LABEL_OWNER: run_owner()}
    network = Network(docker_network_kw={"labels": labels})
    network.name = f"tenant-harness-{run_id}"
    network.create()
    run = _DockerRun(run_id, labels, network, host, bind)

    # A plain container with the official image's variables: PostgresContainer.start()
    # would wait with psql inside the container; the harness waits from the host instead.
    container = (run.container("postgres", config.postgres_image, POSTGRES_PORT)
                 .with_envs(POSTGRES_USER=SUPERUSER, POSTGRES_PASSWORD=logins.superuser, POSTGRES_DB=DATABASE)
                 .with_network_aliases(SERVER_ALIAS)
                 .with_command(["postgres", *[f"-c{k}={v}" for k, v in CONTAINER_SETTINGS.items()]]))
    server_socket = ""
    if kind == "pgagroal":  # pgagroal reaches PostgreSQL through its socket, in a volume they share
        server_socket = client.volumes.create(name=f"tenant-harness-{run_id}-socket", labels=labels).name
        container.with_volume_mapping(server_socket, POSTGRES_SOCKET_DIR, "rw")
    server = ContainerServer("postgres", container, POSTGRES_PORT, host)
    assembly.add_server(server)
    server.start(config.postgres_image)
    stack.superuser_url = route_url(SUPERUSER, logins.superuser, server.port, host)

    def bootstrap() -> str:
        with psycopg.connect(**conninfo(stack.superuser_url), connect_timeout=2, autocommit=True) as conn:
            version = bootstrap_roles(conn, logins)
            # Made with the stack, as natively (in the initdb template): pgagroal's transaction pipeline serves
            # only the databases it prefills at start, the row-level-security layout's among them.
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (RLS_DATABASE,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {RLS_DATABASE}")
            return version

    stack.versions["postgres"] = wait_until(
        bootstrap, what=f"PostgreSQL container ({config.postgres_image}) on {host}:{server.port}",
        timeout=config.start_timeout, interval=0.1, log_tail=server.log_tail, alive=server.alive)
    assembly.add_route("direct", route_url(APP_ROLE, logins.app, server.port, host))

    offered = POOLERS[kind]
    user = _bouncer_user(client, pooler_image) if kind == "pgbouncer" else POOLER_USER
    for mode in POOLED_ROUTES:
        if mode not in offered.modes:
            stack.not_run[Missing.ROUTE, mode] = offered.lacks
            continue
        if kind == "pgbouncer":
            pooler = _start_bouncer(assembly, run, pooler_image, mode, user, logins, extra)
        else:
            pooler = assembly.track(
                ContainerPgpool(run, pooler_image, vault_users(logins), SUPERUSER, pool_size(config, mode), extra)
                if kind == "pgpool" else
                ContainerPgagroal(run, pooler_image, mode, vault_users(logins), SUPERUSER, pool_size(config, mode),
                                  stack.superuser_url, server_socket, extra,
                                  also_prefill=(RLS_DATABASE,) if mode == "transaction" else ()))
            _launch_pooler(pooler, extra, config.start_timeout)
        stack.versions[kind] = pooler.version
        assembly.add_pooler(pooler)
        assembly.add_route(mode, route_url(APP_ROLE, logins.app, pooler.port, host))
    stack.pooler_settings = effective_settings(stack.poolers)
    stack.pooler_requested = extra.describe() if extra or extra.ignored else ""


def _refuse_unknown_settings(wanted: Deployment, extra: PoolerSettings, config: HarnessConfig) -> None:
    """The team's pooler settings checked before anything starts, against the same suite's pooler on this host
    when the deployment is built natively too: it knows the same names and values. Without it, PgBouncer and
    Pgpool-II say what they refuse in their log at start (shown then); pgagroal runs without a setting it
    does not take, and its settings as read back (the report's) show what it runs with."""
    if not extra:
        return
    try:
        _, binary = native_binaries(wanted)
    except SetupError:
        return
    if wanted.pooler == "pgpool":
        refuse_unknown_pgpool_settings(extra, binary, timeout=config.start_timeout)
    elif wanted.pooler == "pgagroal":
        refuse_unknown_pgagroal_settings(extra, binary, timeout=config.start_timeout)
    else:
        refuse_unknown_settings(extra, binary, timeout=config.start_timeout, cache_dir=config.template_cache)


def _start_bouncer(assembly: StackAssembly, run: _DockerRun, image: str, mode: str, user: str, logins: Logins,
                   extra: PoolerSettings) -> ContainerBouncer:
    """A PgBouncer container with ``pool_mode`` = ``mode``, started; ready when its admin console answers.

    The team's settings: a name or value this image's PgBouncer refuses shows in its log at start (the native
    backend checks the names before anything starts).
    """
    ini = render_config(pool_mode=mode, listen_addr="0.0.0.0", listen_port=BOUNCER_PORT,
                        server_host=SERVER_ALIAS, server_port=POSTGRES_PORT,
                        auth_file=f"{CONFIG_DIR}/userlist.txt", admin_user=SUPERUSER,
                        pool_size=pool_size(assembly.config, mode), extra=extra.values)
    container = (run.container(f"pgbouncer-{mode}", image, BOUNCER_PORT, entrypoint=["pgbouncer"], user=user)
                 .with_command([f"{CONFIG_DIR}/pgbouncer.ini"])
                 .with_copy_into_container(ini.encode(), f"{CONFIG_DIR}/pgbouncer.ini", 0o644)
                 .with_copy_into_container(render_userlist(logins.users).encode(), f"{CONFIG_DIR}/userlist.txt",
                                           0o644))
    bouncer = assembly.track(ContainerBouncer(container, mode, run.host, SUPERUSER, logins.superuser, extra))
    bouncer.start(image)
    try:
        bouncer.version = wait_for_admin(
            bouncer, what=f"PgBouncer container ({image}, {mode}) on {run.host}:{bouncer.port}",
            timeout=assembly.config.start_timeout, interval=0.05)
    except StartupTimeout as exc:
        refusal = settings_refusal(bouncer.log_tail(200), extra, f"image {image}")
        if refusal is None:
            raise
        raise refusal from exc
    return bouncer


def _launch_pooler(pooler: SupervisedPooler, extra: PoolerSettings, timeout: float) -> None:
    """Start a Pgpool-II or pgagroal container and wait until it answers; a setting of the team's that
    Pgpool-II refused at start is a UsageError naming it."""
    try:
        pooler.launch(timeout)
    except StartupTimeout as exc:
        if pooler.kind != "pgpool":
            raise
        refusal = pgpool_settings_refusal(pooler.log_tail(200), extra, f"image {pooler.image}")
        if refusal is None:
            raise
        raise refusal from exc


def _bouncer_user(client, image: str) -> str:
    """PgBouncer refuses to run as root: keep the image's own user unless it is root."""
    user = (client.images.get(image).attrs.get("Config") or {}).get("User") or ""
    return user if user not in ("", "root", "0", "0:0") else "nobody"

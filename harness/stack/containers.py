"""The docker backend: the stack from images, through testcontainers.

One PostgreSQL container and two PgBouncer containers (session, transaction)
on a private network created for the run; their ports are mapped by Docker to
127.0.0.1 (to the engine's host when the engine is remote).

- PostgreSQL: any image following the official ``postgres`` image's contract
  (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data directory initialised
  on first start). Clients authenticate with scram-sha-256.
- PgBouncer: any image with a ``pgbouncer`` binary on its PATH. The harness
  renders the configuration, copies it into the container before it starts,
  and gives an explicit entrypoint and command; no image's environment
  variables are relied on.

Every container and network carries the run id and its owner (host, pid) as
labels. Teardown removes everything labelled with the run, also after Ctrl-C;
a run killed outright (SIGKILL) is swept by the next start, found by its
owner's pid being gone. Testcontainers' reaper (Ryuk) is used only when its
image is already present: where it cannot be pulled, the labels suffice.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import psycopg

from harness.config import HarnessConfig
from harness.errors import SetupError, StartupTimeout
from harness.pgbouncer_settings import PoolerSettings, requested
from harness.stack.deployment_builds import docker_images, native_binaries
from harness.stack.pgbouncer import (AdminConsole, PgBouncerPooler, effective_settings, pool_size, refuse_unknown_settings,
                                     render_config, render_userlist, settings_refusal, wait_for_admin)
from harness.stack.postgres import APP_ROLE, DATABASE, SERVER_SETTINGS, SUPERUSER, Logins, bootstrap_roles
from harness.stack.process import owner_gone, run_owner
from harness.stack.stack import POOLED_ROUTES, Stack, StackAssembly, conninfo, launch, route_url
from harness.stack.wait import wait_until

if TYPE_CHECKING:  # testcontainers is imported only when the docker backend runs
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

LABEL_RUN = "tenant-harness.run"
LABEL_OWNER = "tenant-harness.owner"  # "<hostname>:<pid>" of the harness process
LABEL_PART = "tenant-harness.part"  # postgres, pgbouncer-session, pgbouncer-transaction
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
    """Remove every container (with its anonymous volumes) and network labelled with ``run_id``."""
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
    return removed


def remove_abandoned_runs(client) -> list[str]:
    """Remove the containers and networks of runs whose harness process on this host is gone."""
    runs: set[str] = set()
    labelled = [*client.containers.list(all=True, filters={"label": LABEL_OWNER}),
                *client.networks.list(filters={"label": LABEL_OWNER})]
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


def start_docker_stack(config: HarnessConfig) -> Stack:
    """Start PostgreSQL and two PgBouncers as containers on a network of their own.

    Images and engine are checked before anything is created; a failure
    part-way removes every container and network of the run.
    """
    return launch("docker", config, _boot)


def _boot(assembly: StackAssembly) -> None:
    from testcontainers.core.network import Network

    config = assembly.config
    client = docker_client()
    assembly.on_close(client.close)
    if config.deployment:  # the images scripts/build-deployment built for it
        postgres_image, pgbouncer_image = docker_images(client, config.deployment)
        config = dataclasses.replace(config, postgres_image=postgres_image, pgbouncer_image=pgbouncer_image)
        # The same suite's PgBouncer on this host knows the same setting names: checked before anything starts.
        try:
            _, pgbouncer = native_binaries(config.deployment)
        except SetupError:
            pgbouncer = None  # not built natively: a name the image's PgBouncer refuses shows in its log
        if pgbouncer is not None:
            refuse_unknown_settings(requested(config.pgbouncer_config, config.pgbouncer_set), pgbouncer,
                                    timeout=config.start_timeout, cache_dir=config.template_cache)
    for image in (config.postgres_image, config.pgbouncer_image):
        ensure_image(client, image)
    _configure_reaper(client)
    remove_abandoned_runs(client)
    run_id = assembly.run_id
    # Whatever a step below leaves behind carries the run's label: this finds it.
    assembly.on_close(lambda: remove_run(client, run_id))

    stack = assembly.stack
    stack.versions["postgres_image"] = config.postgres_image
    stack.versions["pooler_image"] = config.pgbouncer_image
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
    server = ContainerServer("postgres", container, POSTGRES_PORT, host)
    assembly.add_server(server)
    server.start(config.postgres_image)
    stack.superuser_url = route_url(SUPERUSER, logins.superuser, server.port, host)

    def bootstrap() -> str:
        with psycopg.connect(**conninfo(stack.superuser_url), connect_timeout=2, autocommit=True) as conn:
            return bootstrap_roles(conn, logins)

    stack.versions["postgres"] = wait_until(
        bootstrap, what=f"PostgreSQL container ({config.postgres_image}) on {host}:{server.port}",
        timeout=config.start_timeout, interval=0.1, log_tail=server.log_tail, alive=server.alive)
    assembly.add_route("direct", route_url(APP_ROLE, logins.app, server.port, host))

    user = _bouncer_user(client, config.pgbouncer_image)
    # The team's settings: a name or value this image's PgBouncer refuses shows in its log at start (the
    # native backend checks the names before anything starts).
    extra = requested(config.pgbouncer_config, config.pgbouncer_set)
    for mode in POOLED_ROUTES:
        ini = render_config(pool_mode=mode, listen_addr="0.0.0.0", listen_port=BOUNCER_PORT,
                            server_host=SERVER_ALIAS, server_port=POSTGRES_PORT,
                            auth_file=f"{CONFIG_DIR}/userlist.txt", admin_user=SUPERUSER,
                            pool_size=pool_size(config, mode), extra=extra.values)
        container = (run.container(f"pgbouncer-{mode}", config.pgbouncer_image, BOUNCER_PORT,
                                   entrypoint=["pgbouncer"], user=user)
                     .with_command([f"{CONFIG_DIR}/pgbouncer.ini"])
                     .with_copy_into_container(ini.encode(), f"{CONFIG_DIR}/pgbouncer.ini", 0o644)
                     .with_copy_into_container(render_userlist(logins.users).encode(), f"{CONFIG_DIR}/userlist.txt",
                                               0o644))
        bouncer = assembly.track(ContainerBouncer(container, mode, host, SUPERUSER, logins.superuser, extra))
        bouncer.start(config.pgbouncer_image)
        try:
            stack.versions["pgbouncer"] = wait_for_admin(
                bouncer, what=f"PgBouncer container ({config.pgbouncer_image}, {mode}) on {host}:{bouncer.port}",
                timeout=config.start_timeout, interval=0.05)
        except StartupTimeout as exc:
            refusal = settings_refusal(bouncer.log_tail(200), extra, f"image {config.pgbouncer_image}")
            if refusal is None:
                raise
            raise refusal from exc
        assembly.add_pooler(bouncer)
        assembly.add_route(mode, route_url(APP_ROLE, logins.app, bouncer.port, host))
    stack.pooler_settings = effective_settings(stack.poolers)
    stack.pooler_requested = extra.describe() if extra or extra.ignored else ""


def _bouncer_user(client, image: str) -> str:
    """PgBouncer refuses to run as root: keep the image's own user unless it is root."""
    user = (client.images.get(image).attrs.get("Config") or {}).get("User") or ""
    return user if user not in ("", "root", "0", "0:0") else "nobody"

"""Processes: the stack (PostgreSQL + two PgBouncers) and how it starts and stops.

Backends: ``native`` (local binaries, :mod:`harness.stack.native`), ``docker``
(images through testcontainers, :mod:`harness.stack.containers`) and
``external`` (servers someone else runs, :mod:`harness.stack.external`).
Each says only how to start its parts (:mod:`harness.stack.parts`: a PostgreSQL
server and its PgBouncers); :func:`harness.stack.stack.launch` does the rest
the same way for all three: registration, teardown on failure, the readiness
check of every route, the timings.
"""

from harness.stack.native import start_native_stack
from harness.stack.stack import POOLED_ROUTES, ROUTES, Missing, Stack

__all__ = ["POOLED_ROUTES", "ROUTES", "Missing", "Stack", "choose_backend", "start_native_stack", "start_stack"]


def choose_backend(config) -> str:
    """The backend ``auto`` stands for: native when its binaries are found, else docker when an engine answers.

    Binaries named explicitly (HARNESS_PG_BINDIR, HARNESS_PGBOUNCER) mean native:
    a mistake in them is reported, not papered over by a fallback.
    """
    from harness.errors import SetupError
    from harness.stack import binaries

    if config.backend != "auto":
        return config.backend
    if config.pg_bindir is not None or config.pgbouncer is not None:
        return "native"
    try:
        if config.deployment:  # its native build, else its images
            from harness.stack.deployment_builds import native_binaries

            native_binaries(config.deployment)
        else:
            binaries.find_binaries(config.pg_bindir, config.pgbouncer)
        return "native"
    except SetupError as native_problem:
        from harness.stack.containers import engine_answers

        if engine_answers():
            return "docker"
        if config.deployment:
            raise
        raise SetupError(
            "No way to start a stack: the PostgreSQL and PgBouncer binaries are missing, "
            "and no Docker engine answers.",
            checked=[native_problem.problem, *native_problem.checked, "docker: no engine answered a ping"],
            fix=["native: make setup (installs Debian's postgresql and pgbouncer), or set "
                 "HARNESS_PG_BINDIR / HARNESS_PGBOUNCER",
                 "docker: start a Docker engine (and pip install testcontainers); "
                 "images: HARNESS_POSTGRES_IMAGE / HARNESS_PGBOUNCER_IMAGE, or scripts/build-images",
                 "external: --backend external with --direct-dsn / --session-dsn / --transaction-dsn "
                 "and --superuser-dsn"]) from None


def start_stack(config) -> Stack:
    """Start a stack with the configured backend (``auto`` picks one)."""
    backend = choose_backend(config)
    if backend == "docker":
        from harness.stack.containers import start_docker_stack

        return start_docker_stack(config)
    if backend == "external":
        from harness.stack.external import start_external_stack

        return start_external_stack(config)
    return start_native_stack(config)

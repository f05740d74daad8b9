"""The one frozen configuration object, resolved once.

Precedence: command line > environment (``HARNESS_*``) > ``[tool.harness]`` in
pyproject.toml > defaults. Every setting is declared once, with one help string
that the CLI and the pytest plugin share.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from harness.deployments import DEPLOYMENTS, POOLERS, deployment
from harness.tenancy.drivers import check_installed
from harness.errors import UsageError
from harness.pooler_settings import dialects
from harness.pooler_settings.pgagroal import PGAGROAL_CARRIED, split_pgagroal_assignments
from harness.pooler_settings.pgbouncer import CARRIED_SETTINGS, split_assignments
from harness.pooler_settings.pgpool import PGPOOL_CARRIED, split_pgpool_assignments
from harness.tenancy.tenants import parse_tenants, tenant_set


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


def _optional_path(value: Any) -> Path | None:
    if value in (None, ""):
        return None
    return Path(str(value)).expanduser()


def _names(value: Any) -> tuple[str, ...]:
    """Comma-separated names. A list (a repeated option such as ``--actions a --actions b,c``, a TOML
    array) may hold comma-separated items too: every list setting reads ``a,b`` the same way."""
    items = value if isinstance(value, (list, tuple)) else (value,)
    return tuple(name.strip() for item in items for name in str(item).split(",") if name.strip())


def _optional_text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_value(name: str, value: Any) -> str:
    if isinstance(value, bool):  # TOML's true/false: as most settings libraries read them back
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"{name} = {value!r}: give a string, a number or a boolean")


def _env_table(value: Any) -> tuple[tuple[str, str], ...]:
    """The ``env`` setting: a table NAME = value ([tool.harness.env]) or NAME=VALUE items, comma-separated."""
    if isinstance(value, Mapping):
        pairs = [(str(name), _env_value(str(name), v)) for name, v in value.items()]
    else:
        pairs = []
        for item in _names(value):
            name, equals, text = item.partition("=")
            if not equals:
                raise ValueError(f"{item!r} is not NAME=VALUE")
            pairs.append((name.strip(), text.strip()))
    for name, _ in pairs:
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
    return tuple(pairs)


def _shard(value: Any) -> tuple[int, int] | None:
    if value in (None, ""):
        return None
    if isinstance(value, (tuple, list)):
        index, count = (int(v) for v in value)
    else:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not match:
            raise ValueError(f"expected K/N such as 2/3, got {value!r}")
        index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: K must be between 1 and N")
    return index, count


def _path(value: Any) -> Path:
    return Path(str(value)).expanduser()


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str

    @property
    def env(self) -> str:
        return "HARNESS_" + self.name.upper()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def setting_text(value: Any) -> str:
    """A setting's value as the command line and the environment take it back (what its parse reads)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return str(value)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tenant-harness"


ROUTE_NAMES = ("direct", "session", "transaction")
BACKENDS = ("auto", "native", "docker", "external")
PROFILE_NAMES = ("dev", "ci", "nightly")
#: the scenario whose programs interleave faults, and the profiles that run it without being asked
FAULTS_SCENARIO = "faults"
FAULT_PROFILES = ("nightly",)

SETTINGS: tuple[Setting, ...] = (
    Setting("backend", "auto", str,
            "What starts the stack: native (local binaries), docker (images, through testcontainers), "
            "external (your servers, given by the *_dsn settings), or auto (native when the binaries "
            "are found, else docker when an engine answers)."),
    Setting("deployment", None, _optional_text,
            "The deployment the stack runs, named after the Debian suite that ships it: bookworm (PostgreSQL 15, "
            "PgBouncer 1.18), trixie (PostgreSQL 17, PgBouncer 1.24.1), sid (PostgreSQL 18, PgBouncer 1.26.1), "
            "and the other poolers: bookworm-pgpool (PostgreSQL 15, Pgpool-II 4.3.5, session route only), "
            "trixie-pgagroal (PostgreSQL 17, pgagroal 1.6.0); `make deployments` builds them. Default: the "
            "binaries or images the settings below name (on a bookworm host that is bookworm). Native and docker "
            "backends only."),
    Setting("deployments", (), _names,
            "harness verify: run every cell on each of these deployments, comma-separated (e.g. "
            "bookworm,bookworm-pgpool,trixie,trixie-pgagroal), and report the cells whose verdict differs between "
            "them. Default: the one deployment of --deployment."),
    Setting("driver", None, _optional_text,
            "The PostgreSQL driver the route URL a strategy gets names: psycopg (psycopg 3, sync or async), "
            "psycopg2 (SQLAlchemy's default for postgresql://) or asyncpg (async only). A layer that builds its "
            "engine from that URL runs on it. Default: psycopg."),
    Setting("drivers", (), _names,
            "harness verify: run every cell on each of these drivers, comma-separated (e.g. "
            "psycopg,psycopg2,asyncpg), and report the cells whose verdict differs between them. Default: the "
            "one driver of --driver."),
    Setting("postgres_image", "postgres:17", str, "PostgreSQL image of the docker backend."),
    Setting("pgbouncer_image", "edoburu/pgbouncer:latest", str,
            "PgBouncer image of the docker backend: any image with a pgbouncer binary on its PATH."),
    Setting("direct_dsn", None, _optional_text,
            "External backend: URL of the route straight to PostgreSQL, as the application's login role."),
    Setting("session_dsn", None, _optional_text,
            "External backend: URL of the route through a PgBouncer with pool_mode=session."),
    Setting("transaction_dsn", None, _optional_text,
            "External backend: URL of the route through a PgBouncer with pool_mode=transaction."),
    Setting("superuser_dsn", None, _optional_text,
            "External backend: URL of a role that may create schemas and roles in that database "
            "(and, on PgBouncer's admin console, run SHOW and KILL)."),
    Setting("i_own_this_database", False, _bool,
            "External backend: run even though the database holds schemas the harness did not create."),
    Setting("pg_bindir", None, _optional_path,
            "Folder holding the PostgreSQL server binaries (initdb, postgres, pg_ctl)."),
    Setting("pgbouncer", None, _optional_path, "Path of the pgbouncer binary."),
    Setting("cache_dir", None, _optional_path,
            "Where the initdb template cache lives (default: ~/.cache/tenant-harness)."),
    Setting("keep_tmp", False, _bool, "Keep the stack's temporary folder after teardown, for debugging."),
    Setting("start_timeout", 30.0, float, "Seconds each server may take to become ready."),
    Setting("session_pool_size", 60, int,
            "PgBouncer pool size on the session route; keep it above any client pool."),
    Setting("transaction_pool_size", 10, int, "PgBouncer pool size on the transaction route."),
    Setting("pgbouncer_config", None, _optional_path,
            "Your production pgbouncer.ini: the settings of its [pgbouncer] section that change what clients see "
            f"({', '.join(CARRIED_SETTINGS)}) are carried over into both of the stack's PgBouncers. The harness "
            "keeps its own listen_addr, listen_port, unix_socket_dir, auth_type, auth_file, admin_users, "
            "stats_users, logfile, pidfile, [databases] and each route's pool_mode (listed as ignored); any "
            "other setting is an error. Your default_pool_size replaces the harness's on both routes "
            "(--session-pool-size, --transaction-pool-size): keep it above any client pool, or the session "
            "route ends in query_wait_timeout. Native and docker backends only."),
    Setting("pgbouncer_set", (), split_assignments,
            "One PgBouncer setting NAME=VALUE for both of the stack's PgBouncers, applied after "
            "--pgbouncer-config (it wins), e.g. --pgbouncer-set track_extra_parameters=search_path; the same "
            "names as --pgbouncer-config carries over. In the environment comma-separated, in [tool.harness] "
            "a list: pgbouncer_set = [\"server_reset_query_always=1\"]. A name the chosen PgBouncer does not "
            "know is an error before the stack starts. Native and docker backends only."),
    Setting("pgpool_config", None, _optional_path,
            "Your production pgpool.conf: the settings that change what a pooled connection carries "
            f"({', '.join(PGPOOL_CARRIED)}) are carried over into the Pgpool-II of a deployment that runs one "
            "(bookworm-pgpool). The harness keeps its own listening, backends, clustering mode, "
            "num_init_children, authentication, logging and query cache size (listed as ignored); any other "
            "setting is left out and counted. A name that misspells a carried one (Pgpool-II would ignore it "
            "without a word) and a value Pgpool-II would misread (connection_cache = maybe, read as on) are "
            "errors. Its include lines are followed. Only with a deployment that runs Pgpool-II."),
    Setting("pgpool_set", (), split_pgpool_assignments,
            "One Pgpool-II setting NAME=VALUE, applied after --pgpool-config (it wins), e.g. --pgpool-set "
            "reset_query_list=ABORT; the same names as --pgpool-config carries over (a value may be in single "
            "quotes). In the environment comma-separated, in [tool.harness] a list: pgpool_set = "
            "[\"connection_cache=off\"]. A name the Pgpool-II binary does not know, or a value it refuses, is an "
            "error before the stack starts. Only with a deployment that runs Pgpool-II."),
    Setting("pgagroal_config", None, _optional_path,
            "Your production pgagroal.conf: the settings of its [pgagroal] section that change what a pooled "
            f"connection carries ({', '.join(PGAGROAL_CARRIED)}) are carried over into the pgagroals of a "
            "deployment that runs them (trixie-pgagroal); pipeline sets the session route's pipeline "
            "(performance, session or auto), disconnect_client goes to the session route only. The harness "
            "keeps its own listening, logins, logging, TLS, failover, metrics and server sections (listed as "
            "ignored); any other setting is left out and counted. A name that misspells a carried one and a "
            "value pgagroal would misread (idle_timeout = 2m, validation = bogus: it runs with its default "
            "without a word) are errors. Only with a deployment that runs pgagroal."),
    Setting("pgagroal_set", (), split_pgagroal_assignments,
            "One pgagroal setting NAME=VALUE, applied after --pgagroal-config (it wins), e.g. --pgagroal-set "
            "pipeline=session; the same names as --pgagroal-config carries over. In the environment "
            "comma-separated, in [tool.harness] a list: pgagroal_set = [\"validation=foreground\"]. A setting "
            "the pgagroal binary does not take (a throwaway one runs with them and is read back) is an error "
            "before the stack starts. Only with a deployment that runs pgagroal."),
    Setting("report_dir", Path("reports"), _path, "Where run reports are written."),
    Setting("strategies", (), _names,
            "Strategies to verify, comma-separated: built-in names or package.module:attr "
            "(default: every built-in, checked against its expectation table)."),
    Setting("routes", ("direct", "session", "transaction"), _names,
            "Routes to run, comma-separated: direct, session, transaction."),
    Setting("scenarios", (), _names,
            "Scenarios to run, comma-separated (default: all but faults, which the nightly profile adds): "
            "the named ones, generated, hammer, faults."),
    Setting("tenants", 4, parse_tenants,
            "The tenant set: a count of tenant schemas to provision (at least 2; the first four are fixed names), "
            "or your own names, comma-separated (--tenants acme,tenant_acme,globex; in [tool.harness] a list: "
            "tenants = [\"acme\", \"tenant_acme\"]): at least two, each a valid schema name."),
    Setting("models", None, lambda v: str(v) if v not in (None, "") else None,
            "Your own SQLAlchemy metadata (package.module:attr) to create in every tenant schema "
            "next to the harness's models; it must hold tables in the 'tenant' schema. Every tenant's copy "
            "is seeded with canary rows, and generated programs and the hammer read and write them."),
    Setting("schema_sql", None, _optional_path,
            "An SQL file the harness runs once per database, as superuser, before it creates the test copies "
            "of --models: the types your migrations create and the metadata cannot describe (a DOMAIN, a "
            "UserDefinedType, an extension's type: CREATE EXTENSION IF NOT EXISTS citext). Enums, also "
            "create_type=False ones, need none: the harness creates them. Write it to run on a database that "
            "already has its objects (IF NOT EXISTS). In [tool.harness] relative to that pyproject.toml's folder."),
    Setting("actions", (), _names,
            "Your own code paths as steps, comma-separated package.module:func callables taking "
            "(session, tenant): generated programs and the hammer interleave them with the other steps "
            "(--actions a,b, or the option repeated)."),
    Setting("pythonpath", (), _names,
            "Folders put first on sys.path before your strategies, models and actions are imported, "
            "comma-separated, as pytest's pythonpath setting (default: the folder of the pyproject.toml "
            "holding [tool.harness], else the current folder). In [tool.harness] they are relative to "
            "that pyproject.toml's folder, elsewhere to the current folder."),
    Setting("env", (), _env_table,
            "Environment variables your strategies, models and actions need when they are imported (the "
            "settings of your app: DATABASE_URL, SECRET_KEY, ...), as a table: [tool.harness.env] "
            "DATABASE_URL = \"postgresql://localhost/app\". They are put into the environment before your "
            "code is imported, in worker processes too; a variable the environment already has wins, and so "
            "does one of --env-file. In the environment: HARNESS_ENV=NAME=VALUE,NAME=VALUE."),
    Setting("env_file", None, _optional_path,
            "An env file the harness loads before your code is imported: KEY=VALUE lines, # comments, values "
            "optionally in quotes (your app's .env). A variable the environment already has wins. Default: "
            "none. In [tool.harness] relative to that pyproject.toml's folder."),
    Setting("profile", "ci", str,
            "How hard generated programs search: dev (seconds), ci (the default of make verify), "
            "nightly (many more examples plus the hammer). HYPOTHESIS_PROFILE is read too."),
    Setting("derandomize", False, _bool,
            "Derive every generated program from the test itself, so a release gate is reproducible bit for bit."),
    Setting("seed", None, lambda v: None if v in (None, "") else int(v),
            "Seed for generated programs (default: a fresh one per run, printed with every failure)."),
    Setting("example_db", Path(".hypothesis/harness-examples"), _path,
            "Folder of the Hypothesis example database; keep it between nightly runs to replay old failures first."),
    Setting("hammer_threads", 8, int, "Worker threads of the hammer (a web server's thread pool)."),
    Setting("hammer_requests", None, lambda v: None if v in (None, "") else int(v),
            "Requests per hammer run (default: the profile's)."),
    Setting("hammer_seconds", None, lambda v: None if v in (None, "") else float(v),
            "Duration bound of a hammer run in seconds (default: the profile's)."),
    Setting("step_deadline", 10.0, float,
            "Seconds one step may take. A step still running then is stopped: the harness reads on the server "
            "what its backend waits on (the lock and the backend holding it) and cancels its statement "
            "(terminates the backend after a second deadline); the cell ends with a lock_wait finding and "
            "is inconclusive. At least 0.1."),
    Setting("decoys", True, _bool,
            "Put decoy copies of the tenant tables, owned by 'public', into public (a fallback to public "
            "then shows as cross_tenant_read; without decoys, as context_lost)."),
    Setting("jobs", None, lambda v: None if v in (None, "") else int(v),
            "Cells run on this many stacks at once, each in a process of its own (default: one per CPU core "
            "this process may use). Verdicts do not depend on it."),
    Setting("shard", None, _shard,
            "Run only shard K of N (K/N, e.g. 2/3): a deterministic 1/N of the cells; merge the shards' "
            "reports with `harness report merge`."),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

# Which settings each command takes on its command line (the CLI and a replay command both use them).
STACK_SETTINGS = ("backend", "deployment", "pg_bindir", "pgbouncer", "cache_dir", "keep_tmp", "start_timeout",
                  "session_pool_size", "transaction_pool_size", "postgres_image", "pgbouncer_image",
                  "direct_dsn", "session_dsn", "transaction_dsn", "superuser_dsn", "i_own_this_database",
                  "pgbouncer_config", "pgbouncer_set", "pgpool_config", "pgpool_set", "pgagroal_config",
                  "pgagroal_set")
VERIFY_SETTINGS = STACK_SETTINGS + ("deployments", "driver", "drivers", "routes", "scenarios", "profile", "tenants", "report_dir", "seed", "models", "schema_sql",
                                    "actions", "pythonpath", "env_file", "decoys", "example_db", "hammer_threads",
                                    "hammer_requests", "hammer_seconds", "jobs", "shard", "step_deadline")
# Settings given as a bare flag on the command line.
FLAGS = ("i_own_this_database",)
# Settings whose option may be repeated (each adds to the list).
REPEATABLE = ("actions", "pgbouncer_set", "pgpool_set", "pgagroal_set")


@dataclasses.dataclass(frozen=True)
class HarnessConfig:
    """All settings of one run. Build it with :func:`resolve_config`; the defaults live in :data:`SETTINGS`."""

    backend: str
    deployment: str | None
    deployments: tuple[str, ...]
    driver: str | None
    drivers: tuple[str, ...]
    postgres_image: str
    pgbouncer_image: str
    direct_dsn: str | None
    session_dsn: str | None
    transaction_dsn: str | None
    superuser_dsn: str | None
    i_own_this_database: bool
    pg_bindir: Path | None
    pgbouncer: Path | None
    cache_dir: Path | None
    keep_tmp: bool
    start_timeout: float
    session_pool_size: int
    transaction_pool_size: int
    pgbouncer_config: Path | None
    #: each NAME=VALUE, in the order given (a later one wins)
    pgbouncer_set: tuple[str, ...]
    pgpool_config: Path | None
    #: each NAME=VALUE, in the order given (a later one wins)
    pgpool_set: tuple[str, ...]
    pgagroal_config: Path | None
    #: each NAME=VALUE, in the order given (a later one wins)
    pgagroal_set: tuple[str, ...]
    report_dir: Path
    strategies: tuple[str, ...]
    routes: tuple[str, ...]
    scenarios: tuple[str, ...]
    tenants: int | tuple[str, ...]  # a count of default tenants, or the names given
    models: str | None
    schema_sql: Path | None
    actions: tuple[str, ...]
    #: absolute folders, resolved by :func:`resolve_config` (never empty after it)
    pythonpath: tuple[str, ...]
    #: (name, value) pairs of [tool.harness.env], in the order given
    env: tuple[tuple[str, str], ...]
    env_file: Path | None
    profile: str
    derandomize: bool
    seed: int | None
    example_db: Path
    hammer_threads: int
    hammer_requests: int | None
    hammer_seconds: float | None
    step_deadline: float
    decoys: bool
    jobs: int | None
    shard: tuple[int, int] | None
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def template_cache(self) -> Path:
        return self.cache_dir or _default_cache_dir()

    @property
    def runs_faults(self) -> bool:
        """The run includes the faults scenario: named, or by default in a profile that has it (nightly).
        Its stack then puts a fault proxy between the PgBouncers and PostgreSQL (native backend)."""
        return FAULTS_SCENARIO in self.scenarios or (not self.scenarios and self.profile in FAULT_PROFILES)


# A setting is declared once, in SETTINGS; the config object must hold exactly those.
if {f.name for f in dataclasses.fields(HarnessConfig)} - {"sources"} != set(SETTINGS_BY_NAME):
    raise ImportError("HarnessConfig's fields and SETTINGS differ: declare a setting in both, its default in SETTINGS")


def _pyproject_table(start: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The nearest pyproject.toml from ``start`` up, and its [tool.harness] table (None when it has none)."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            with candidate.open("rb") as handle:
                data = tomllib.load(handle)
            return data.get("tool", {}).get("harness"), candidate
    return None, None


def _absolute_pythonpath(folders: tuple[str, ...], origin: str, cwd: Path, pyproject: Path | None,
                         held: bool) -> tuple[str, ...]:
    """The pythonpath setting as absolute folders. As pytest's rootdir: the default is the folder of the
    pyproject.toml that holds [tool.harness] (the project's root), else the current folder; entries
    written there are relative to it, entries given elsewhere to the current folder."""
    root = pyproject.parent if pyproject is not None and held else cwd
    if not folders:
        return (str(root),)
    base = root if origin == "pyproject" else cwd
    return tuple(str((base / Path(folder).expanduser()).resolve()) for folder in folders)


def put_first_on_sys_path(folders: Sequence[str]) -> None:
    """Put ``folders`` first on sys.path, in their order, each once (as pytest does with its pythonpath)."""
    missing = [folder for folder in folders if folder not in sys.path]
    sys.path[:0] = missing
    if missing:
        importlib.invalidate_caches()  # a finder may have cached a listing from before the folder was there


def configured_pythonpath() -> tuple[str, ...]:
    """The pythonpath setting as the environment and the pyproject.toml of the current folder give it."""
    return resolve_config().pythonpath


def resolve_config(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> HarnessConfig:
    """Resolve every setting once: CLI > HARNESS_* env > [tool.harness] > default."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    env = os.environ if env is None else env
    cwd = (cwd or Path.cwd()).resolve()
    held, pyproject = _pyproject_table(cwd)
    table = {k.replace("-", "_"): v for k, v in (held or {}).items()}
    unknown = sorted(set(table) - set(SETTINGS_BY_NAME))
    if unknown:
        raise UsageError(
            f"Unknown setting(s) {', '.join(unknown)} in [tool.harness] of {pyproject}.",
            fix=[f"use one of: {', '.join(SETTINGS_BY_NAME)}"],
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        from_env = env.get(setting.env)
        if from_env is None and setting.name == "profile":
            from_env = env.get("HYPOTHESIS_PROFILE")
        for origin, raw in (
            ("cli", cli.get(setting.name)),
            ("env", from_env),
            ("pyproject", table.get(setting.name)),
        ):
            if raw is not None:
                try:
                    values[setting.name] = setting.parse(raw)
                except (TypeError, ValueError) as exc:
                    where = {"cli": setting.option, "env": setting.env,
                             "pyproject": f"[tool.harness] {setting.name}"}[origin]
                    raise UsageError(f"Bad value for {where}: {exc}.", fix=[setting.help]) from exc
                sources[setting.name] = origin
                break
        else:
            values[setting.name] = setting.default
            sources[setting.name] = "default"
    values["pythonpath"] = _absolute_pythonpath(values["pythonpath"], sources["pythonpath"], cwd, pyproject,
                                                held is not None)
    for name in ("pgbouncer_config", "pgpool_config", "pgagroal_config", "env_file", "schema_sql"):
        if values[name] is not None:  # a path in [tool.harness] is relative to its pyproject.toml
            base = pyproject.parent if sources[name] == "pyproject" and pyproject else cwd
            values[name] = base / values[name]
    if values["env_file"] is not None and not values["env_file"].is_file():
        setting = SETTINGS_BY_NAME["env_file"]
        raise UsageError(f"{setting.option} / {setting.env}: no env file at {values['env_file']}.",
                         checked=[f"{setting.option} ({setting.env}, [tool.harness] env_file) given "
                                  f"({sources['env_file']}); a relative path in [tool.harness] is relative to "
                                  f"its pyproject.toml, elsewhere to the current folder"],
                         fix=["give the path of your app's env file (KEY=VALUE lines)",
                              "or drop the setting and put the variables into [tool.harness.env]"])
    config = HarnessConfig(**values, sources=sources)
    if isinstance(config.tenants, tuple):
        tenant_set(config.tenants)  # every name checked before anything starts
    bounds = [("tenants", config.tenants if isinstance(config.tenants, int) else None, 2), ("hammer_threads", config.hammer_threads, 1),
              ("hammer_requests", config.hammer_requests, 1), ("hammer_seconds", config.hammer_seconds, 0.001),
              ("session_pool_size", config.session_pool_size, 1), ("transaction_pool_size", config.transaction_pool_size, 1),
              ("start_timeout", config.start_timeout, 0.001), ("jobs", config.jobs, 1),
              ("step_deadline", config.step_deadline, 0.1)]
    for name, value, least in bounds:
        if value is not None and value < least:
            setting = SETTINGS_BY_NAME[name]
            raise UsageError(f"{setting.option} / {setting.env} = {value}: it must be at least {least}.",
                             fix=[setting.help])
    # The team's pooler settings: each file read and every name and value checked before anything starts.
    for dialect in dialects().values():
        dialect.requested(getattr(config, dialect.config_setting), getattr(config, dialect.set_setting))
    if config.backend not in BACKENDS:
        raise UsageError(f"Unknown backend {config.backend!r}.", fix=[f"use one of: {', '.join(BACKENDS)}"])
    if config.backend == "external":
        refuse_pooler_settings_on_external(config)
    check_deployments(config)
    refuse_settings_of_poolers_not_run(config)
    check_drivers(config)
    if config.schema_sql is not None and not config.models:
        raise UsageError(f"--schema-sql {config.schema_sql}: the file prepares the test copies of --models, "
                         "and no --models is given: it would not be read.",
                         fix=["give --models package.module:Base (your declarative Base) with it",
                              "or drop --schema-sql (HARNESS_SCHEMA_SQL, [tool.harness] schema_sql)"])
    if config.profile not in PROFILE_NAMES:
        raise UsageError(f"Unknown profile {config.profile!r}.", fix=[f"use one of: {', '.join(PROFILE_NAMES)}"])
    unknown_routes = [r for r in config.routes if r not in ROUTE_NAMES]
    if unknown_routes or not config.routes:
        raise UsageError(f"Unknown route(s) {', '.join(unknown_routes) or '(none given)'}.",
                         fix=[f"use some of: {', '.join(ROUTE_NAMES)}"])
    return config


#: pooler kind -> its two settings: the team's file, and its NAME=VALUE items
POOLER_SETTINGS: dict[str, tuple[str, str]] = {
    dialect.kind: (dialect.config_setting, dialect.set_setting) for dialect in dialects().values()}


def given_pooler_settings(config: HarnessConfig, kind: str) -> list[Setting]:
    """The settings of the pooler ``kind`` this run was given (its file, or any NAME=VALUE)."""
    return [SETTINGS_BY_NAME[name] for name in POOLER_SETTINGS[kind] if getattr(config, name)]


def _given_where(config: HarnessConfig, given: Sequence[Setting]) -> list[str]:
    return [f"{s.option} ({s.env}) given ({config.sources.get(s.name, 'cli')})" for s in given]


def refuse_pooler_settings_on_external(config: HarnessConfig) -> None:
    """The external backend's poolers are run by someone else: the harness cannot set anything in them."""
    kinds = [kind for kind in POOLER_SETTINGS if given_pooler_settings(config, kind)]
    given = [s for kind in kinds for s in given_pooler_settings(config, kind)]
    if given:
        files = ", ".join(dialects()[kind].file_name for kind in kinds)
        raise UsageError(
            f"{' and '.join(s.option for s in given)}: the external backend cannot apply pooler settings.",
            checked=_given_where(config, given),
            fix=[f"the external backend's poolers are yours: set these in their own {files} (and reload them)",
                 "or run the native backend (or docker, for PgBouncer), which starts poolers with these settings"])


def run_deployments(config: HarnessConfig) -> tuple[str, ...]:
    """The deployments this run's stacks run: ``--deployments``, else ``--deployment``; none without one."""
    return config.deployments or ((config.deployment,) if config.deployment else ())


def run_poolers(config: HarnessConfig) -> tuple[str, ...]:
    """The kinds of pooler this run's stacks run: each deployment's; without a deployment, the PgBouncer the
    binary or image settings name."""
    names = run_deployments(config)
    return tuple(dict.fromkeys(deployment(name).pooler for name in names)) if names else ("pgbouncer",)


def refuse_settings_of_poolers_not_run(config: HarnessConfig) -> None:
    """Settings of a pooler no stack of the run starts would be read, checked and then left unused: a run the
    team would take for one with its settings. Refused, with the deployments that would use them."""
    running = run_poolers(config)
    for kind in POOLER_SETTINGS:
        given = given_pooler_settings(config, kind)
        if not given or kind in running:
            continue
        title = POOLERS[kind].title
        offering = [d.name for d in DEPLOYMENTS.values() if d.pooler == kind]
        if not offering:
            add = f"run a deployment of {title}"
        elif config.deployments:
            add = f"add {offering[0]} to --deployments"
        else:
            add = f"add --deployment {offering[0]}"
        ran = ", ".join(f"{name} ({POOLERS[deployment(name).pooler].title})" for name in run_deployments(config))
        raise UsageError(
            f"{' and '.join(s.option for s in given)} given but no deployment of this run runs {title}: {add} or "
            f"drop {'them' if len(given) > 1 else 'it'}.",
            checked=_given_where(config, given)
                    + [f"the run's deployments: {ran}" if ran else
                       "no deployment: the stack runs the PgBouncer the binary or image settings name"],
            fix=[f"{add} (the deployments that run {title}: {', '.join(offering) or 'none yet'})",
                 f"or drop {' and '.join(f'{s.option} ({s.env})' for s in given)}"])


#: the settings a deployment decides itself: its binaries (native) and images (docker)
NAMED_BY_A_DEPLOYMENT = ("pg_bindir", "pgbouncer", "postgres_image", "pgbouncer_image")


def without_deployment_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the HARNESS_* variables a deployment decides itself (a child that runs deployments)."""
    named = {SETTINGS_BY_NAME[name].env for name in NAMED_BY_A_DEPLOYMENT}
    return {key: value for key, value in environ.items() if key not in named}


def check_drivers(config: HarnessConfig) -> None:
    """Refuse an unknown driver, or one whose module is not installed, before anything starts."""
    for name in dict.fromkeys((config.driver, *config.drivers)):
        if name:
            check_installed(name)


def check_deployments(config: HarnessConfig) -> None:
    """Deployment names are known, and no other setting names other binaries or servers."""
    for name in (config.deployment, *config.deployments):
        if name is not None:
            deployment(name)
    if not (config.deployment or config.deployments):
        return
    given = SETTINGS_BY_NAME["deployments" if config.deployments else "deployment"]
    clashing = [SETTINGS_BY_NAME[name] for name in NAMED_BY_A_DEPLOYMENT
                if config.sources.get(name, "default") != "default"]
    if config.backend == "external" or clashing:
        what = "the external backend" if config.backend == "external" else ", ".join(
            f"{s.option} ({s.env})" for s in clashing)
        raise UsageError(f"{given.option}: a deployment names its own PostgreSQL and PgBouncer, and {what} "
                         "names others.",
                         fix=[f"drop {given.option} ({given.env}) to run the binaries, images or servers you named",
                              f"or drop {what} to run the deployment's"])


# -- the team's environment -----------------------------------------------------------------
#: the variables :func:`apply_team_environment` found for the team's code: name -> where its value came from
#: ("[tool.harness.env]", "env file PATH"), whether the value it set or one the environment already had won
TEAM_ENVIRONMENT: dict[str, str] = {}
#: the env files read so far (what an import failure names as checked)
ENV_FILES_READ: list[str] = []


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file: ``KEY=VALUE`` lines (an ``export`` before the name is allowed), blank
    lines and ``#`` comments skipped, a value in single or double quotes taken as written (a double-quoted
    one with ``\"`` and ``\n`` escapes), an unquoted one up to a `` #`` comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"The env file {path} cannot be read: {exc}.",
                         fix=["give a readable UTF-8 file of KEY=VALUE lines (--env-file, HARNESS_ENV_FILE, "
                              "[tool.harness] env_file)"]) from exc
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not ENV_NAME.fullmatch(name):
            raise UsageError(f"{path}:{number}: {line!r} is not a KEY=VALUE line.",
                             fix=["write one variable a line as NAME=value (# starts a comment)"])
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\([\\"n])', lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        found[name] = value
    return found


def team_environment(config: HarnessConfig) -> dict[str, tuple[str, str]]:
    """name -> (value, where it comes from) of the variables the team's code gets: [tool.harness.env],
    then the env file (its values win over the table's)."""
    found = {name: (value, "[tool.harness.env]") for name, value in config.env}
    if config.env_file is not None:
        found.update((name, (value, f"env file {config.env_file}"))
                     for name, value in read_env_file(config.env_file).items())
    return found


def apply_team_environment(config: HarnessConfig) -> dict[str, str]:
    """Put the team's variables (:func:`team_environment`) into ``os.environ`` before its code is imported; a
    variable the environment already has wins. Worker processes inherit ``os.environ`` (forked or spawned),
    so they see the same values. Returns name -> origin of the variables it set."""
    if config.env_file is not None and str(config.env_file) not in ENV_FILES_READ:
        ENV_FILES_READ.append(str(config.env_file))
    applied: dict[str, str] = {}
    for name, (value, origin) in team_environment(config).items():
        TEAM_ENVIRONMENT.setdefault(name, origin)
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = TEAM_ENVIRONMENT[name] = origin
    return applied


def _env_like(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", name))


def _raised_by_environ(exc: BaseException) -> bool:
    """The innermost frame of the traceback is ``os.environ[...]`` (``os._Environ.__getitem__``)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == os.__file__ \
        and tb.tb_frame.f_code.co_name == "__getitem__"


def _settings_prefix(exc: BaseException) -> str:
    """The ``env_prefix`` of the pydantic-settings class whose validation failed, read from the frames that
    raised it (``self`` of its ``__init__``); "" when none is found."""
    tb = exc.__traceback__
    while tb is not None:
        for local in ("self", "__pydantic_self__"):
            model_config = getattr(type(tb.tb_frame.f_locals.get(local)), "model_config", None)
            if isinstance(model_config, Mapping) and model_config.get("env_prefix"):
                return str(model_config["env_prefix"])
        tb = tb.tb_next
    return ""


def _pydantic_settings(exc: BaseException) -> list[str] | None:
    """A pydantic ``ValidationError`` (told by its class's name and module: pydantic need not be installed
    here): the variables its errors name, each with what is wrong with it."""
    if not any(cls.__name__ == "ValidationError" and cls.__module__.split(".")[0] in ("pydantic", "pydantic_core")
               for cls in type(exc).__mro__):
        return None
    try:
        errors = list(exc.errors())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an older or odd ValidationError: no names, still a settings error
        return []
    prefix = _settings_prefix(exc)
    named = []
    for error in errors:
        field = next((str(part) for part in error.get("loc", ()) if isinstance(part, str)), "")
        if field:
            problem = "missing" if error.get("type") == "missing" else f"invalid: {error.get('msg', '')}"
            named.append(f"{(prefix + field).upper()} ({problem})")
    return list(dict.fromkeys(named))


def missing_settings(exc: BaseException) -> list[str] | None:
    """What an import failure says about the app's settings: None when it does not look like missing
    settings; else the variables it names (possibly none), for a pydantic ``ValidationError`` or a
    ``KeyError`` from ``os.environ[...]`` or of an environment-like name, anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        named = _pydantic_settings(current)
        if named is not None:
            return named
        if isinstance(current, KeyError) and current.args and isinstance(current.args[0], str):
            key = current.args[0]
            if _raised_by_environ(current) or _env_like(key):
                return [f"{key} (missing)"]
        current = current.__cause__ or current.__context__
    return None


def _settings_refusal(what: str, module_name: str, exc: BaseException, named: list[str]) -> UsageError:
    """The import failure of a module that reads settings the environment lacks, with the ways to give them."""
    names = [item.split(" ", 1)[0] for item in named]
    example = names[0] if names else "DATABASE_URL"
    given = sorted(TEAM_ENVIRONMENT)
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return UsageError(
        f"{what}: module {module_name!r} does not import: it reads settings from the environment, and "
        + (f"these are missing or invalid: {', '.join(named)}" if named else "some are missing or invalid")
        + f" ({type(exc).__name__}: {first_line}).",
        checked=[f"the environment of this process ({', '.join(n for n in names if n in os.environ) or 'none of them'}"
                 " set)",
                 f"[tool.harness.env] and env files ({', '.join(ENV_FILES_READ) or 'none given'}): "
                 + (f"they set {', '.join(given)}" if given else "they set nothing")],
        fix=[f"add them to pyproject.toml: [tool.harness.env] {example} = \"...\" (the harness puts them into the "
             "environment before it imports your code; a variable already set wins). The harness gives your "
             "strategy its own URL of each route: a placeholder that passes validation is enough for a setting "
             "your code only reads when it is imported",
             "or give an env file of KEY=VALUE lines (your app's .env): env_file in [tool.harness], --env-file "
             "or HARNESS_ENV_FILE",
             f"or export {', '.join(names) or 'them'} in the shell that runs the harness"])


def import_user_module(what: str, module_name: str, pythonpath: Sequence[str] | None) -> Any:
    """Import a module of the user's code with the pythonpath folders first on sys.path.

    ``pythonpath``: the resolved setting (:attr:`HarnessConfig.pythonpath`); the caller has applied the
    team's environment (:func:`apply_team_environment`). None reads both from the environment and the
    pyproject.toml of the current folder. A failure names the folders it looked in; one that looks like
    missing settings (:func:`missing_settings`) names the variables and how to give them.
    """
    if pythonpath is None:
        config = resolve_config()
        apply_team_environment(config)
        folders = config.pythonpath
    else:
        folders = tuple(pythonpath)
    put_first_on_sys_path(folders)
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure is the user's to fix
        missing = isinstance(exc, ModuleNotFoundError) and (module_name + ".").startswith(f"{exc.name}.")
        named = None if missing else missing_settings(exc)
        if named is not None:
            raise _settings_refusal(what, module_name, exc, named) from exc
        raise UsageError(
            f"{what}: module {module_name!r} does not import ({type(exc).__name__}: {exc}).",
            checked=[f"sys.path, first the pythonpath folder(s): {', '.join(folders)}"],
            fix=[f"put the package of {module_name!r} in one of those folders: run harness from your project's "
                 "root (the folder of the pyproject.toml holding [tool.harness])",
                 "or set pythonpath (in [tool.harness], or HARNESS_PYTHONPATH) to the folder(s) your "
                 "package lives in (e.g. pythonpath = [\"src\"])"] if missing else
                [f"fix the error the module raised when it was imported (a module it imports must be installed "
                 f"in this Python, {sys.executable})"]) from exc

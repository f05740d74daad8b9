"""The team's pooler settings in the configuration: --pgbouncer-*, --pgpool-*, --pgagroal-* (config and set).

The same rules for the three poolers, each checked on every one: the three sources, an unknown name refused
with the option that gave it, settings of a pooler no deployment of the run runs, the external backend, the
replay command of a cell and what a stack asks for (``requested_for``). No server: a pooler's own values are
checked in tests/test_pgbouncer_settings.py, tests/test_pgpool.py and tests/test_pgagroal.py.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from harness.cli import _cli_values, build_parser
from harness.config import POOLER_SETTINGS, REPEATABLE, STACK_SETTINGS, resolve_config, run_poolers
from harness.errors import UsageError
from harness.pooler_settings import dialect_of, requested_for
from harness.pytest_plugin import PLUGIN_SETTINGS
from harness.workload.scenarios import CELL_SETTINGS


@dataclasses.dataclass(frozen=True)
class Pooler:
    kind: str
    title: str
    #: a built-in deployment that runs it
    deployment: str
    #: two settings it carries, as --<kind>-set takes them
    items: tuple[str, str]
    #: a production file that sets the first item's name to another value, and what that value is
    conf: str
    conf_value: str
    #: a line that misspells a carried name, and the name
    misspelled: str
    meant: str

    @property
    def env(self) -> str:
        return f"HARNESS_{self.kind.upper()}_SET"

    @property
    def file_name(self) -> str:
        return dialect_of(self.kind).file_name


POOLERS = [
    Pooler("pgbouncer", "PgBouncer", "bookworm", ("query_timeout=4", "server_lifetime=60"),
           "[pgbouncer]\nquery_timeout = 9\n", "9", "[pgbouncer]\nserver_reset_query_alway = 1\n",
           "server_reset_query_always"),
    Pooler("pgpool", "Pgpool-II", "bookworm-pgpool", ("max_pool=2", "connection_cache=off"),
           "max_pool = 3\n", "3", "conection_cache = off\n", "connection_cache"),
    Pooler("pgagroal", "pgagroal", "trixie-pgagroal", ("idle_timeout=5", "pipeline=session"),
           "[pgagroal]\nidle_timeout = 60\n", "60", "[pgagroal]\nidle_timout = 60\n", "idle_timeout"),
]
BY_KIND = {p.kind: p for p in POOLERS}
EXTERNAL = {"backend": "external", "direct_dsn": "postgresql://app:x@127.0.0.1:1/db",
            "superuser_dsn": "postgresql://admin:x@127.0.0.1:1/db"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(params=POOLERS, ids=lambda p: p.kind)
def pooler(request) -> Pooler:
    return request.param


# -- the options ------------------------------------------------------------------------------------------------
def test_every_pooler_has_its_two_options_on_every_front_end():
    assert set(POOLER_SETTINGS) == set(BY_KIND)
    for kind, (config, items) in POOLER_SETTINGS.items():
        assert (config, items) == (f"{kind}_config", f"{kind}_set")
        assert items in REPEATABLE
        assert {config, items} <= set(STACK_SETTINGS) & set(PLUGIN_SETTINGS) & set(CELL_SETTINGS)
    for command in ("up", "verify"):
        args = build_parser().parse_args([command, "--pgpool-config", "p.conf", "--pgagroal-set", "pipeline=session",
                                          "--pgagroal-set", "idle_timeout=5"])
        assert (args.pgpool_config, args.pgagroal_set) == ("p.conf", ["pipeline=session", "idle_timeout=5"])


def test_the_options_from_the_command_line_the_environment_and_pyproject(pooler, tmp_path):
    first, second = pooler.items
    write(tmp_path / "conf" / pooler.file_name, pooler.conf)
    write(tmp_path / "pyproject.toml", f'[tool.harness]\ndeployment = "{pooler.deployment}"\n'
                                       f'{pooler.kind}_set = ["{second}"]\n'
                                       f'{pooler.kind}_config = "conf/{pooler.file_name}"\n')
    from_pyproject = resolve_config({}, env={}, cwd=tmp_path)
    assert getattr(from_pyproject, f"{pooler.kind}_set") == (second,)
    # a path in [tool.harness] is relative to its pyproject.toml
    assert getattr(from_pyproject, f"{pooler.kind}_config") == tmp_path / "conf" / pooler.file_name
    from_env = resolve_config({}, env={pooler.env: f"{first},{second}"}, cwd=tmp_path)
    assert getattr(from_env, f"{pooler.kind}_set") == (first, second)
    args = build_parser().parse_args(["verify", f"--{pooler.kind}-set", second, f"--{pooler.kind}-set", first])
    from_cli = resolve_config(_cli_values(args), env={pooler.env: first}, cwd=tmp_path)
    assert getattr(from_cli, f"{pooler.kind}_set") == (second, first)
    # What a stack of this pooler is given: the file's, then each item (a later one wins, and comes last).
    settings = requested_for(from_cli, pooler.kind)
    name = first.split("=")[0]
    assert list(settings.values)[-1] == name and settings.values[name] == first.split("=")[1]
    assert settings.origins[name] == f"--{pooler.kind}-set"
    assert requested_for(from_pyproject, pooler.kind).values[name] == pooler.conf_value
    # ... and no other pooler's.
    for other in set(BY_KIND) - {pooler.kind}:
        assert not requested_for(from_cli, other)


def test_requested_for_names_the_poolers_it_knows():
    config = resolve_config({}, env={}, cwd=Path("/"))
    assert [bool(requested_for(config, kind)) for kind in BY_KIND] == [False, False, False]
    with pytest.raises(ValueError, match="pooler 'odyssey': the harness knows pgbouncer, pgpool, pgagroal"):
        requested_for(config, "odyssey")


# -- refused, naming the option ---------------------------------------------------------------------------------
def test_an_unknown_name_is_refused_naming_the_option_that_gave_it(pooler, tmp_path):
    given = {"deployment": pooler.deployment}
    with pytest.raises(UsageError, match=f"Bad value for --{pooler.kind}-set: no_such_setting is not a "
                                         f"{pooler.title} setting the harness carries over"):
        resolve_config({**given, f"{pooler.kind}_set": ["no_such_setting=1"]}, env={}, cwd=tmp_path)
    with pytest.raises(UsageError, match=f"Bad value for {pooler.env}: no_such_setting"):
        resolve_config(given, env={pooler.env: "no_such_setting=1"}, cwd=tmp_path)
    project = write(tmp_path / "project" / "pyproject.toml",
                    f'[tool.harness]\n{pooler.kind}_set = ["no_such_setting=1"]\n').parent
    with pytest.raises(UsageError, match=rf"Bad value for \[tool.harness\] {pooler.kind}_set: no_such_setting"):
        resolve_config(given, env={}, cwd=project)
    # In the team's file: a misspelled carried name, with its line and the name it looks like.
    conf = write(tmp_path / pooler.file_name, pooler.misspelled)
    with pytest.raises(UsageError) as refused:
        resolve_config({**given, f"{pooler.kind}_config": str(conf)}, env={}, cwd=tmp_path)
    text = str(refused.value)
    assert f"--{pooler.kind}-config {conf}:" in text and f"is not a {pooler.title} setting" in text
    assert f"did you mean {pooler.meant}?" in text and "To fix this" in text
    with pytest.raises(UsageError, match=f"--{pooler.kind}-config .*: no such file"):
        resolve_config({**given, f"{pooler.kind}_config": str(tmp_path / "absent")}, env={}, cwd=tmp_path)


@pytest.mark.parametrize(("kind", "item", "problem"), [
    ("pgbouncer", "server_lifetime=1\r2", "holds a line break"),
    ("pgpool", "connection_cache=maybe", "is not a boolean; Pgpool-II would read it as on"),
    ("pgpool", "max_pool=0", "serve no client"),
    ("pgpool", "child_life_time=soon", "is not a time"),
    ("pgagroal", "idle_timeout=2m", "no unit"),
    ("pgagroal", "validation=bogus", "is not one of off, foreground, background"),
    ("pgagroal", "max_connections=99999", r"outside 1 \.\. 10000"),
])
def test_a_value_the_pooler_would_misread_is_refused_when_the_configuration_resolves(kind, item, problem, tmp_path):
    with pytest.raises(UsageError, match=f"Bad value for --{kind}-set: .*{problem}"):
        resolve_config({"deployment": BY_KIND[kind].deployment, f"{kind}_set": [item]}, env={}, cwd=tmp_path)


# -- a pooler the run does not run ------------------------------------------------------------------------------
def test_settings_of_a_pooler_no_deployment_of_the_run_runs_are_refused(pooler, tmp_path):
    first = pooler.items[0]
    others = tuple(p.deployment for p in POOLERS if p.kind != pooler.kind)
    with pytest.raises(UsageError) as refused:
        resolve_config({"deployment": others[0], f"{pooler.kind}_set": [first]}, env={}, cwd=tmp_path)
    text = str(refused.value)
    assert text.startswith(f"--{pooler.kind}-set given but no deployment of this run runs {pooler.title}: add "
                           f"--deployment {pooler.deployment} or drop it.")
    assert f"the run's deployments: {others[0]}" in text and f"or drop --{pooler.kind}-set ({pooler.env})" in text
    # Every deployment of a matrix run another pooler's: add it to the list. A file and items: drop them.
    conf = write(tmp_path / pooler.file_name, pooler.conf)
    with pytest.raises(UsageError, match=f"--{pooler.kind}-config and --{pooler.kind}-set given but no deployment "
                                         f"of this run runs {pooler.title}: add {pooler.deployment} to "
                                         "--deployments or drop them"):
        resolve_config({"deployments": ",".join(others), f"{pooler.kind}_set": [first],
                        f"{pooler.kind}_config": str(conf)}, env={}, cwd=tmp_path)
    # A run one of whose deployments runs it takes them (each stack gets its own pooler's).
    mixed = resolve_config({"deployments": ",".join((*others, pooler.deployment)), f"{pooler.kind}_set": [first]},
                           env={}, cwd=tmp_path)
    assert set(run_poolers(mixed)) == set(BY_KIND)


def test_without_a_deployment_only_pgbouncer_settings_apply(tmp_path):
    plain = resolve_config({"pgbouncer_set": ["query_timeout=4"]}, env={}, cwd=tmp_path)
    assert run_poolers(plain) == ("pgbouncer",) and requested_for(plain, "pgbouncer").values == {"query_timeout": "4"}
    for kind in ("pgpool", "pgagroal"):
        with pytest.raises(UsageError) as refused:
            resolve_config({f"{kind}_set": [BY_KIND[kind].items[0]]}, env={}, cwd=tmp_path)
        assert (f"--{kind}-set given but no deployment of this run runs {BY_KIND[kind].title}: add --deployment "
                f"{BY_KIND[kind].deployment} or drop it") in str(refused.value)
        assert "no deployment: the stack runs the PgBouncer" in str(refused.value)


def test_the_external_backend_refuses_every_poolers_settings(pooler, tmp_path):
    conf = write(tmp_path / pooler.file_name, pooler.conf)
    with pytest.raises(UsageError) as refused:
        resolve_config({**EXTERNAL, f"{pooler.kind}_config": str(conf)}, env={pooler.env: pooler.items[0]},
                       cwd=tmp_path)
    text = str(refused.value)
    assert text.startswith(f"--{pooler.kind}-config and --{pooler.kind}-set: the external backend cannot apply "
                           "pooler settings.")
    assert f"set these in their own {pooler.file_name}" in text and f"({pooler.env}) given (env)" in text


# -- a replay runs the cell's own deployment --------------------------------------------------------------------
def test_a_replay_gives_each_deployments_cell_only_its_own_poolers_settings(tmp_path):
    from harness.jobs import verify_replay
    from harness.tenancy.strategy import load_strategy
    from harness.workload.generated import PROFILES

    given = {f"{p.kind}_set": list(p.items) for p in POOLERS}
    config = resolve_config({"deployments": ",".join(p.deployment for p in POOLERS), **given}, env={}, cwd=tmp_path)
    strategy = load_strategy("search_path_set", config.pythonpath)
    for pooler in POOLERS:
        # verify runs each deployment's cells on a config of that deployment alone (harness.verify)
        cell_config = dataclasses.replace(config, deployment=pooler.deployment, deployments=())
        command = verify_replay(cell_config, seed=7)(strategy, "session", "generated", PROFILES["ci"])
        assert f"--{pooler.kind}-set {pooler.items[0]} --{pooler.kind}-set {pooler.items[1]}" in command
        assert [p.kind for p in POOLERS if f"--{p.kind}-set" in command] == [pooler.kind]
        again = resolve_config(_cli_values(build_parser().parse_args(shlex.split(command)[1:])), env={},
                               cwd=tmp_path)
        assert requested_for(again, pooler.kind) == requested_for(cell_config, pooler.kind)

"""The rough edges a real integration hit (issue 14): replay commands, sizes, wording, layouts, the
migration table, imports from the project's root, the environment, declarative shared models."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings

from harness.deployments import DeploymentFacts
from harness.checks import Verdict, coverage
from harness.checks.history import DEFAULT_SEARCH_PATH, ConnectionState, History, ProbeRecord, StepRecord
from harness.checks.pool import check_pool_pollution
from harness.checks.steps import drawable, step_kind
from harness.cli import build_parser
from harness.config import SETTINGS, put_first_on_sys_path, resolve_config
from harness.errors import UsageError
from harness.jobs import _worker, environment, verify_replay
from harness.pytest_plugin import PLUGIN_SETTINGS, replay_in_pytest
from harness.report.migration import migration_rows
from harness.team import load_team
from harness.tenancy.models import SHARED, model_set
from harness.tenancy.strategy import load_strategy
from harness.tenancy.tenants import DEFAULT_TENANTS
from harness.workload import scenarios
from harness.workload.cell import CellResult
from harness.workload.generated import PROFILES, programs
from harness.workload.named import NAMED_SCENARIOS

USER_CODE = {
    "userapp/__init__.py": "",
    "userapp/tenancy.py": """
        from harness.tenancy.strategies.builtin import translate_map_pinned


        def make(url):
            return translate_map_pinned(url)
    """,
    "userapp/models.py": """
        from sqlalchemy import Integer, String
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


        class Base(DeclarativeBase):
            pass


        class Invoice(Base):
            __tablename__ = "invoice"
            __table_args__ = {"schema": "tenant"}
            id: Mapped[int] = mapped_column(Integer, primary_key=True)
            owner: Mapped[str] = mapped_column(String(80))
    """,
    "userapp/actions.py": """
        from sqlalchemy import text


        def count_invoices(session, tenant):
            return session.execute(text("SELECT count(*) FROM invoice")).scalar()
    """,
}


def user_project(folder: Path, harness_table: str = 'strategies = ["userapp.tenancy:make"]\n') -> Path:
    """A project of a team's: its pyproject.toml with [tool.harness], and its package ``userapp``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("[project]\nname = 'userapp'\n\n[tool.harness]\n" + harness_table)
    for name, text in USER_CODE.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def clean_imports(monkeypatch):
    """Whatever a test puts on sys.path or imports of ``userapp`` is gone after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n in sys.modules if n == "userapp" or n.startswith("userapp.")]:
        del sys.modules[name]


# -- 1. the replay command reruns exactly its cell ----------------------------------------------
def replayed_config(command: str, cwd: Path):
    """The configuration `harness verify` resolves from a printed replay command (its variables included)."""
    words = shlex.split(command)
    env = {}
    while "=" in words[0] and words[0].split("=", 1)[0].startswith("HARNESS_"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[:2] == ["harness", "verify"], command
    args = build_parser().parse_args(words[1:])
    cli = {setting.name: getattr(args, setting.name, None) for setting in SETTINGS}
    cli["strategies"] = ",".join(args.strategy)  # as cmd_verify does
    cli["derandomize"] = True if args.derandomize else None
    return resolve_config(cli, env=env, cwd=cwd)


def test_a_cli_replay_gives_every_setting_that_decides_the_cell(tmp_path, clean_imports):
    project = user_project(tmp_path / "app")
    config = resolve_config({"strategies": "userapp.tenancy:make", "routes": "direct,transaction",
                             "scenarios": "after_commit,generated,hammer", "models": "userapp.models:Base",
                             "actions": ["userapp.actions:count_invoices", "userapp.actions:other"],
                             "tenants": "3", "decoys": "0", "profile": "dev", "hammer_requests": "150",
                             "example_db": str(tmp_path / "examples")}, env={}, cwd=project)
    spec = load_strategy("userapp.tenancy:make", config.pythonpath)
    replay = verify_replay(config, seed=1234)
    elsewhere = tmp_path / "elsewhere"  # no pyproject.toml: everything comes from the command itself
    elsewhere.mkdir()

    generated = replay(spec, "transaction", "generated", PROFILES["dev"])
    again = replayed_config(generated, elsewhere)
    assert (again.strategies, again.routes, again.scenarios) == (("userapp.tenancy:make",), ("transaction",),
                                                                 ("generated",))
    for name in ("models", "actions", "tenants", "decoys", "profile", "example_db", "pythonpath"):
        assert getattr(again, name) == getattr(config, name), name
    assert again.seed == 1234 and not again.derandomize
    assert f"--pythonpath {project}" in generated and not generated.startswith("HARNESS_")
    assert generated.count("--actions") == 2  # the option is repeatable, one item each
    assert "--hammer-requests" not in generated  # the hammer's bounds do not decide a generated cell

    hammer = replayed_config(replay(spec, "direct", "hammer", PROFILES["dev"]), elsewhere)
    assert hammer.hammer_requests == 150 and hammer.scenarios == ("hammer",) and hammer.routes == ("direct",)
    assert hammer.example_db == resolve_config({}, env={}, cwd=elsewhere).example_db

    derandomized = verify_replay(dataclasses.replace(config, derandomize=True), seed=1234)
    assert replayed_config(derandomized(spec, "direct", "after_commit", PROFILES["dev"]), elsewhere).derandomize


def test_a_builtin_cell_replays_without_an_import_path_and_defaults_stay_out(tmp_path):
    config = resolve_config({"profile": "ci"}, env={}, cwd=tmp_path)
    command = verify_replay(config, seed=7)(load_strategy("search_path_set", config.pythonpath), "session",
                                            "after_rollback", PROFILES["ci"])
    assert command == ("harness verify --strategy search_path_set --routes session --scenarios after_rollback "
                       "--profile ci --seed 7")


def test_a_replay_in_pytest_names_the_test_and_gives_what_the_plugin_has_no_option_for(tmp_path, clean_imports):
    project = user_project(tmp_path / "app")
    config = resolve_config({"strategies": "userapp.tenancy:make", "tenants": "5",
                             "actions": ["userapp.actions:count_invoices"]}, env={}, cwd=project)
    spec = load_strategy("userapp.tenancy:make", config.pythonpath)
    command = replay_in_pytest(config, 99, "scenarios/test_x.py::test_y[userapp.tenancy:make-session]")(
        spec, "session", "hammer", PROFILES["ci"])
    words = shlex.split(command)
    env = dict(w.split("=", 1) for w in words if w.startswith("HARNESS_"))
    options = dict(w[len("--harness-"):].split("=", 1) for w in words if w.startswith("--harness-"))
    assert words[words.index("pytest") + 1] == "scenarios/test_x.py::test_y[userapp.tenancy:make-session]"
    assert set(options) <= {name.replace("_", "-") for name in PLUGIN_SETTINGS}
    assert options["seed"] == "99" and options["tenants"] == "5" and options["strategies"] == "userapp.tenancy:make"
    assert env == {"HARNESS_ACTIONS": "userapp.actions:count_invoices", "HARNESS_PYTHONPATH": str(project)}


def test_named_and_hammer_cells_get_a_replay_when_they_fail_and_not_when_they_pass(tmp_path, monkeypatch):
    calls = []
    verdicts = {"after_commit": Verdict.FAIL, "fresh_session": Verdict.PASS, "hammer": Verdict.FAIL}

    def canned(name):
        def run(ctx, spec, route):
            history = History(strategy=spec.name, route=route, tenants=DEFAULT_TENANTS, schemas=DEFAULT_TENANTS)
            return CellResult(spec.name, route, name, history, [], coverage(history), verdicts[name], "canned", 0.1)
        return scenarios.Scenario(name, name, run)

    for name in verdicts:
        monkeypatch.setitem(scenarios.SCENARIOS, name, canned(name))
    config = resolve_config({}, env={}, cwd=tmp_path)
    ctx = scenarios.CellContext(None, None, config, 5, gate=True,
                                replay=lambda *args: calls.append(args) or f"replay {args[2]}")
    spec = load_strategy("translate_map", config.pythonpath)
    results = {name: scenarios.run_scenario(ctx, spec, "transaction", name) for name in verdicts}
    assert results["after_commit"].replay == "replay after_commit"
    assert results["hammer"].replay == "replay hammer"
    assert results["fresh_session"].replay is None
    assert [(c[1], c[2], c[3].name) for c in calls] == [("transaction", "after_commit", "ci"),
                                                        ("transaction", "hammer", "ci")]


# -- 3. a hammer's pool finding names the request that ended, not "step 0" ------------------------
def polluted(pid: int) -> ConnectionState:
    return ConnectionState(pid=pid, search_path="acme, public", current_user="app", session_user="app")


def test_a_hammer_pool_finding_names_the_thread_and_request_seen_last_on_the_backend():
    history = History(strategy="demo", route="transaction", tenants=("acme", "globex"), schemas=("acme", "globex"))
    history.steps = [StepRecord(1, 0, 1, "acme", "orm_select_all", pid=4242),
                     StepRecord(2, 3, 17, "globex", "orm_select_pk", pid=4242),
                     StepRecord(3, 1, 18, "acme", "orm_select_pk", pid=5151)]
    history.probes = [ProbeRecord(4, 0, "pgbouncer:transaction", (polluted(4242), polluted(6000)))]
    first, second = check_pool_pollution(history)
    assert "step 0" not in first.explanation and "step 0" not in second.explanation
    assert first.explanation.startswith("after request 17 of thread 3 ended (for 'globex'")
    assert "backend 4242" in first.explanation and first.steps == (2,)
    assert "no recorded step names backend 6000" in second.explanation and second.steps == ()


def test_a_program_pool_finding_keeps_the_step_that_ended_the_request():
    history = History(strategy="demo", route="transaction", tenants=("acme",), schemas=("acme",))
    history.steps = [StepRecord(1, 0, 0, "acme", "orm_select_all", pid=4242),
                     StepRecord(2, 0, 0, "acme", "end_request", style="control")]
    history.probes = [ProbeRecord(3, 2, "pgbouncer:transaction", (polluted(4242),)),
                      ProbeRecord(4, 2, "engine", (ConnectionState(4242, DEFAULT_SEARCH_PATH, "app", "app"),))]
    (finding,) = check_pool_pollution(history)
    assert finding.explanation.startswith("after step 2 ended a request, pgbouncer:transaction connection on backend "
                                          "4242 still carried search_path = acme, public")
    assert finding.steps == (2,)


# -- 4. no step a layout cannot run ---------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(programs(DEFAULT_TENANTS, layout="rls"))
def test_a_program_generated_for_the_rls_layout_has_no_step_the_layout_excludes(program):
    steps = {step for requests in program.clients for request in requests for step in request.steps}
    assert all("rls" in step_kind(step).layouts for step in steps), steps


def test_qualified_raw_steps_run_in_the_schema_layout_only_also_in_named_scenarios_and_the_hammer():
    for name in ("raw_select_qualified", "raw_insert_qualified"):
        assert step_kind(name).layouts == ("schema",)
        assert name not in drawable(layout="rls") and name not in drawable(hammer=True, layout="rls")
        assert name in drawable(layout="schema")
    for scenario in NAMED_SCENARIOS.values():
        rls = scenario.program(DEFAULT_TENANTS, layout="rls")
        assert all("rls" in step_kind(s).layouts for c in rls.clients for r in c for s in r.steps), scenario.name
        rls.order()  # a valid interleaving after the steps left out
    schema_raw = NAMED_SCENARIOS["raw_text"].program(DEFAULT_TENANTS, layout="schema")
    assert {"raw_select_qualified", "raw_insert_qualified"} <= {s for c in schema_raw.clients for r in c
                                                               for s in r.steps}


# -- 5. the migration comparison ------------------------------------------------------------------
def cell(strategy, route, scenario, verdict_, layout="schema", schema_in_sql=None):
    return {"strategy": strategy, "route": route, "scenario": scenario, "verdict": verdict_, "layout": layout,
            "schema_in_sql": schema_in_sql}


def test_the_migration_table_blames_a_pooled_route_only_for_what_passes_on_direct():
    cells = [cell("local", route, "after_commit", "fail") for route in ("direct", "session", "transaction")]
    cells += [cell("local", route, "pool_state", "pass" if route == "direct" else "fail")
              for route in ("direct", "session", "transaction")]
    cells += [cell("sticky", "transaction", "after_commit", "fail"), cell("sticky", "direct", "after_commit", "fail"),
              cell("sticky", "transaction", "raw_text", "fail")]
    rows = {row["strategy"]: row for row in migration_rows(cells)}
    transaction = rows["local"]["transaction_mode"]
    assert transaction["value"] == "no"
    assert "1 not passed here but passed on direct: pool_state@transaction" in transaction["detail"]
    assert "1 not passed on direct either (the layer's, not the pooler's): after_commit@transaction" in \
        transaction["detail"]
    # Everything failing on a pooled route also fails on direct: not the pooler's.
    only_layer = migration_rows([c for c in cells if c["scenario"] == "after_commit"])[0]["session_mode"]
    assert only_layer["value"] == "as direct" and "not the pooler's" in only_layer["detail"]
    assert "not measured on direct: raw_text@transaction" in rows["sticky"]["transaction_mode"]["detail"]
    sound = migration_rows([cell("pinned", route, "after_commit", "pass") for route in ("direct", "transaction")])
    assert sound[0]["transaction_mode"] == {"value": "yes", "detail": "1 of 1 cell(s) passed"}


def test_the_migration_table_says_how_many_places_it_left_out():
    many = migration_rows([cell("leaky", "transaction", f"s{i}", "fail") for i in range(9)])[0]["transaction_mode"]
    assert many["detail"].endswith("s0@transaction, s1@transaction, s2@transaction, s3@transaction, "
                                   "s4@transaction, s5@transaction and 3 more")
    few = migration_rows([cell("leaky", "direct", "after_commit", "fail")])[0]["survives_commit"]
    assert few == {"value": "no", "detail": "1 of 1 cell(s) not passed: after_commit@direct"}


def test_the_migration_table_says_where_an_rls_layer_gets_its_tenant():
    rows = migration_rows([cell("rls_guc_pinned", "direct", "fresh_session", "pass", "rls", False),
                           cell("search_path_set", "direct", "fresh_session", "pass", "schema", False)])
    rls, schema = rows[0]["schema_in_sql"], rows[1]["schema_in_sql"]
    assert "search_path" not in rls["detail"].replace("not by schema or search_path", "")
    assert "policies" in rls["detail"] and rls["value"] == "n/a"
    assert schema["value"] == "no" and "search_path" in schema["detail"]


# -- 6. imports from the project's root ----------------------------------------------------------
def test_the_pythonpath_default_is_the_folder_of_the_pyproject_holding_tool_harness(tmp_path):
    project = user_project(tmp_path / "app", 'pythonpath = ["src", "."]\n')
    nested = project / "deep" / "er"
    nested.mkdir(parents=True)
    assert resolve_config({}, env={}, cwd=nested).pythonpath == (str(project / "src"), str(project))
    (project / "pyproject.toml").write_text("[tool.harness]\n")
    assert resolve_config({}, env={}, cwd=nested).pythonpath == (str(project),)
    assert resolve_config({}, env={"HARNESS_PYTHONPATH": "lib"}, cwd=nested).pythonpath == (str(nested / "lib"),)
    bare = tmp_path / "bare"
    (bare / "sub").mkdir(parents=True)
    (bare / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert resolve_config({}, env={}, cwd=bare / "sub").pythonpath == (str(bare / "sub"),)


def test_a_strategy_is_imported_from_the_project_root_and_an_error_lists_the_folders(tmp_path, monkeypatch,
                                                                                      clean_imports):
    project = user_project(tmp_path / "app")
    monkeypatch.chdir(project / "userapp")
    monkeypatch.delenv("HARNESS_PYTHONPATH", raising=False)
    assert load_strategy("userapp.tenancy:make").spec == "userapp.tenancy:make"
    assert sys.path[0] == str(project)
    with pytest.raises(UsageError) as caught:
        load_strategy("otherapp.tenancy:make", (str(tmp_path / "nowhere"),))
    message = str(caught.value)
    assert str(tmp_path / "nowhere") in message and "pythonpath" in message and "current folder" not in message


def worker_messages(results) -> list:
    """A worker's messages up to its last ("done"); each within a deadline."""
    messages = []
    while not any(m[0] == "done" for m in messages):
        messages.append(results.get(timeout=60))
    return messages


def test_a_spawned_worker_imports_the_users_strategy_from_the_pythonpath(tmp_path):
    project = user_project(tmp_path / "app")
    assert str(project) not in sys.path
    # The external backend without DSNs stops the worker right after it imported the strategies.
    config = resolve_config({"backend": "external", "strategies": "userapp.tenancy:make"}, env={}, cwd=project)
    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    worker = context.Process(target=_worker, args=(config, ["userapp.tenancy:make"], 1, True, tasks, results,
                                                   os.getpid()))
    worker.start()
    try:
        messages = worker_messages(results)
    finally:
        worker.join(30)
    errors = [str(m[1]) for m in messages if m[0] == "error"]
    assert errors and "userapp" not in errors[0] and "external" in errors[0].lower(), errors


def test_harness_verify_imports_the_users_strategy_from_the_project_root_without_pythonpath(tmp_path):
    project = user_project(tmp_path / "app")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("HARNESS_")}
    # The console script, not `python -m`, which would put the current folder on sys.path itself.
    done = subprocess.run([str(Path(sys.executable).parent / "harness"), "verify", "--routes", "direct",
                           "--scenarios", "fresh_session", "--report-dir", str(tmp_path / "reports")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=project)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert "ModuleNotFoundError" not in done.stderr and "userapp.tenancy:make x direct" in done.stdout + done.stderr


# -- 7. models and actions in the environment -----------------------------------------------------
def test_the_environment_names_the_models_with_their_tenant_tables_and_the_actions(tmp_path, clean_imports):
    project = user_project(tmp_path / "app")
    config = resolve_config({"models": "userapp.models:Base", "actions": ["userapp.actions:count_invoices"]},
                            env={}, cwd=project)
    put_first_on_sys_path(config.pythonpath)
    versions = {"postgres": "17", "pgbouncer": "1.24"}
    stack = SimpleNamespace(versions=versions, backend="native", owns_public=True, deployment=None, pooler="pgbouncer",
                            facts=DeploymentFacts.read(versions, {}))
    env = environment(stack, config, 3, True, load_team(config))
    assert env["models"] == "userapp.models:Base (tenant tables: invoice)"
    assert env["actions"] == "userapp.actions:count_invoices"
    bare = environment(stack, resolve_config({}, env={}, cwd=tmp_path), 3, True, None)
    assert (bare["models"], bare["actions"]) == ("the harness's own only", "none")


# -- 8. the shared tables as declarative classes --------------------------------------------------
def test_the_declarative_shared_classes_sit_on_the_imperative_tables():
    from sqlalchemy.schema import CreateTable

    from harness.tenancy import declarative

    imperative = model_set(SHARED)
    for name, cls in declarative.CLASSES.items():
        table = imperative.metadata.tables[name]
        assert cls.__table__ is table
        assert [c.name for c in cls.__table__.columns] == [c.name for c in table.columns]
        assert str(CreateTable(cls.__table__)) == str(CreateTable(table))
    assert declarative.SharedBase.metadata is imperative.metadata
    assert {c.name for c in declarative.Product.__table__.primary_key} == {"id", "owner"}

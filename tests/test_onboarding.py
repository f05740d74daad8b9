"""Onboarding a real app (issue 20, item 4): list settings read alike, the app's settings at import, the
app's warnings and logs as the cell's evidence, and the hammer naming the step whose leftover state a later
step inherited.

Fast tests first; the last ones run on a real stack (the ``stack`` and ``tenancy`` fixtures).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import multiprocessing
import os
import warnings
from pathlib import Path

import pytest

from harness import config as config_module
from harness.checks import check_history
from harness.checks.history import (DEFAULT_SEARCH_PATH, ConnectionState, History, ProbeRecord, RowSeen, StateSet,
                                    StepRecord, Write)
from harness.checks.leftovers import blame_leftovers
from harness.checks.pool import check_pool_pollution
from harness.cli import _cli_values, build_parser
from harness.config import apply_team_environment, read_env_file, resolve_config
from harness.errors import UsageError
from harness.jobs import verify_replay
from harness.team import Team, load_action
from harness.tenancy.strategy import load_strategy
from harness.workload import step_watch
from harness.workload.generated import PROFILES

APP_VARIABLES = ("ONBOARD_DATABASE_URL", "ONBOARD_SECRET", "ONBOARD_DEBUG", "ONBOARD_FROM_FILE", "ONBOARD_QUOTED",
                 "ONBOARD_PORT", "APP_DATABASE_URL", "APP_PORT")


def write_pyproject(folder: Path, body: str) -> None:
    (folder / "pyproject.toml").write_text("[tool.harness]\n" + body)


# -- 1. --actions a,b like every list setting ------------------------------------------------------
def test_actions_take_comma_lists_on_the_command_line_also_repeated(tmp_path):
    args = build_parser().parse_args(["verify", "--actions", "app.paths:report,app.paths:signup",
                                      "--actions", "app.jobs:nightly"])
    config = resolve_config(_cli_values(args), env={}, cwd=tmp_path)
    assert config.actions == ("app.paths:report", "app.paths:signup", "app.jobs:nightly")


@pytest.mark.parametrize("where, body, env", [
    ("env", "", {"HARNESS_ACTIONS": "app.paths:report, app.paths:signup"}),
    ("pyproject string", 'actions = "app.paths:report,app.paths:signup"\n', {}),
    ("pyproject list", 'actions = ["app.paths:report,app.paths:signup"]\n', {}),
])
def test_actions_read_alike_from_the_environment_and_pyproject(tmp_path, where, body, env):
    write_pyproject(tmp_path, body)
    assert resolve_config({}, env=env, cwd=tmp_path).actions == ("app.paths:report", "app.paths:signup")


def test_every_list_setting_reads_a_repeated_or_listed_comma_item_the_same_way(tmp_path):
    write_pyproject(tmp_path, 'routes = ["direct,session"]\nscenarios = ["hammer", "after_commit,raw_text"]\n')
    config = resolve_config({}, env={}, cwd=tmp_path)
    assert config.routes == ("direct", "session")
    assert config.scenarios == ("hammer", "after_commit", "raw_text")


def test_a_replay_gives_each_action_its_own_option(tmp_path):
    config = resolve_config({"actions": ["a.b:one,a.b:two"]}, env={}, cwd=tmp_path)
    command = verify_replay(config, 7)(load_strategy("translate_map", config.pythonpath), "direct", "hammer",
                                       PROFILES["dev"])
    assert "--actions a.b:one --actions a.b:two" in command


# -- 2. the app's settings at import -----------------------------------------------------------------
@pytest.fixture
def app_environment(monkeypatch):
    """No ONBOARD_*/APP_* variable before the test, none after it; a fresh record of what was applied."""
    for name in APP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(config_module, "TEAM_ENVIRONMENT", {})
    monkeypatch.setattr(config_module, "ENV_FILES_READ", [])
    yield
    for name in APP_VARIABLES:
        os.environ.pop(name, None)


def test_the_env_table_goes_into_the_environment_and_the_environment_wins(tmp_path, app_environment, monkeypatch):
    write_pyproject(tmp_path, '[tool.harness.env]\nONBOARD_DATABASE_URL = "postgresql://localhost/app"\n'
                              'ONBOARD_DEBUG = true\nONBOARD_PORT = 8000\nONBOARD_SECRET = "from the table"\n')
    monkeypatch.setenv("ONBOARD_SECRET", "from the shell")
    config = resolve_config({}, env={}, cwd=tmp_path)
    assert dict(config.env) == {"ONBOARD_DATABASE_URL": "postgresql://localhost/app", "ONBOARD_DEBUG": "true",
                                "ONBOARD_PORT": "8000", "ONBOARD_SECRET": "from the table"}
    applied = apply_team_environment(config)
    assert set(applied) == {"ONBOARD_DATABASE_URL", "ONBOARD_DEBUG", "ONBOARD_PORT"}
    assert os.environ["ONBOARD_DATABASE_URL"] == "postgresql://localhost/app"
    assert os.environ["ONBOARD_SECRET"] == "from the shell"


def test_an_env_file_is_read_like_a_dotenv_and_wins_over_the_table(tmp_path, app_environment):
    (tmp_path / "app.env").write_text(
        "# the app's settings\n\nexport ONBOARD_FROM_FILE=plain value  # a comment\n"
        "ONBOARD_QUOTED=\"a \\\"quoted\\\" # not a comment\"\nONBOARD_SECRET='single # kept'\n"
        "ONBOARD_DATABASE_URL=postgresql://file/app\n")
    write_pyproject(tmp_path, 'env_file = "app.env"\n[tool.harness.env]\nONBOARD_DATABASE_URL = "postgresql://table/app"\n')
    config = resolve_config({}, env={}, cwd=tmp_path)
    assert config.env_file == tmp_path / "app.env"
    assert read_env_file(config.env_file) == {"ONBOARD_FROM_FILE": "plain value",
                                              "ONBOARD_QUOTED": 'a "quoted" # not a comment',
                                              "ONBOARD_SECRET": "single # kept",
                                              "ONBOARD_DATABASE_URL": "postgresql://file/app"}
    apply_team_environment(config)
    assert os.environ["ONBOARD_DATABASE_URL"] == "postgresql://file/app"


def test_the_env_file_is_given_on_the_command_line_and_in_the_environment(tmp_path):
    (tmp_path / "app.env").write_text("ONBOARD_FROM_FILE=1\n")
    args = build_parser().parse_args(["verify", "--env-file", str(tmp_path / "app.env")])
    assert resolve_config(_cli_values(args), env={}, cwd=tmp_path).env_file == tmp_path / "app.env"
    assert resolve_config({}, env={"HARNESS_ENV_FILE": "app.env"}, cwd=tmp_path).env_file == tmp_path / "app.env"
    assert resolve_config({}, env={}, cwd=tmp_path).env_file is None  # default: none


def test_a_missing_env_file_and_a_bad_line_are_refused_with_where(tmp_path):
    with pytest.raises(UsageError, match="no env file at .*missing.env") as caught:
        resolve_config({"env_file": "missing.env"}, env={}, cwd=tmp_path)
    assert "--env-file" in str(caught.value)
    (tmp_path / "bad.env").write_text("ONBOARD_A=1\nthis is not a setting\n")
    with pytest.raises(UsageError, match=r"bad.env:2: 'this is not a setting' is not a KEY=VALUE line"):
        read_env_file(tmp_path / "bad.env")
    write_pyproject(tmp_path, '[tool.harness.env]\nONBOARD_A = ["a", "list"]\n')
    with pytest.raises(UsageError, match=r"\[tool.harness\] env"):
        resolve_config({}, env={}, cwd=tmp_path)


def write_app(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(body + "\n\ndef make(url):\n    raise AssertionError('not called')\n")


def test_a_key_error_on_os_environ_at_import_names_the_variable_and_how_to_set_it(tmp_path, app_environment):
    write_app(tmp_path, "onboard_environ_app", "import os\nDATABASE_URL = os.environ['ONBOARD_DATABASE_URL']")
    with pytest.raises(UsageError) as caught:
        load_strategy("onboard_environ_app:make", [str(tmp_path)])
    message = str(caught.value)
    assert "reads settings from the environment" in message and "ONBOARD_DATABASE_URL (missing)" in message
    assert "[tool.harness.env] ONBOARD_DATABASE_URL" in message
    assert "--env-file" in message and "HARNESS_ENV_FILE" in message
    assert "could not be imported" not in message and "pythonpath" not in message


def test_with_the_variable_in_an_env_file_the_same_app_imports(tmp_path, app_environment):
    write_app(tmp_path, "onboard_environ_app2", "import os\nDATABASE_URL = os.environ['ONBOARD_DATABASE_URL']")
    (tmp_path / ".env").write_text("ONBOARD_DATABASE_URL=postgresql://placeholder/app\n")
    apply_team_environment(resolve_config({"env_file": ".env"}, env={}, cwd=tmp_path))
    assert load_strategy("onboard_environ_app2:make", [str(tmp_path)]).factory.__module__ == "onboard_environ_app2"


PYDANTIC_LIKE = '''
class ValidationError(ValueError):
    """pydantic v2's error, as pydantic_core defines it (the harness tells it by name and module)."""

    def __init__(self, title, errors):
        super().__init__(f"{len(errors)} validation errors for {title}")
        self.title, self._errors = title, errors

    def errors(self):
        return self._errors


ValidationError.__module__ = "pydantic_core._pydantic_core"


class Settings:
    model_config = {"env_prefix": "app_"}

    def __init__(self):
        raise ValidationError("Settings", [
            {"type": "missing", "loc": ("database_url",), "msg": "Field required"},
            {"type": "int_parsing", "loc": ("port",), "msg": "Input should be a valid integer"}])


settings = Settings()
'''


def test_a_pydantic_validation_error_at_import_names_each_setting_with_its_prefix(tmp_path, app_environment):
    write_app(tmp_path, "onboard_pydantic_app", PYDANTIC_LIKE)
    with pytest.raises(UsageError) as caught:
        load_action("onboard_pydantic_app:make", (str(tmp_path),))
    message = str(caught.value)
    assert "APP_DATABASE_URL (missing)" in message
    assert "APP_PORT (invalid: Input should be a valid integer)" in message
    assert "ValidationError: 2 validation errors for Settings" in message


@pytest.mark.parametrize("name, body", [("onboard_lookup_app", "SETTINGS = {}\nNAME = SETTINGS['name']"),
                                        ("onboard_broken_app", "raise RuntimeError('broken app')")])
def test_other_import_failures_keep_the_generic_message(tmp_path, app_environment, name, body):
    write_app(tmp_path, name, body)
    with pytest.raises(UsageError) as caught:
        load_strategy(f"{name}:make", [str(tmp_path)])
    message = str(caught.value)
    assert "does not import (" in message and "fix the error the module raised" in message
    assert "environment" not in message


def _child_sees(name: str, queue) -> None:
    queue.put(os.environ.get(name))


def test_a_spawned_worker_sees_the_applied_environment(tmp_path, app_environment):
    write_pyproject(tmp_path, '[tool.harness.env]\nONBOARD_DATABASE_URL = "postgresql://for/workers"\n')
    apply_team_environment(resolve_config({}, env={}, cwd=tmp_path))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter that imports everything again
    queue = context.Queue()
    worker = context.Process(target=_child_sees, args=("ONBOARD_DATABASE_URL", queue))
    worker.start()
    try:
        assert queue.get(timeout=60) == "postgresql://for/workers"
    finally:
        worker.join(30)


# -- 3. the app's warnings and logs: the cell's evidence, not the terminal --------------------------
def test_warnings_and_log_records_inside_a_step_are_kept_bounded_and_not_printed(capfd, caplog):
    step_watch.install()
    messages = step_watch.AppMessages(limit=2)
    app = logging.getLogger("onboard_app")
    watch, token = step_watch.watching(messages, 7)
    try:
        for _ in range(3):
            app.warning("slow query for %s", "acme")
        warnings.warn("legacy total", UserWarning)
        app.error("third distinct message")
    finally:
        step_watch.CURRENT.reset(token)
    kept = messages.kept()
    assert [(m.kind, m.source, m.level, m.text, m.count, m.first_step) for m in kept] == [
        ("log", "onboard_app", "WARNING", "slow query for acme", 3, 7),
        ("warning", "UserWarning", "WARNING", "legacy total", 1, 7)]
    assert kept[0].where.startswith("test_onboarding.py:") and messages.not_kept == 1
    assert "slow query" not in capfd.readouterr().err and not caplog.records
    app.warning("outside any step")  # logging outside steps is left alone
    assert [r.getMessage() for r in caplog.records] == ["outside any step"]


# -- 4. a misread names the step whose leftover state it inherited (canned histories) ---------------
def leftover_history() -> History:
    """acme's action leaves search_path = globex on backend 42; acme's raw insert later runs there and
    lands in globex; globex's ORM read (its own binding, backend 77) then reads that row."""
    history = History(strategy="demo", route="direct", tenants=("acme", "globex"), schemas=("acme", "globex"))
    history.steps = [
        StepRecord(1, 0, 1, "acme", "open", style="control"),
        StepRecord(2, 0, 1, "acme", "action:leave_path", style="action", effect="commit",
                   state_set=(StateSet(42, "globex", "SET search_path TO globex"),)),
        StepRecord(3, 0, 1, "acme", "end_request", style="control"),
        StepRecord(4, 1, 2, "acme", "open", style="control"),
        StepRecord(5, 1, 2, "acme", "raw_insert_unqualified", style="raw_unqualified", pid=42,
                   writes=(Write("insert", "product", 1000, "acme", "ins:1000"),)),
        StepRecord(6, 1, 2, "acme", "commit", style="control"),
        StepRecord(7, 1, 2, "acme", "end_request", style="control"),
        StepRecord(8, 2, 3, "globex", "open", style="control"),
        StepRecord(9, 2, 3, "globex", "orm_select_all", pid=77,
                   rows=(RowSeen("product", 1, "globex"), RowSeen("product", 1000, "acme"))),
        StepRecord(10, 2, 3, "globex", "end_request", style="control"),
    ]
    history.final_state = {"acme": {"product": [(1, "acme", "seed")]},
                           "globex": {"product": [(1, "globex", "seed"), (1000, "acme", "ins:1000")]}}
    return history


def test_a_read_of_a_row_misplaced_by_leftover_state_names_the_step_that_left_it():
    findings = check_history(leftover_history())
    read = next(f for f in findings if f.kind == "cross_tenant_read")
    assert read.left_by == 2 and set(read.steps) == {9, 5, 2}
    assert "step 2 (client 0's request 1 for 'acme', action:leave_path) left search_path = globex on " \
           "backend 42" in read.explanation
    assert "step 5 (client 1's request 2 for 'acme', raw_insert_unqualified) wrote it" in read.explanation
    for kind in ("misplaced_write", "lost_write"):
        write = next(f for f in findings if f.kind == kind)
        assert write.left_by == 2 and "action:leave_path" in write.explanation, write


def test_a_raw_read_on_the_polluted_backend_names_the_step_directly_and_a_rebind_clears_it():
    history = History(strategy="demo", route="direct", tenants=("acme", "globex"), schemas=("acme", "globex"))
    history.steps = [
        StepRecord(1, 0, 1, "acme", "action:leave_path", style="action",
                   state_set=(StateSet(42, "globex", "SET search_path TO globex"),)),
        StepRecord(2, 1, 2, "acme", "raw_select_unqualified", style="raw_unqualified", pid=42,
                   rows=(RowSeen("product", 1, "globex"),)),
        StepRecord(3, 2, 3, "acme", "open", style="control",
                   state_set=(StateSet(42, "acme, public", "SET search_path TO acme, public"),)),
        StepRecord(4, 3, 4, "acme", "raw_select_unqualified", style="raw_unqualified", pid=42,
                   rows=(RowSeen("product", 1, "globex"),)),  # not what acme's own binding leaves
    ]
    first, second = [f for f in check_history(history) if f.kind == "cross_tenant_read"]
    assert first.left_by == 1 and "It inherited that state: step 1 (client 0's request 1" in first.explanation
    assert second.left_by is None and "inherited" not in second.explanation


def test_a_streamed_hammer_history_keeps_the_named_steps_as_evidence(tmp_path):
    from harness.checks import check_history_file
    from harness.checks.history import step_to_json

    history = leftover_history()
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(step_to_json(s)) + "\n" for s in history.steps))
    findings, flagged, _ = check_history_file(dataclasses.replace(history, steps=[]), path)
    assert next(f for f in findings if f.kind == "cross_tenant_read").left_by == 2
    assert {2, 5, 9} <= {s.seq for s in flagged}
    assert next(s for s in flagged if s.seq == 2).state_set[0].search_path == "globex"


def test_a_hammer_pool_finding_names_the_step_that_set_the_path_it_found():
    history = leftover_history()
    history.probes = [ProbeRecord(11, 0, "engine of 'acme'", (ConnectionState(42, "globex", "app", "app"),
                                                               ConnectionState(43, DEFAULT_SEARCH_PATH, "app", "app")),
                                  owner="acme")]
    (finding,) = check_pool_pollution(history)
    assert finding.left_by == 2 and 2 in finding.steps
    assert "step 2 (client 0's request 1 for 'acme', action:leave_path) set that search_path" in finding.explanation


def test_no_state_set_means_nothing_is_blamed():
    history = leftover_history()
    history.steps = [dataclasses.replace(s, state_set=()) for s in history.steps]
    findings = check_history(history)
    assert findings and all(f.left_by is None for f in findings)
    assert blame_leftovers(history, findings) == (findings, {})


# -- on a real stack -------------------------------------------------------------------------------
@pytest.fixture
def team_of(tenancy):
    """Run with the team's actions ``specs`` (no models), then put the tenancy's team back."""
    original = tenancy.team

    def use(*specs: str) -> None:
        tenancy.team = Team(None, tuple(load_action(spec) for spec in specs))
    yield use
    tenancy.team = original


def test_the_apps_warnings_and_logs_go_to_the_cells_evidence_and_report(stack, tenancy, team_of, capfd, tmp_path):
    from harness.checks.verdict import Verdict
    from harness.report.results import results_json
    from harness.report.writer import write_report_folder
    from harness.verify import VerifyRun
    from harness.workload.cell import run_cell
    from harness.workload.program import Program, Request

    team_of("leftover_strategies:chatty")
    program = Program(((Request("acme", ("action:chatty", "orm_select_all", "action:chatty")),),
                       (Request("globex", ("action:chatty",)),)))
    result = run_cell(stack, tenancy, load_strategy("translate_map"), "direct", "team", program)
    assert result.verdict is not Verdict.CANNOT_RUN
    by_text = {m.text: m for m in result.history.messages}
    assert by_text["serving acme"].count == 2 and by_text["serving acme"].level == "INFO"
    assert by_text["slow query for globex"].source == "leftover_app"
    assert by_text["total() is deprecated, use sum_total()"].kind == "warning"
    assert by_text["total() is deprecated, use sum_total()"].where.startswith("leftover_strategies.py:")
    first = min(s.seq for s in result.history.steps if s.step == "action:chatty")
    assert by_text["serving acme"].first_step == first
    assert "slow query" not in capfd.readouterr().err
    config = resolve_config({"report_dir": tmp_path}, env={}, cwd=tmp_path)
    run = VerifyRun(run_id="onboarding", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), config=config,
                    strategies=["translate_map"], builtin_self_check=False, seed=1, cells=[result],
                    environment={}, seconds=1.0)
    results = results_json(run)
    assert {m["text"] for m in results["cells"][0]["messages"]} >= {"serving acme", "slow query for globex"}
    html = (write_report_folder(results, tmp_path / "report") / "index.html").read_text()
    assert "The app's warnings and log records" in html and "slow query for globex" in html


def test_the_hammer_names_the_action_whose_search_path_a_later_request_inherited(stack, tenancy, team_of, tmp_path):
    from harness.report.explain import explain
    from harness.workload.hammer import hammer

    team_of("leftover_strategies:leave_path")
    result, _ = hammer(stack, tenancy, load_strategy("leftover_strategies:PerTenantEngines"), "direct",
                       threads=4, max_requests=400, max_seconds=60, seed=11, history_path=tmp_path / "h.jsonl")
    steps = {s.seq: s for s in result.history.steps}
    misreads = [f for f in result.findings if f.kind in ("cross_tenant_read", "misplaced_write")]
    assert misreads, explain(result)
    for finding in misreads:  # the layer is sound: every misread is the action's leftover search_path
        assert finding.left_by is not None, finding.explanation
        assert steps[finding.left_by].step == "action:leave_path", finding.explanation
        assert "action:leave_path) left search_path = " in finding.explanation
    # The gating read that the old hammer blamed on the harness's own orm_select_all now names the action.
    blamed = [f for f in misreads if f.kind == "cross_tenant_read" and f.gating
              and steps[f.steps[0]].step == "orm_select_all"]
    assert blamed, explain(result)
    assert all("wrote it on backend" in f.explanation for f in blamed)


@pytest.mark.parametrize("layer", ["search_path_set", "search_path_set_async"])
def test_a_layers_own_set_is_recorded_with_its_backend_on_sync_and_async_sessions(stack, tenancy, layer):
    from harness.checks.leftovers import path_head
    from harness.workload.cell import run_cell
    from harness.workload.program import Program, Request

    program = Program(((Request("acme", ("orm_select_all",)),), (Request("Acme", ("orm_select_all",)),)))
    result = run_cell(stack, tenancy, load_strategy(layer), "direct", "onboarding", program)
    opened = [s for s in result.history.steps if s.step == "open"]
    assert len(opened) == 2
    for step in opened:
        (state,) = step.state_set
        assert state.statement.startswith("SET search_path TO ") and path_head(state.search_path) == step.tenant
        assert state.pid == next(s.pid for s in result.history.steps  # the backend its read ran on (direct route)
                                 if s.client == step.client and s.step == "orm_select_all")

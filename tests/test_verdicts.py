"""Verdicts that say what happened, on hand-written histories (no server): structural isolation, a layer
that cannot run on a route, tenant names refused cleanly; and the tenant set as a setting."""

from __future__ import annotations

import json

import pytest

from harness.checks import check_history, coverage, verdict
from harness.checks.history import ErrorSeen, History, RowSeen, StepRecord
from harness.checks.refusals import NAME_REFUSED
from harness.checks.verdict import STRUCTURAL, Verdict
from harness.config import resolve_config
from harness.errors import UsageError
from harness.report.explain import LABELS
from harness.tenancy.tenants import DEFAULT_TENANTS, HOSTILE_TENANTS, tenant_set
from harness.workload.runner import _from_database

FATAL = ErrorSeen(None, "OperationalError", 'connection failed: connection to server at "127.0.0.1", port 6432 '
                                            "failed: FATAL:  unsupported startup parameter: options")
NOT_A_SLUG = ErrorSeen(None, "ValueError", "tenant name 'Acme' is not a slug")


def history(steps: list[StepRecord], pools: dict[str, tuple[str, ...]] | None = None) -> History:
    return History(strategy="demo", route="direct", tenants=("acme", "globex", "Acme"),
                   schemas=("acme", "globex", "Acme", "public"), steps=steps, pools=pools or {})


def served(tenant: str, seq: int, pid: int | None, step: str = "orm_select_all", **fields) -> StepRecord:
    rows = (RowSeen("product", 1, tenant),) if step == "orm_select_all" and "error" not in fields else ()
    return StepRecord(seq=seq, client=0, request=seq, tenant=tenant, step=step, pid=pid, rows=rows, **fields)


def judge(h: History):
    findings = check_history(h)
    return findings, verdict(findings, coverage(h))


# -- structural isolation ------------------------------------------------------------------------------
def test_a_layer_with_a_pool_per_tenant_passes_with_the_structural_reason():
    steps = [served("acme", 1, 10), served("globex", 2, 20), served("acme", 3, 10), served("globex", 4, 20)]
    _, judged = judge(history(steps, {"acme": ("QueuePool@1",), "globex": ("QueuePool@2",)}))
    assert judged.verdict is Verdict.PASS
    assert judged.reason.startswith(STRUCTURAL)


def test_a_shared_pool_without_reuse_stays_inconclusive():
    steps = [served("acme", 1, 10), served("globex", 2, 20), served("acme", 3, 30)]
    _, judged = judge(history(steps, {"acme": ("NullPool@1",), "globex": ("NullPool@1",)}))
    assert judged.verdict is Verdict.INCONCLUSIVE
    assert "pooling was not exercised" in judged.reason


def test_without_pool_evidence_no_reuse_stays_inconclusive():
    steps = [served("acme", 1, 10), served("globex", 2, 20)]
    assert judge(history(steps))[1].verdict is Verdict.INCONCLUSIVE
    # evidence for one tenant only is no evidence
    assert judge(history(steps, {"acme": ("QueuePool@1",)}))[1].verdict is Verdict.INCONCLUSIVE


def test_a_pool_per_tenant_is_still_judged_on_everything_else():
    leak = StepRecord(seq=2, client=1, request=2, tenant="globex", step="orm_select_all", pid=20,
                      rows=(RowSeen("product", 1, "acme"),))
    findings, judged = judge(history([served("acme", 1, 10), leak],
                                     {"acme": ("QueuePool@1",), "globex": ("QueuePool@2",)}))
    assert judged.verdict is Verdict.FAIL and [f.kind for f in findings] == ["cross_tenant_read"]


def test_pools_survive_the_history_json():
    h = history([served("acme", 1, 10)], {"acme": ("QueuePool@1", "QueuePool@2")})
    again = History.from_json(json.loads(json.dumps(h.to_json())))
    assert again.pools == {"acme": ("QueuePool@1", "QueuePool@2")}


# -- a layer that cannot run on a route -----------------------------------------------------------------
def test_every_connection_refused_is_cannot_run_with_the_servers_message():
    steps = [served("acme", 1, None, error=FATAL), served("globex", 2, None, error=FATAL)]
    _, judged = judge(history(steps))
    assert judged.verdict is Verdict.CANNOT_RUN
    assert "FATAL: unsupported startup parameter: options" in judged.reason


def test_a_refused_connection_after_a_backend_was_reached_is_not_cannot_run():
    steps = [served("acme", 1, 10), served("globex", 2, None, error=FATAL)]
    assert judge(history(steps))[1].verdict is Verdict.INCONCLUSIVE


def test_a_statement_error_next_to_refused_connections_is_not_cannot_run():
    failed = ErrorSeen("42P07", "ProgrammingError", "relation already exists")
    steps = [served("acme", 1, None, error=FATAL), served("globex", 2, None, error=failed)]
    assert judge(history(steps))[1].verdict is Verdict.INCONCLUSIVE


def test_cannot_run_has_a_label_in_the_terminal_matrix():
    assert set(LABELS) == set(Verdict)


# -- tenant names refused cleanly ----------------------------------------------------------------------
def refused(tenant: str, seq: int) -> StepRecord:
    return StepRecord(seq=seq, client=0, request=seq, tenant=tenant, step="open", error=NOT_A_SLUG,
                      note=NAME_REFUSED)


def test_a_refused_name_is_a_refused_finding_not_an_error_and_is_named_in_the_pass():
    steps = [served("acme", 1, 10), refused("Acme", 2), served("globex", 3, 10)]
    findings, judged = judge(history(steps))
    assert [(f.kind, f.tenant, f.gating) for f in findings] == [("refused", "Acme", False)]
    assert judged.verdict is Verdict.PASS
    assert "refused by the layer before any SQL" in judged.reason and "'Acme'" in judged.reason


def test_every_name_refused_passes_and_says_so():
    findings, judged = judge(history([refused("Acme", 1), refused("o'hara", 2)]))
    assert {f.kind for f in findings} == {"refused"}
    assert judged.verdict is Verdict.PASS and judged.reason.startswith("every tenant name was refused")


def test_the_same_exception_without_the_runners_mark_is_an_error():
    steps = [served("acme", 1, 10), served("Acme", 2, None, step="orm_select_all", error=NOT_A_SLUG),
             served("globex", 3, 10)]
    findings, judged = judge(history(steps))
    assert [f.kind for f in findings] == ["error"] and judged.verdict is Verdict.INCONCLUSIVE


def test_a_hostile_name_that_breaks_the_sql_stays_unsafe_identifier():
    broke = ErrorSeen("42601", "SyntaxError", 'syntax error at or near "double"')
    steps = [served("acme", 1, 10), StepRecord(seq=2, client=0, request=2, tenant='quote"double', step="open",
                                               error=broke)]
    findings, judged = judge(history(steps))
    assert [f.kind for f in findings] == ["unsafe_identifier"] and judged.verdict is Verdict.FAIL


def test_an_exception_raised_from_a_driver_error_came_from_the_database():
    from sqlalchemy.exc import OperationalError

    try:
        try:
            raise OperationalError("SET search_path", {}, Exception("boom"))
        except OperationalError as exc:
            raise ValueError("tenant unknown") from exc
    except ValueError as wrapped:
        assert _from_database(wrapped)
    assert not _from_database(ValueError("not a slug"))


# -- tenant names --------------------------------------------------------------------------------------
def test_the_hostile_set_holds_prefix_pairs():
    names = set(HOSTILE_TENANTS)
    assert {"x", "tenant_x", "x_y"} <= names
    assert DEFAULT_TENANTS[:4] == ("acme", "Acme", "umbrella corp", "globex")


@pytest.mark.parametrize("given, expected", [
    ("6", ("acme", "Acme", "umbrella corp", "globex", "tenant_05", "tenant_06")),
    ("acme,tenant_acme,globex", ("acme", "tenant_acme", "globex")),
    (" a , a_b ", ("a", "a_b")),
])
def test_tenants_takes_a_count_or_names_on_the_command_line(given, expected, tmp_path):
    config = resolve_config({"tenants": given}, env={}, cwd=tmp_path)
    assert tenant_set(config.tenants) == expected


def test_tenants_takes_a_list_in_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.harness]\ntenants = ["a, b", "Tenant B"]\n')
    config = resolve_config({}, env={}, cwd=tmp_path)
    assert config.tenants == ("a, b", "Tenant B") and tenant_set(config.tenants) == ("a, b", "Tenant B")


def test_tenants_from_the_environment(tmp_path):
    config = resolve_config({}, env={"HARNESS_TENANTS": "x,tenant_x"}, cwd=tmp_path)
    assert tenant_set(config.tenants) == ("x", "tenant_x")


@pytest.mark.parametrize("given, words", [
    ("acme", "At least two tenants"),
    ("acme,acme", "holds a name twice"),
    ("acme,pg_toast2", "starts with pg_"),
    ("acme,public", "reserved"),
    ("1", "at least 2"),
])
def test_a_bad_tenant_set_is_refused_before_anything_starts(given, words, tmp_path):
    with pytest.raises(UsageError, match=words) as caught:
        resolve_config({"tenants": given}, env={}, cwd=tmp_path)
    assert "--tenants" in str(caught.value)


def test_a_non_string_name_in_pyproject_is_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.harness]\ntenants = ["acme", 5]\n')
    with pytest.raises(UsageError, match="non-empty string"):
        resolve_config({}, env={}, cwd=tmp_path)


# -- the report's faces of cannot_run ------------------------------------------------------------------
def test_cannot_run_shows_in_results_json_junit_the_page_and_the_terminal_matrix(tmp_path):
    import datetime as dt
    import xml.etree.ElementTree as ET

    from harness.report import write_report
    from harness.report.explain import verdict_matrix
    from harness.verify import VerifyRun
    from harness.workload.cell import CellResult
    from harness.workload.expectations import USER_REQUIREMENT

    cells = []
    for route, steps in (("direct", [served("acme", 1, 10), served("globex", 2, 10)]),
                         ("transaction", [served("acme", 1, None, error=FATAL), served("globex", 2, None, error=FATAL)])):
        h = history(steps)
        h.route = route
        findings, judged = judge(h)
        cells.append(CellResult("options", route, "fresh_session", h, findings, coverage(h), judged.verdict,
                                judged.reason, 0.1, required=USER_REQUIREMENT))
    config = resolve_config({"report_dir": tmp_path, "routes": "direct,transaction", "scenarios": "fresh_session"},
                            env={}, cwd=tmp_path)
    run = VerifyRun(run_id="20260101-000000-abcdef", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                    config=config, strategies=["options"], builtin_self_check=False, seed=1, cells=cells,
                    environment={"profile": "ci"}, seconds=1.0)
    folder = write_report(run, tmp_path)
    data = json.loads((folder / "results.json").read_text())
    refused = next(c for c in data["cells"] if c["route"] == "transaction")
    assert refused["verdict"] == "cannot_run" and not refused["as_required"] and data["verdict"] == "fail"
    assert "unsupported startup parameter: options" in refused["verdict_reason"]
    failure = [c.find("failure") for c in ET.parse(folder / "junit.xml").getroot().findall("testcase")]
    assert [f.get("message") for f in failure if f is not None] == ["measured cannot_run, required pass"]
    html = (folder / "index.html").read_text()
    assert 'class="mark cannot_run notreq"' in html and "cannot run (the layer does not work on that route: every connection" in html
    assert verdict_matrix(cells)[1].split()[2:] == ["pass", "cannot", "run*"]

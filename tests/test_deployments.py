"""Deployments: names, the facts a stack reads, expectations conditioned on them, and the built roots.

The matrix itself (every built-in on bookworm, trixie and sid, compared cell by cell) runs in
scenarios/test_deployment_matrix.py on real stacks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.checks.verdict import Verdict
from harness.config import resolve_config
from harness.deployments import CONDITIONS, DEPLOYMENTS, DeploymentFacts
from harness.errors import SetupError, UsageError
from harness.stack.deployment_builds import native_binaries
from harness.workload.expectations import load_table, required_verdict

BOOKWORM = DeploymentFacts.read({"postgres": "15.18", "pgbouncer": "1.18.0"}, {"transaction": {}})
TRIXIE = DeploymentFacts.read({"postgres": "17.12", "pgbouncer": "1.24.1"},
                              {"transaction": {"track_extra_parameters": "IntervalStyle",
                                               "max_prepared_statements": "200"}})
TRIXIE_TRACKING = DeploymentFacts.read({"postgres": "17.12", "pgbouncer": "1.24.1"},
                                       {"transaction": {"track_extra_parameters": "IntervalStyle, search_path",
                                                        "max_prepared_statements": "200"}})
SID = DeploymentFacts.read({"postgres": "18.6 (Debian 18.6-1)", "pgbouncer": "1.26.1"},
                           {"transaction": {"track_extra_parameters": "", "max_prepared_statements": "200"}})
PGPOOL = DeploymentFacts.read({"postgres": "15.18", "pgpool": "4.3.5"},
                              {"session": {"reset_query_list": "ABORT;DISCARD ALL", "connection_cache": "on"}}, "pgpool")
PGPOOL_ABORT = DeploymentFacts.read({"postgres": "15.18", "pgpool": "4.3.5"},
                                    {"session": {"reset_query_list": "ABORT", "connection_cache": "on"}}, "pgpool")
PGAGROAL = DeploymentFacts.read({"postgres": "17.12", "pgagroal": "1.6.0"},
                                {"session": {"pipeline": "performance"}, "transaction": {"pipeline": "transaction"}},
                                "pgagroal")


def test_facts_read_versions_and_the_settings_pgbouncer_runs_with():
    assert (SID.postgres_major, SID.pgbouncer) == (18, (1, 26, 1))
    assert SID.tracked == frozenset() and SID.tracks("search_path")  # 1.26 tracks what the server reports
    assert not TRIXIE.tracks("search_path") and TRIXIE_TRACKING.tracks("search_path")
    assert BOOKWORM.tracked == frozenset() and "unknown setting" in BOOKWORM.describe()
    everything = (BOOKWORM, TRIXIE, TRIXIE_TRACKING, SID, PGPOOL, PGPOOL_ABORT, PGAGROAL)
    holding = {name: [c.holds(f) for f in everything] for name, c in CONDITIONS.items()}
    # PgBouncer's conditions never hold on another pooler, and each pooler's on no other
    assert holding == {"pgbouncer_tracks_search_path": [False, False, True, True, False, False, False],
                       "search_path_tracked": [False, False, False, True, False, False, False],
                       "driver_never_prepares": [False] * 7,  # the facts' driver: psycopg
                       "driver_prepares_every_statement": [False] * 7,
                       "prepared_statements": [False, True, True, True, False, False, False],
                       "pgpool": [False, False, False, False, True, True, False],
                       "pgpool_keeps_session_state": [False, False, False, False, False, True, False],
                       "pgagroal": [False, False, False, False, False, False, True],
                       "pgagroal_driver_prepares_every_statement": [False] * 7}
    asyncpg = {name for name, c in CONDITIONS.items() if c.holds(dataclasses.replace(PGAGROAL, driver="asyncpg"))}
    assert asyncpg == {"pgagroal", "driver_prepares_every_statement", "pgagroal_driver_prepares_every_statement"}
    assert PGPOOL.pgbouncer == () and PGPOOL.pooler_version == (4, 3, 5)
    assert "Pgpool-II 4.3.5, reset_query_list=ABORT" in PGPOOL_ABORT.describe()
    assert PGAGROAL.describe().startswith("PostgreSQL 17, pgagroal 1.6.0, pipeline=transaction")


@pytest.mark.parametrize("facts, verdicts", [
    (BOOKWORM, {"connect_event_search_path": "fail", "startup_options_search_path": "cannot_run",
                "translate_map_prepared": "cannot_run"}),
    (TRIXIE, {"connect_event_search_path": "fail", "startup_options_search_path": "cannot_run",
              "translate_map_prepared": "pass"}),
    (TRIXIE_TRACKING, {"connect_event_search_path": "fail", "startup_options_search_path": "fail",
                       "translate_map_prepared": "pass"}),
    (SID, {"connect_event_search_path": "pass", "startup_options_search_path": "pass",
           "translate_map_prepared": "pass"}),
], ids=["bookworm", "trixie", "trixie+tracking", "sid"])
def test_the_expected_verdict_follows_the_deployment(facts, verdicts):
    measured = {s: required_verdict(s, "after_commit", "transaction", facts=facts).verdict.value for s in verdicts}
    assert measured == verdicts
    turned = required_verdict("startup_options_search_path", "generated", "session", facts=facts)
    assert bool(turned.when) == (facts is not BOOKWORM and facts is not TRIXIE)
    # the direct route does not go through PgBouncer: no condition touches it
    assert all(required_verdict(s, "after_commit", "direct", facts=facts).verdict is Verdict.PASS for s in verdicts)


@pytest.mark.parametrize("driver, bookworm, sid", [
    ("psycopg", "cannot_run", "pass"),  # prepares at the 5th execution; 1.26 routes prepared statements
    ("psycopg2", "pass", "pass"),  # never prepares
    ("asyncpg", "cannot_run", "pass"),  # prepares every statement, with its statement cache
])
def test_the_expected_verdict_follows_the_driver_too(driver, bookworm, sid):
    old, new = (dataclasses.replace(facts, driver=driver) for facts in (BOOKWORM, SID))
    assert required_verdict("translate_map_prepared", "after_commit", "transaction", facts=old).verdict == bookworm
    assert required_verdict("translate_map_prepared", "after_commit", "transaction", facts=new).verdict == sid
    # a request's first transaction prepares nothing that moves: only asyncpg's reuse across transactions,
    # which fresh_session's single transaction per request does not meet
    assert required_verdict("translate_map_prepared", "fresh_session", "transaction", facts=old).verdict == "pass"


def test_conditions_turn_only_the_deployment_dependent_built_ins():
    table = load_table()
    turned = {name: {strategy for strategy, _, _ in entries} for name, entries in table.when.items()}
    assert set().union(*(turned[name] for name in turned if not name.startswith("pg"))) == {
        "connect_event_search_path", "search_path_per_connection", "startup_options_search_path",
        "translate_map_prepared"}
    # another pooler turns the layers bound at connect or by startup options, and (pgagroal's transaction
    # pipeline, which hands out the first free server) the scheduler of the session-SET layers and the
    # driver's prepared statements after a rollback
    assert turned["pgpool"] | turned["pgpool_keeps_session_state"] == {"search_path_per_connection",
                                                                       "startup_options_search_path"}
    assert turned["pgagroal"] == {"search_path_per_connection", "startup_options_search_path", "search_path_set",
                                  "search_path_set_async", "rls_guc_session", "rls_role_session",
                                  "translate_map_prepared"}
    # a condition entry of "*" covers every scenario the strategy has an entry for
    scenarios = {s for (strategy, s, _) in table.base if strategy == "connect_event_search_path"}
    assert {s for (_, s, _) in table.when["search_path_tracked"]} == scenarios


@pytest.mark.parametrize("text, problem", [
    ('[a]\ngenerated = { verdict = "pass", reason = "r" }\n[a.when.no_such]\n"*" = { transaction = "fail", reason = "r" }\n',
     "no such condition"),
    ('[a]\ngenerated = { verdict = "pass", reason = "r" }\n[a.when.prepared_statements]\n"*" = { transaction = "fail" }\n',
     "has no reason"),
    ('[a]\ngenerated = { verdict = "pass", reason = "r" }\n[a.when.prepared_statements]\n"*" = { reason = "r" }\n',
     "names no route"),
    ('[a]\ngenerated = { verdict = "pass", reason = "r" }\n[a.when.prepared_statements]\nraw_text = { session = "fail", reason = "r" }\n',
     "has no entry for raw_text"),
    ('[a]\ngenerated = { verdict = "pass", reason = "r" }\n[a.when.prepared_statements]\n"*" = { session = "leaky", reason = "r" }\n',
     "is not a verdict"),
])
def test_a_malformed_condition_is_refused_with_its_place(tmp_path, text, problem):
    table = tmp_path / "expectations.toml"
    table.write_text(text)
    with pytest.raises(ValueError, match=problem):
        load_table(table)


def test_deployment_names_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(UsageError, match="Unknown deployment 'jessie'") as refused:
        resolve_config({"deployments": "bookworm,jessie"}, env={}, cwd=tmp_path)
    assert "bookworm, trixie, sid" in str(refused.value)
    with pytest.raises(UsageError, match="names others"):
        resolve_config({"deployment": "sid", "pgbouncer": "/usr/sbin/pgbouncer"}, env={}, cwd=tmp_path)
    with pytest.raises(UsageError, match="external backend"):
        resolve_config({"deployment": "sid", "backend": "external"}, env={}, cwd=tmp_path)
    config = resolve_config({}, env={"HARNESS_DEPLOYMENTS": "trixie,sid"}, cwd=tmp_path)
    assert config.deployments == ("trixie", "sid") and config.deployment is None


def test_a_deployment_not_built_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DEPLOYMENTS_DIR", str(tmp_path))
    with pytest.raises(SetupError, match="trixie .* is not built") as missing:
        native_binaries("trixie")
    assert "make deployments" in str(missing.value) and str(tmp_path) in str(missing.value)
    (tmp_path / "trixie").mkdir()
    (tmp_path / "trixie" / "deployment.json").write_text(json.dumps(
        {"pg_bindir": str(tmp_path / "gone"), "pgbouncer": str(tmp_path / "gone" / "pgbouncer")}))
    with pytest.raises(SetupError, match="incomplete") as broken:
        native_binaries("trixie")
    assert "--rebuild" in str(broken.value)


@pytest.mark.parametrize("name", list(DEPLOYMENTS))
def test_every_built_in_deployment_runs_on_this_host_with_its_versions(name):
    """make test builds every deployment first: each one's binaries are there and give its versions."""
    from harness.stack.binaries import pooler_version, postgres_version

    bindir, pooler = native_binaries(name)
    wanted = DEPLOYMENTS[name]
    assert postgres_version(Path(bindir)).split(".")[0] == wanted.postgres
    assert pooler_version(Path(pooler)) == wanted.pooler_version
    assert Path(pooler).name == {"pgbouncer": "pgbouncer", "pgpool": "pgpool", "pgagroal": "pgagroal"}[wanted.pooler]


def test_a_cell_of_a_matrix_run_replays_on_its_own_deployment(tmp_path):
    from harness.jobs import verify_replay
    from harness.tenancy.strategy import load_strategy
    from harness.workload.generated import PROFILES

    matrix = resolve_config({"deployments": "bookworm,sid"}, env={}, cwd=tmp_path)
    # run_verify hands each deployment's cells a config of that deployment alone
    on_sid = dataclasses.replace(matrix, deployment="sid", deployments=())
    command = verify_replay(on_sid, 7)(load_strategy("connect_event_search_path"), "transaction", "after_commit",
                                       PROFILES["ci"])
    assert "--deployment sid" in command and "--deployments" not in command


@pytest.mark.docker  # bookworm's images come with the docker group (make images)
def test_on_docker_a_setting_the_suites_pgbouncer_does_not_know_is_refused_before_anything_starts(tmp_path):
    """The deployment's images run the same suite's PgBouncer as its native build: its names are known here."""
    from harness.stack import start_stack

    config = resolve_config({"backend": "docker", "deployment": "bookworm",
                             "pgbouncer_set": "max_prepared_statements=10"}, env={}, cwd=tmp_path)
    with pytest.raises(UsageError, match="PgBouncer 1.18.0 .* does not know the setting.*max_prepared_statements"):
        start_stack(config)

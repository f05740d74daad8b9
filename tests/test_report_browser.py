"""The report in a real browser: headless Chromium (Debian's) opens it, counts the grid's marks,
follows a failing cell's mark to its timeline, lands on a passing cell's evidence through its
link alone (no JavaScript: :target), and checks a full run's grid fits on one screen;
screenshots are kept with the test output."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from harness.config import resolve_config
from harness.report import write_report
from harness.report.migration import migration_rows
from harness.report.results import results_json
from harness.report.writer import write_report_folder
from harness.tenancy.strategy import BUILTINS
from harness.verify import VerifyRun
from harness.workload.scenarios import SCENARIOS

from test_report import cell

SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "test-screenshots"
ROUTES = ("direct", "session", "transaction")
WINDOW = (1400, 1000)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    # Debian's driver, named explicitly: nothing is downloaded.
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(tmp_path) -> Path:
    config = resolve_config({"report_dir": tmp_path, "scenarios": "after_commit,raw_text"}, env={}, cwd=tmp_path)
    cells = [cell("leaky", route, scenario, True, "pass") for route in ROUTES for scenario in ("after_commit", "raw_text")]
    cells += [cell("sound", route, scenario, False, "pass") for route in ROUTES for scenario in ("after_commit", "raw_text")]
    run = VerifyRun(run_id="20260101-000000-browse", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                    config=config, strategies=["leaky", "sound"], builtin_self_check=False, seed=1, cells=cells,
                    routes=list(ROUTES), environment={"profile": "ci"}, seconds=1.0)
    return write_report(run, tmp_path) / "index.html"


def shoot(browser, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / name
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_report_opens_counts_the_grid_and_a_failing_mark_leads_to_its_timeline(browser, page):
    browser.get(page.as_uri())
    assert "FAIL" in browser.find_element(By.ID, "verdict").text
    marks = browser.find_elements(By.CSS_SELECTOR, "table.matrix a.mark")
    assert len(marks) == 12
    # leaky x after_commit: direct, session, transaction; failed where pass was required: upper case and "!".
    assert [m.text for m in marks[:3]] == ["D!", "S!", "T!"]
    failing = [m for m in marks if "fail" in m.get_attribute("class").split()]
    assert len(failing) == 6 and all("notreq" in m.get_attribute("class") for m in failing)

    target = failing[0].get_attribute("data-cell")
    failing[0].click()
    assert browser.current_url.endswith("#" + target)
    section = browser.find_element(By.ID, target)
    # A failing cell is open from the start: the click on its mark lands on its evidence.
    assert section.find_element(By.TAG_NAME, "details").get_attribute("open") is not None
    timeline = section.find_element(By.CSS_SELECTOR, ".evidence table.timeline")
    assert timeline.is_displayed()
    leaks = timeline.find_elements(By.CSS_SELECTOR, "td.leak")
    assert leaks and "Acme" in leaks[0].text
    shoot(browser, "report-failing-cell.png")


def test_a_link_to_a_passing_cell_shows_its_evidence_without_a_second_click(browser, page):
    browser.get(page.as_uri())
    passing = [m.get_attribute("data-cell") for m in browser.find_elements(By.CSS_SELECTOR, "table.matrix a.mark.pass")]
    assert len(passing) == 6
    target, other = passing[0], passing[1]
    closed = browser.find_element(By.ID, target)
    assert closed.find_element(By.TAG_NAME, "details").get_attribute("open") is None
    assert not closed.find_element(By.CLASS_NAME, "evidence").is_displayed()

    browser.get(page.as_uri() + "#" + target)
    section = browser.find_element(By.ID, target)
    assert section.find_element(By.TAG_NAME, "details").get_attribute("open") is None  # :target alone shows it
    evidence = section.find_element(By.CLASS_NAME, "evidence")
    assert evidence.is_displayed() and "Coverage:" in evidence.text
    assert not browser.find_element(By.ID, other).find_element(By.CLASS_NAME, "evidence").is_displayed()
    shoot(browser, "report-passing-cell.png")

    # The summary still toggles: opening the targeted cell's neighbour shows its evidence too.
    browser.find_element(By.ID, other).find_element(By.TAG_NAME, "summary").click()
    assert browser.find_element(By.ID, other).find_element(By.CLASS_NAME, "evidence").is_displayed()


def full_run_results(tmp_path: Path, deployments: tuple[str | None, ...]) -> dict:
    """What a default run writes (every built-in x route x scenario), per deployment, from one canned cell."""
    config = resolve_config({"report_dir": tmp_path}, env={}, cwd=tmp_path)
    template = [cell("leaky", "direct", "after_commit", True, "fail"), cell("sound", "direct", "after_commit", False, "pass")]
    run = VerifyRun(run_id="20260101-000000-fullgd", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                    config=config, strategies=list(BUILTINS), builtin_self_check=True, seed=1, cells=template,
                    routes=list(ROUTES), environment={"profile": "ci"}, seconds=1.0)
    results = results_json(run)
    leaky, sound = results["cells"]
    cells = []
    for deployment in deployments:
        for i, strategy in enumerate(BUILTINS):
            for route in ROUTES:
                for scenario in SCENARIOS:
                    base = leaky if (i + len(scenario)) % 3 == 0 and route != "direct" else sound
                    c = {**base, "strategy": strategy, "route": route, "scenario": scenario,
                         "id": f"cell-{deployment}-{strategy}-{route}-{scenario}"}
                    if deployment is not None:
                        c["deployment"] = deployment
                    cells.append(c)
    results["cells"], results["migration"] = cells, migration_rows(cells)
    return results


@pytest.mark.parametrize("deployments", [(None,), ("bookworm", "trixie", "sid")], ids=["one", "three-deployments"])
def test_the_grid_of_a_full_run_fits_on_a_screen(browser, tmp_path, deployments):
    results = full_run_results(tmp_path, deployments)
    page = write_report_folder(results, tmp_path) / "index.html"
    browser.get(page.as_uri() + "#matrix")
    grid = browser.find_element(By.CSS_SELECTOR, "table.matrix")
    marks = grid.find_elements(By.CSS_SELECTOR, "a.mark")
    assert len(marks) == len(BUILTINS) * len(ROUTES) * len(SCENARIOS) * len(deployments)
    # One screen wide always; one screen high for one deployment, three (not 130 rows' worth) for three.
    assert grid.size["width"] <= WINDOW[0] - 40
    assert grid.size["height"] <= (WINDOW[1] - 100) * len(deployments)
    shoot(browser, f"report-grid-{len(deployments)}.png")

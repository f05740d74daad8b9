"""The report in a real browser: headless Chromium (Debian's) opens it, counts the matrix,
expands a failing cell and finds its timeline; a screenshot is kept with the test output."""

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
from harness.verify import VerifyRun

from test_report import cell

SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "test-screenshots"


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1600"):
        options.add_argument(flag)
    # Debian's driver, named explicitly: nothing is downloaded.
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_opens_counts_the_matrix_and_expands_a_failing_cell(browser, tmp_path):
    config = resolve_config({"report_dir": tmp_path}, env={}, cwd=tmp_path)
    cells = [cell("leaky", route, scenario, True, "pass") for route in ("direct", "session", "transaction")
             for scenario in ("after_commit", "raw_text")]
    cells += [cell("sound", route, scenario, False, "pass") for route in ("direct", "session", "transaction")
              for scenario in ("after_commit", "raw_text")]
    run = VerifyRun(run_id="20260101-000000-browse", started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                    config=config, strategies=["leaky", "sound"], builtin_self_check=False, seed=1, cells=cells,
                    environment={"profile": "ci"}, seconds=1.0)
    page = write_report(run, tmp_path) / "index.html"
    browser.get(page.as_uri())

    assert "FAIL" in browser.find_element(By.ID, "verdict").text
    matrix = browser.find_elements(By.CSS_SELECTOR, "table.matrix td.v")
    assert len(matrix) == 12
    failing = [td for td in matrix if "FAIL" in td.text]
    assert len(failing) == 6

    target = failing[0].get_attribute("data-cell")
    failing[0].find_element(By.TAG_NAME, "a").click()
    details = browser.find_element(By.ID, target)
    if details.get_attribute("open") is None:
        details.find_element(By.TAG_NAME, "summary").click()
    assert details.get_attribute("open") is not None
    timeline = details.find_element(By.CSS_SELECTOR, "table.timeline")
    assert timeline.is_displayed()
    leaks = timeline.find_elements(By.CSS_SELECTOR, "td.leak")
    assert leaks and "Acme" in leaks[0].text

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "report-failing-cell.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

"""The isolation report of a run: results.json, junit.xml and one self-contained index.html."""

from harness.report.writer import write_report, write_report_folder

__all__ = ["write_report", "write_report_folder"]

"""Static scan (scenario 8): find leftovers of the legacy search_path tenancy pattern.

The scan parses Python source with :mod:`ast`, so comments and docstrings that
merely *describe* the old pattern are not reported; only code that still runs it.
"""

from harness.scan.scanner import ScanFinding, main, scan_path, scan_source

__all__ = ["ScanFinding", "main", "scan_path", "scan_source"]

"""Static scan (scenario 8): code that binds tenants through search_path, and raw SQL that bypasses the translate map.

``harness scan PATH...`` reads Python source (any version up to 3.14, see
:mod:`harness.scan.syntax`), follows the strings that reach SQL calls into a
PostgreSQL parser (:mod:`harness.scan.sql`), reads the team's models
(:mod:`harness.scan.models`), resolves calls through scopes and imports
(:mod:`harness.scan.calls`) and reports each finding at its own line, tagged
app/scripts/tests/migrations. Comments, docstrings, log messages and strings
that never reach SQL are not judged; a call is judged by the def it reaches,
not by its name (the legacy layer's helpers and django-tenants' calls, known
APIs, apart).
"""

from harness.scan.findings import NotScanned, ScanFinding, ScanResult
from harness.scan.scanner import main, scan_paths, scan_source

__all__ = ["NotScanned", "ScanFinding", "ScanResult", "main", "scan_paths", "scan_source"]

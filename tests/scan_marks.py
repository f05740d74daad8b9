"""Expected scan findings written in the scanned source itself, and a scan's findings in the same terms.

A finding is expected where a line says ``# expect: RULE [@ANCHOR]``; ``# anchor: NAME`` marks the definition
or the SET a finding cites. Both sides are (file, line, rule, cited "file:line"), relative to the tree's root.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.scan import scan_paths

Mark = tuple[str, int, str, str | None]
_EXPECT = re.compile(r"# expect: ([a-z-]+)(?: @([a-z-]+))?")
_ANCHOR = re.compile(r"# anchor: ([a-z-]+)")


def expected_findings(root: Path) -> set[Mark]:
    """Every finding the ``*.py`` files under ``root`` expect, citing what their anchors mark."""
    expected, anchors = set(), {}
    for file in sorted(root.rglob("*.py")):
        relative = file.relative_to(root).as_posix()
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            for match in _EXPECT.finditer(line):
                expected.add((relative, number, match.group(1), match.group(2)))
            for match in _ANCHOR.finditer(line):
                anchors[match.group(1)] = f"{relative}:{number}"
    return {(path, line, rule, anchors[anchor] if anchor else None) for path, line, rule, anchor in expected}


def found_findings(scanned: Path, root: Path) -> set[Mark]:
    """Every finding of a scan of ``scanned``, with paths relative to ``root``."""
    found = set()
    for f in scan_paths([scanned]).findings:
        cites = None
        if f.cites:
            path, _, line = f.cites.rpartition(":")
            cites = f"{Path(path).relative_to(root).as_posix()}:{line}"
        found.add((Path(f.path).relative_to(root).as_posix(), f.line, f.rule, cites))
    return found

"""The scan as SARIF 2.1.0, for GitHub code scanning (github/codeql-action/upload-sarif).

Built from the ``scan`` value of results.json (not from a run object), so that
``harness scan --sarif`` and the report folder's ``scan.sarif`` are the same
file. A gating finding is an ``error``, a finding in a tag that does not gate
(migrations) a ``warning``, information (foreign keys to shared tables) a
``note``; a file the scan could not read is a tool notification, not a result.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.scan.findings import RULES

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SOURCE_ROOT = "SRCROOT"


def _version() -> str:
    try:
        return metadata.version("tenant-isolation-harness")
    except metadata.PackageNotFoundError:
        return "0"


def _location(path: str, line: int, snippet: str = "") -> dict[str, Any]:
    where = Path(path)
    artifact = ({"uri": where.as_uri()} if where.is_absolute()
                else {"uri": quote(where.as_posix()), "uriBaseId": SOURCE_ROOT})
    region: dict[str, Any] = {"startLine": max(1, int(line))}
    if snippet:
        region["snippet"] = {"text": snippet}
    return {"physicalLocation": {"artifactLocation": artifact, "region": region}}


def sarif_log(scan: dict[str, Any]) -> dict[str, Any]:
    """A SARIF log with one run from a results.json ``scan`` value."""
    rule_ids = list(RULES)
    results = []
    for finding in scan.get("findings", []):
        rule = RULES.get(finding["rule"])
        level = "note" if rule is not None and not rule.gates else ("error" if finding.get("gating", True)
                                                                    else "warning")
        result: dict[str, Any] = {
            "ruleId": finding["rule"],
            "level": level,
            "message": {"text": finding["message"]},
            "locations": [_location(finding["path"], finding["line"], finding.get("snippet", ""))],
            "properties": {"tag": finding.get("tag", "app"), "gating": bool(finding.get("gating", True))},
        }
        if finding["rule"] in RULES:
            result["ruleIndex"] = rule_ids.index(finding["rule"])
        if finding.get("table"):
            result["properties"]["table"] = finding["table"]
        cited_path, _, cited_line = (finding.get("cites") or "").rpartition(":")
        if cited_path and cited_line.isdigit():  # the def a call reaches, the SET a query relies on
            related = _location(cited_path, int(cited_line))
            related.update(id=0, message={"text": "cited by this finding"})
            result["relatedLocations"] = [related]
        results.append(result)
    notifications = [{"level": "warning", "message": {"text": f"not scanned: {item['reason']}"},
                      "locations": [_location(item["path"], 1)]} for item in scan.get("not_scanned", [])]
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "harness scan",
            "fullName": "tenant-isolation-harness static scan",
            "version": _version(),
            "rules": [{"id": rule.id, "name": rule.id.replace("-", " "),
                       "shortDescription": {"text": rule.title},
                       "defaultConfiguration": {"level": "error" if rule.gates else "note"}}
                      for rule in RULES.values()],
        }},
        "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notifications}],
        "results": results,
    }
    base = scan.get("base")
    if base:
        run["originalUriBaseIds"] = {SOURCE_ROOT: {"uri": Path(base).as_uri().rstrip("/") + "/"}}
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


def write_sarif(scan: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sarif_log(scan), indent=1, ensure_ascii=False), encoding="utf-8")
    return path

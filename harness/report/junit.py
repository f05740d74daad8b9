"""junit.xml: one test case per cell (per deployment, in a ``--deployments`` run), failed when the cell did not measure its required verdict."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


def junit_xml(results: dict[str, Any]) -> bytes:
    cells = results["cells"]
    failures = sum(1 for c in cells if not c["as_required"])
    skipped = len(results.get("not_run", []))
    suite = ET.Element("testsuite", name="tenant-isolation", tests=str(len(cells) + skipped),
                       failures=str(failures), errors="0", skipped=str(skipped), time=str(results["seconds"]), timestamp=results["started"])
    for cell in cells:
        # The same cell on two deployments is two test cases: the deployment leads the class name.
        label = (cell.get("variant") or cell.get("deployment"))
        where = f"{label.replace('/', '.')}." if label else ""
        case = ET.SubElement(suite, "testcase", classname=f"{where}{cell['strategy']}.{cell['route']}",
                             name=cell["scenario"], time=str(cell["seconds"]))
        if not cell["as_required"]:
            failure = ET.SubElement(case, "failure", message=f"measured {cell['verdict']}, required {cell['required']}")
            failure.text = "\n".join([cell["verdict_reason"], *(f["explanation"] for f in cell["findings"][:20]),
                                      *(["replay: " + cell["replay"]] if cell["replay"] else [])])
        out = ET.SubElement(case, "system-out")
        out.text = f"verdict {cell['verdict']} ({cell['verdict_reason']}); required {cell['required']}"
    for item in results.get("not_run", []):
        case = ET.SubElement(suite, "testcase", classname="not_run", name=item["what"], time="0")
        ET.SubElement(case, "skipped", message=item["reason"])
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)

"""Code-verification evidence for the report: counts of the test suite's results (JUnit XML).

``run`` copies the results recorded at build time into the archive (:data:`ARCHIVED`); the
report reads only that copy, so a report rebuilt years later shows the evidence of the code
that made the run.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

__all__ = ["ARCHIVED", "read_test_results", "recorded_test_results"]

#: Where a run archives the test results of the code it ran (an input of its manifest).
ARCHIVED = "verification/junit.xml"


def recorded_test_results() -> Path | None:
    """Where build-time test results are: ``$INSILICO_TEST_RESULTS`` or ``build-artifacts/junit.xml``."""
    env = os.environ.get("INSILICO_TEST_RESULTS")
    if env:
        return Path(env)
    path = Path(__file__).resolve().parents[2] / "build-artifacts" / "junit.xml"
    return path if path.exists() else None


def read_test_results(path: Path | None) -> dict[str, Any] | None:
    """Counts of a JUnit XML file (pytest ``--junitxml``): per test module and in total.

    Returns ``None`` when there is no file. Reference-value tests are the modules whose tests
    compare to closed-form or published values (tier 1 and 2 of the test suite).
    """
    if path is None or not Path(path).exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    modules: dict[str, dict[str, int]] = {}
    timestamp = ""
    for suite in suites:
        timestamp = timestamp or suite.get("timestamp", "")
        for case in suite.iter("testcase"):
            module = (case.get("classname") or "?").split(".")
            mod = next((m for m in module if m.startswith("test_")), module[-1])
            row = modules.setdefault(mod, {"passed": 0, "failed": 0, "skipped": 0})
            if case.find("failure") is not None or case.find("error") is not None:
                row["failed"] += 1
            elif case.find("skipped") is not None:
                row["skipped"] += 1
            else:
                row["passed"] += 1
    total = {k: sum(r[k] for r in modules.values()) for k in ("passed", "failed", "skipped")}
    return {"source": str(path), "timestamp": timestamp, "modules": modules, "total": total}

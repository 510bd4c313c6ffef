"""The report in headless Chromium: it renders, makes no external request, prints to PDF.

A screenshot of the first screen is kept under ``build-artifacts/`` for review.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from insilico_trials.report import chromium_flags, render_pdf, render_report
from tests.test_report import build_archive

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI must run this test")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path: Path) -> None:
    exe = _chromium()
    archive, meta = build_archive(tmp_path)
    page = archive / "report.html"
    page.write_text(render_report(archive, meta), encoding="utf-8")
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:|url\(\s*["']?https?:""", html)
    out = ROOT / "build-artifacts"
    out.mkdir(exist_ok=True)
    shot = out / "report-first-screen.png"
    shot.unlink(missing_ok=True)
    profile = tmp_path / "profile"
    base = [exe, *chromium_flags(str(profile)), "--enable-logging=stderr", "--v=0"]
    proc = subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console
    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180
    )  # fmt: skip
    assert 'id="credibility"' in dom.stdout and "Decision:" in dom.stdout
    requests = re.findall(r"https?://\S+", dom.stderr)
    assert requests == [], requests
    pdf = render_pdf(page, tmp_path / "report.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 50_000

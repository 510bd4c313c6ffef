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


# Markup a forger or a careless author might put in a protocol's free-text fields.
PAYLOAD = (
    "<script>document.title='PWNED-script'</script>"
    "<img src=x onerror=\"document.title='PWNED-img'\">"
    "<style>body{display:none}</style>"
)


@pytest.mark.slow
def test_markup_in_protocol_text_fields_does_not_run(tmp_path: Path) -> None:
    """Every free-text field of the protocol carries script and handler markup: the report
    shows it as text (autoescaping), and the page's Content-Security-Policy would block any
    script that slipped through. Checked in Chromium: the title is unchanged, no element was
    injected."""
    exe = _chromium()
    fields = {
        "title": PAYLOAD,
        "question": PAYLOAD,
        "arms[1].regimen.drug": PAYLOAD,
        "population.parameters.KL.unit": PAYLOAD,
        "population.covariates.AGE.unit": PAYLOAD,
    }
    archive, meta = build_archive(tmp_path, fields)
    page = archive / "report.html"
    html = render_report(archive, meta)
    page.write_text(html, encoding="utf-8")
    # no element carries a handler or is a script: the markup is text (&lt;...)
    assert not re.search(r"<script", html, re.I)
    assert not re.search(r"<[a-z][^>]*\sonerror\s*=", html, re.I)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count("&lt;script&gt;document.title") >= len(fields)
    dom = subprocess.run(
        [exe, *chromium_flags(str(tmp_path / "profile")), "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert "PWNED" not in re.search(r"<title>(.*?)</title>", dom.stdout, re.S).group(1)
    assert "<script" not in dom.stdout.lower() and '<img src="x"' not in dom.stdout
    assert "&lt;script&gt;document.title='PWNED-script'&lt;/script&gt;" in dom.stdout

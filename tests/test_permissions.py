"""Permission denied: `run`, `design` and `update` stop before any work with a clear error.

Real EACCES, not a mock: the target folder is made read-only (mode 0555) and the command runs
in a subprocess. Root ignores permission bits, so when the suite runs as root the subprocess
drops its effective uid to ``nobody`` first (after importing what the command needs: the
interpreter's own files may not be readable by ``nobody``).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from insilico_trials.io.archive import sha256_file, verify_archive
from tests.conftest import ROOT

NOBODY = 65534
DRIVER = textwrap.dedent(
    """
    import os, sys
    import insilico_trials.app.cli, insilico_trials.app.commands, insilico_trials.app.design_cmd
    import insilico_trials.io.outputs, insilico_trials.adapters.mlflow_tracker
    import insilico_trials.io.realdata, insilico_trials.io.updates
    if os.geteuid() == 0:
        os.setegid({nobody})
        os.seteuid({nobody})
    sys.exit(insilico_trials.app.cli.main(sys.argv[1:]))
    """
).format(nobody=NOBODY)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder ``nobody`` can traverse (pytest's own tmp folders are private to the user)."""
    folder = Path(tempfile.mkdtemp(prefix="insilico-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(folder)


def _command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def _readable(path: Path) -> None:
    path.chmod(0o644)


@pytest.mark.slow  # a whole CLI process each (7 s): CI runs them, the fast tier does not
@pytest.mark.parametrize("command", ["run", "design"])
def test_run_and_design_into_a_read_only_folder(open_tmp, command):
    protocol = (
        ROOT
        / "protocols"
        / ("onc_phase2_orr.yaml" if command == "run" else "design_binary_borrowing.yaml")
    )
    local = open_tmp / protocol.name
    shutil.copyfile(protocol, local)
    _readable(local)
    reports = open_tmp / "reports"
    reports.mkdir()
    _read_only(reports)
    extra = ["--replicates", "10"] if command == "design" else []
    out = _command([command, str(local), "--reports", str(reports), *extra], open_tmp)
    assert out.returncode == 1, out.stdout + out.stderr
    kind = "archive" if command == "run" else "design"
    assert f"error: cannot write the {kind} folder ({reports}" in out.stderr, out.stderr
    assert "Permission denied); nothing was run." in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert list(reports.iterdir()) == []  # nothing written
    assert not (open_tmp / ".insilico").exists()  # not even a tracking store


@pytest.mark.slow
def test_update_into_a_read_only_archive(open_tmp):
    from tests.test_flow_e2e import _cut
    from tests.test_report import build_archive

    archive, meta = build_archive(open_tmp)
    # build_archive writes no manifest; a real archive has one (the same writer as `run`).
    from insilico_trials.io.archive import write_manifest

    meta = dict(meta)
    outputs = meta.pop("outputs")
    write_manifest(archive, inputs=["protocol.yaml"], outputs=outputs, documents=[], meta=meta)
    cut = _cut(open_tmp / "cut", ["P1", "P2"], {"P1"})
    for p in [open_tmp, *open_tmp.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    _read_only(archive)
    before = {p.name: sha256_file(p) for p in archive.iterdir() if p.is_file()}
    out = _command(["update", str(archive), "--data", str(cut)], open_tmp)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"error: cannot write updates into the archive ({archive}" in out.stderr, out.stderr
    assert "Permission denied); nothing was written and the archive is unchanged." in out.stderr
    assert {p.name: sha256_file(p) for p in archive.iterdir() if p.is_file()} == before
    assert not (archive / "updates").exists()
    assert verify_archive(archive) == []

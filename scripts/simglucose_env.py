"""An isolated Python environment holding the open-source ``simglucose`` package (MIT).

simglucose is used only as an external reference (reference trajectories, timing); it is not a
dependency of ``insilico_trials``. Its pins are old (``gym==0.9.4`` imports ``distutils`` and
``pkg_resources``), so it lives in its own virtual environment, outside the repository's venv:

* ``$INSILICO_SIMGLUCOSE_VENV`` if set (the venv directory itself), else
* ``~/.cache/insilico-trials/simglucose-<version>/``.

Every package is pinned exactly in :data:`PINNED`. simglucose 0.2.11 (the newest on PyPI)
installs with its declared dependencies on Python 3.12; the one addition is
``setuptools<81``: gym 0.9.4 does ``import distutils.version`` (gone from Python 3.12, provided
by setuptools' distutils shim) and ``import pkg_resources`` (removed from setuptools 81 on).

Standard library only, so the repository's tests and benchmarks can import it::

    sys.path.insert(0, str(REPO / "scripts"))
    from simglucose_env import ensure_simglucose_python
    python = ensure_simglucose_python()      # installs on first use (one progress line)

Run ``python scripts/simglucose_env.py`` to print the environment's python (installing first if
needed).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIMGLUCOSE_VERSION = "0.2.11"
PYTHON_VERSION = "3.12"

# Exactly what `uv pip install simglucose==0.2.11 "setuptools<81"` resolved on Python 3.12
# (simglucose's declared dependencies: gym==0.9.4, gymnasium~=0.29.1, pathos, scipy,
# matplotlib, numpy, pandas; and theirs).
PINNED: tuple[str, ...] = (
    f"simglucose=={SIMGLUCOSE_VERSION}",
    "setuptools==80.10.2",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "cloudpickle==3.1.3",
    "contourpy==1.4.0",
    "cycler==0.12.1",
    "dill==0.4.1",
    "farama-notifications==0.0.6",
    "fonttools==4.68.0",
    "gym==0.9.4",
    "gymnasium==0.29.1",
    "idna==3.20",
    "kiwisolver==1.5.1",
    "matplotlib==3.11.2",
    "multiprocess==0.70.19",
    "numpy==2.5.5",
    "packaging==26.4",
    "pandas==3.1.1",
    "pathos==0.3.5",
    "pillow==13.0.0",
    "pox==0.3.7",
    "ppft==1.7.8",
    "pyglet==2.1.19",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
    "requests==2.34.2",
    "scipy==1.18.1",
    "six==1.17.0",
    "typing-extensions==4.16.0",
    "tzdata==2026.6",
    "urllib3==2.8.0",
)
# gym 0.9.4 is an sdist; build it with the same setuptools.
BUILD_CONSTRAINTS: tuple[str, ...] = ("setuptools==80.10.2",)

_MARKER = ".insilico-simglucose.json"


def default_venv_dir() -> Path:
    env = os.environ.get("INSILICO_SIMGLUCOSE_VENV")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "insilico-trials" / f"simglucose-{SIMGLUCOSE_VERSION}"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _marker_payload() -> dict[str, object]:
    return {"pinned": list(PINNED), "build_constraints": list(BUILD_CONSTRAINTS)}


def _is_ready(venv: Path) -> bool:
    marker = venv / _MARKER
    if not (_venv_python(venv).exists() and marker.exists()):
        return False
    try:
        return json.loads(marker.read_text()) == _marker_payload()
    except (OSError, ValueError):
        return False


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run([*cmd, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _find_uv() -> list[str] | None:
    """uv as a command: $UV (set by `uv run`), PATH, next to this interpreter, or `-m uv`."""
    candidates: list[list[str]] = []
    if os.environ.get("UV"):
        candidates.append([os.environ["UV"]])
    which = shutil.which("uv")
    if which:
        candidates.append([which])
    for prefix in (sys.prefix, sys.base_prefix):
        candidates.append([str(Path(prefix) / "bin" / "uv")])
    if importlib.util.find_spec("uv") is not None:
        candidates.append([sys.executable, "-m", "uv"])
    for cmd in candidates:
        if _works(cmd):
            return cmd
    return None


def _base_python() -> str:
    """A Python 3.12 interpreter to build the venv from (never a venv's own python)."""
    if sys.version_info[:2] == (3, 12):
        return getattr(sys, "_base_executable", None) or sys.executable
    for name in ("python3.12",):
        found = shutil.which(name)
        if found:
            return found
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for cand in sorted(pyenv.glob("3.12*/bin/python3.12"), reverse=True):
        return str(cand)
    return PYTHON_VERSION  # let uv find (or fetch) one


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )


def _install(venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    uv = _find_uv()
    with tempfile.TemporaryDirectory() as tmp:
        build_constraints = Path(tmp) / "build-constraints.txt"
        build_constraints.write_text("\n".join(BUILD_CONSTRAINTS) + "\n")
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        if uv is not None:
            _run([*uv, "venv", "--quiet", "--python", _base_python(), str(venv)], env=env)
            _run(
                [
                    *uv, "pip", "install", "--quiet",
                    "--python", str(_venv_python(venv)),
                    "--build-constraints", str(build_constraints),
                    *PINNED,
                ],
                env=env,
            )  # fmt: skip
        else:  # no uv: the standard library's venv and pip
            _run([_base_python(), "-m", "venv", str(venv)], env=env)
            _run(
                [str(_venv_python(venv)), "-m", "pip", "install", "--quiet", *PINNED],
                env=env,
            )
    # gym 0.9.4's sources have invalid escape sequences; compile them once, quietly, so that
    # importing never prints SyntaxWarnings (exit code ignored: gym also ships a Python 2 file).
    site = next((venv / "lib").glob("python3*/site-packages"))
    subprocess.run(
        [str(_venv_python(venv)), "-W", "ignore", "-m", "compileall", "-q",
         str(site / "gym"), str(site / "simglucose")],
        capture_output=True,
    )  # fmt: skip
    _run(
        [
            str(_venv_python(venv)), "-W", "ignore", "-c",
            "from simglucose.patient.t1dpatient import T1DPatient",
        ]
    )  # fmt: skip
    (venv / _MARKER).write_text(json.dumps(_marker_payload(), indent=1) + "\n")


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_simglucose_python(cache_dir: Path | None = None) -> Path:
    """Create (or reuse) the isolated simglucose venv and return the path of its python.

    ``cache_dir``, if given, is the directory the venv ``simglucose-<version>`` is made in;
    otherwise ``$INSILICO_SIMGLUCOSE_VENV`` (the venv itself) or
    ``~/.cache/insilico-trials/simglucose-<version>``. A venv whose recorded pins differ from
    :data:`PINNED` (or that is half-installed) is rebuilt. Concurrent callers wait on a file lock.
    """
    if cache_dir is not None:
        venv = Path(cache_dir).expanduser() / f"simglucose-{SIMGLUCOSE_VERSION}"
    else:
        venv = default_venv_dir()
    venv = venv.absolute()
    if _is_ready(venv):
        return _venv_python(venv)
    with _lock(venv.parent / f".{venv.name}.lock"):
        if not _is_ready(venv):
            print(
                f"installing simglucose {SIMGLUCOSE_VERSION} ({len(PINNED)} pinned packages) "
                f"into {venv} ...",
                file=sys.stderr,
                flush=True,
            )
            _install(venv)
    return _venv_python(venv)


if __name__ == "__main__":
    print(ensure_simglucose_python())

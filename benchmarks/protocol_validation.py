"""Loading and validating a protocol: import cost, load, pre-flight and ``validate`` in fresh
processes, against the code before the restructure (measured in the same run).

Before, the protocol schema imported the 1,100-line design module (and with it SciPy and the
sampler stack) and drew 20,000 pilot patients on every load. Now loading never samples; the
eligibility pilot is a pre-flight step of ``run`` and ``validate``.

    uv run python benchmarks/protocol_validation.py [--baseline f2b8d18] [--repeat 5]

The baseline is checked out in a temporary git worktree and run with this environment
(``PYTHONPATH`` points at it). Prints medians per step and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ["onc_phase2_orr", "zhang2017_adaptive", "design_binary_borrowing", "dose_ranging_pkpd"]

NEW = {
    "import the protocol schema": "import insilico_trials.spec.protocol",
    "load one protocol (schema and cross-section rules)": (
        "from insilico_trials.spec.protocol import load_protocol\n"
        "load_protocol('protocols/onc_phase2_orr.yaml')"
    ),
    "load + pre-flight (eligibility pilot)": (
        "from insilico_trials.run.preflight import checked_protocol\n"
        "checked_protocol('protocols/onc_phase2_orr.yaml')"
    ),
}
OLD = {
    "import the protocol schema": "import insilico_trials.protocol",
    "load one protocol (schema and cross-section rules)": (
        "from insilico_trials.protocol import load_protocol\n"
        "load_protocol('protocols/onc_phase2_orr.yaml')"
    ),
    # the old loader ran the pilot inside the schema: load is load + pre-flight
    "load + pre-flight (eligibility pilot)": (
        "from insilico_trials.protocol import load_protocol\n"
        "load_protocol('protocols/onc_phase2_orr.yaml')"
    ),
}


def _time(code: str, cwd: Path, env_path: Path, repeat: int) -> float:
    import os

    env = {**os.environ, "PYTHONPATH": str(env_path)}
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, check=False, capture_output=True
        )
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cli(args: list[str], cwd: Path, env_path: Path, repeat: int, module: str) -> float:
    code = f"import sys; from {module} import main; sys.exit(main({args!r}))"
    return _time(code, cwd, env_path, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="f2b8d18", help="commit before the restructure")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="insilico-baseline-") as tmp:
        old_root = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_root), args.baseline],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            rows = []
            for step in NEW:
                new = _time(NEW[step], ROOT, ROOT, args.repeat)
                old = _time(OLD[step], old_root, old_root, args.repeat)
                rows.append((step, new, old))
            files = [f"protocols/{p}.yaml" for p in PROTOCOLS]
            new = _cli(["validate", files[0]], ROOT, ROOT, args.repeat, "insilico_trials.app.cli")
            old = _cli(
                ["validate", files[0]], old_root, old_root, args.repeat, "insilico_trials.cli"
            )
            rows.append(("insilico-trials validate (one protocol, whole process)", new, old))
            new = _cli(["validate", *files], ROOT, ROOT, args.repeat, "insilico_trials.app.cli")
            old = _cli(["validate", *files], old_root, old_root, args.repeat, "insilico_trials.cli")
            rows.append((f"insilico-trials validate ({len(files)} protocols)", new, old))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_root)],
                check=False, capture_output=True,
            )  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"median of {args.repeat} fresh processes each (seconds); baseline {args.baseline}")
    print(f"  {'step':<{width}}  {'now':>7}  {'before':>7}  ratio")
    for step, new, old in rows:
        print(f"  {step:<{width}}  {new:7.2f}  {old:7.2f}  {old / new:5.1f}x faster")


if __name__ == "__main__":
    main()

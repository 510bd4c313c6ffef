"""The statistician's loop: wall time of each command from a fresh checkout, this commit beside a
baseline commit measured in the same run, and whether the numbers are the same.

    uv run python benchmarks/fast_loop.py [--baseline REV] [--keep]

Both commits are checked out with ``git worktree`` into a temporary folder and set up as their
README says (not timed): the baseline with ``uv sync --frozen``, this commit with
``uv sync --frozen --compile-bytecode`` (on a machine that sets ``PYTHONDONTWRITEBYTECODE``,
as this one does, that is the difference between compiling the libraries from source in every
process and not). To separate that from the code's changes, the baseline is measured a second
time set up with bytecode ("baseline+pyc"; ``--no-decompose`` skips it). Every command then runs there as a user runs it
(``uv run insilico-trials ...``, embedded defaults, one command at a time: the machine has 2
cores). Measured, in this order, for each commit:

- ``--help`` and ``validate protocols/onc_phase2_orr.yaml`` (median of 3);
- the main job cold (the first run in the checkout: no ``.insilico/``), the same protocol
  again, and an edited protocol (``delta`` 0.10 -> 0.12, treatment arm 40 -> 44 patients);
- ``update`` of the cold run's archive with a small real data cut (binary endpoint, exact
  conjugate refit) and ``rerun`` of that archive (the run and the update replayed);

and for this commit only, warm mode: ``services start``, the main job three times (the first
run after the start, the same again, the edited protocol), an update and a rerun on the warm
services, ``services stop``.

Goals (issue 19): cold run < 30 s, second or edited run < 12 s, validate < 1 s, --help <
0.5 s, conjugate update < 10 s, rerun < 15 s; numeric outputs identical (every file of the
manifest's ``outputs`` by SHA-256, the update's record) between the commits and between warm
and embedded. Each command's own timing summary is printed under its line. The shared caches
of the machine (uv's package cache, PyTensor's compile cache in ``~/.pytensor``) are warm, as
after any earlier use: "cold" is a fresh checkout, not a fresh machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "206097c"  # the last commit before issue 19's work
MAIN = "protocols/onc_phase2_orr.yaml"
GOALS = {
    "--help": 0.5,
    "validate": 1.0,
    "run (cold)": 30.0,
    "run (again)": 12.0,
    "run (edited)": 12.0,
    "update (conjugate)": 10.0,
    "rerun": 15.0,
}


def sh(args: list[str], cwd: Path, *, check: bool = True) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    text = out.stdout + out.stderr
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} (in {cwd}) exited {out.returncode}:\n{text[-4000:]}")
    return elapsed, text


def cli(checkout: Path, *args: str, check: bool = True) -> tuple[float, str]:
    return sh(["uv", "run", "--frozen", "-q", "insilico-trials", *args], checkout, check=check)


def stages(text: str) -> list[str]:
    """The command's own timing summary lines."""
    lines = text.splitlines()
    if "timing summary:" not in lines:
        return []
    return [ln for ln in lines[lines.index("timing summary:") + 1 :] if ln.startswith("  ")]


def archive_of(text: str, checkout: Path) -> Path:
    line = next(ln for ln in text.splitlines() if ln.startswith("archive: "))
    return checkout / line.split(": ", 1)[1].strip()


def edited(checkout: Path) -> Path:
    src = (checkout / MAIN).read_text()
    assert "delta: 0.10" in src and "  - name: tki200\n    n: 40" in src, "main protocol changed"
    text = src.replace("delta: 0.10", "delta: 0.12").replace(
        "  - name: tki200\n    n: 40", "  - name: tki200\n    n: 44"
    )
    path = checkout / "protocols" / "bench_edited.yaml"
    path.write_text(text)
    return path


def write_cut(folder: Path) -> Path:
    """10 real control patients (2 responders) and 10 on tki200 (5 responders), ADaM CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"C{i:02d}" for i in range(10)] + [f"T{i:02d}" for i in range(10)]
    arms = ["control"] * 10 + ["tki200"] * 10
    resp = {"C00", "C01", "T00", "T01", "T02", "T03", "T04"}
    adsl = ["USUBJID,ARM,AGE"] + [f"{s},{a},60" for s, a in zip(ids, arms, strict=True)]
    adtte = ["USUBJID,PARAMCD,AVAL,CNSR"] + [f"{s},PFS,90.0,1" for s in ids]
    adrs = ["USUBJID,PARAMCD,AVALC"] + [f"{s},BOR,{'PR' if s in resp else 'SD'}" for s in ids]
    for name, rows in (("adsl", adsl), ("adtte", adtte), ("adrs", adrs)):
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return folder


def outputs(archive: Path) -> dict[str, str]:
    return json.loads((archive / "manifest.json").read_text())["outputs"]


def update_numbers(archive: Path) -> dict:
    (folder,) = sorted((archive / "updates").iterdir())[-1:]
    rec = json.loads((folder / "update.json").read_text())
    keys = ("posterior_mean", "posterior_sd", "posterior_ci", "prior_ess", "borrowed_virtual",
            "effects", "look", "engine")  # fmt: skip
    return {k: rec.get(k) for k in keys}


def measure(checkout: Path, cut: Path, label: str) -> dict:
    res: dict = {"times": {}, "stages": {}}

    def record(name: str, seconds: float, text: str = "") -> None:
        res["times"][name] = seconds
        res["stages"][name] = stages(text)
        print(f"  {label:<9} {name:<20} {seconds:7.2f} s", flush=True)

    record("--help", statistics.median(cli(checkout, "--help")[0] for _ in range(3)))
    record("validate", statistics.median(cli(checkout, "validate", MAIN)[0] for _ in range(3)))
    t, text = cli(checkout, "run", MAIN)
    record("run (cold)", t, text)
    res["archive"] = archive_of(text, checkout)
    t, text = cli(checkout, "run", MAIN)
    record("run (again)", t, text)
    t, text = cli(checkout, "run", str(edited(checkout)))
    record("run (edited)", t, text)
    res["edited_archive"] = archive_of(text, checkout)
    t, text = cli(checkout, "update", str(res["archive"]), "--data", str(cut))
    record("update (conjugate)", t, text)
    t, text = cli(checkout, "rerun", str(res["archive"]))
    record("rerun", t, text)
    res["rerun_identical"] = "DIFFERENT" not in text
    return res


def measure_warm(checkout: Path, cut: Path) -> dict:
    res: dict = {"times": {}, "stages": {}}
    t, text = cli(checkout, "services", "start")
    res["times"]["services start"] = t
    print(f"  {'warm':<9} {'services start':<20} {t:7.2f} s", flush=True)
    try:
        for name, args in (
            ("run (first, warm)", ["run", MAIN]),
            ("run (again)", ["run", MAIN]),
            ("run (edited)", ["run", str(checkout / "protocols" / "bench_edited.yaml")]),
        ):
            t, text = cli(checkout, *args)
            res["times"][name], res["stages"][name] = t, stages(text)
            res.setdefault("archives", []).append(archive_of(text, checkout))
            print(f"  {'warm':<9} {name:<20} {t:7.2f} s", flush=True)
        archive = res["archives"][1]
        t, text = cli(checkout, "update", str(archive), "--data", str(cut))
        res["times"]["update (conjugate)"], res["stages"]["update (conjugate)"] = t, stages(text)
        print(f"  {'warm':<9} {'update (conjugate)':<20} {t:7.2f} s", flush=True)
        t, text = cli(checkout, "rerun", str(archive))
        res["times"]["rerun"], res["stages"]["rerun"] = t, stages(text)
        res["rerun_identical"] = "DIFFERENT" not in text
        print(f"  {'warm':<9} {'rerun':<20} {t:7.2f} s", flush=True)
    finally:
        t, text = cli(checkout, "services", "stop")
        res["times"]["services stop"] = t
        res["stop_line"] = text.strip().splitlines()[-1] if text.strip() else ""
        print(f"  {'warm':<9} {'services stop':<20} {t:7.2f} s  ({res['stop_line']})", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--baseline", default=BASELINE, help=f"commit to compare with (default {BASELINE})"
    )
    ap.add_argument("--keep", action="store_true", help="keep the checkouts (printed)")
    ap.add_argument(
        "--no-decompose", action="store_true", help="skip the baseline set up with bytecode"
    )
    args = ap.parse_args()
    head = sh(["git", "rev-parse", "--short", "HEAD"], ROOT)[1].strip()
    base = sh(["git", "rev-parse", "--short", args.baseline], ROOT)[1].strip()
    tmp = Path(tempfile.mkdtemp(prefix="insilico-bench-"))
    checkouts = {"baseline": tmp / f"baseline-{base}", "current": tmp / f"current-{head}"}
    revs = {"baseline": base, "current": head}
    bytecode = {"baseline": False, "current": True}
    if not args.no_decompose:
        checkouts["baseline+pyc"] = tmp / f"baseline-pyc-{base}"
        revs["baseline+pyc"], bytecode["baseline+pyc"] = base, True
    t0 = time.perf_counter()
    try:
        for name, path in checkouts.items():
            sh(["git", "worktree", "add", "--detach", "-q", str(path), revs[name]], ROOT)
            setup = ["uv", "sync", "--frozen", "-q"] + (["--compile-bytecode"] * bytecode[name])
            t, _ = sh(setup, path)
            print(f"{name} {revs[name]}: {path} ({' '.join(setup)}: {t:.1f} s, not timed below)",
                  flush=True)  # fmt: skip
        cut = write_cut(tmp / "cut")
        results = {}
        for name, path in checkouts.items():
            print(f"measuring {name} ...", flush=True)
            results[name] = measure(path, cut, name)
        print("measuring warm mode (current) ...", flush=True)
        warm = measure_warm(checkouts["current"], cut)
        b, c = results["baseline"], results["current"]

        print(f"\nfigures (s; this machine, {sh(['nproc'], ROOT)[1].strip()} cores; baseline "
              f"{base}, current {head}; ratio = baseline / current)")  # fmt: skip
        print(f"  {'command':<20} {'baseline':>9} {'current':>9} {'ratio':>6} {'warm':>7} "
              f"{'goal':>6}  met (current / warm)")  # fmt: skip
        for name, goal in GOALS.items():
            bt, ct = b["times"][name], c["times"][name]
            wt = warm["times"].get(name)
            w = f"{wt:7.2f}" if wt is not None else "      -"
            met = f"{'yes' if ct < goal else 'no'} / {'yes' if wt is not None and wt < goal else '-' if wt is None else 'no'}"
            print(f"  {name:<20} {bt:9.2f} {ct:9.2f} {bt / ct:6.2f} {w} {goal:6.1f}  {met}")
        if "baseline+pyc" in results:
            p = results["baseline+pyc"]["times"]
            print(
                "  baseline set up with bytecode (what the setup alone gives; ratio = it / current):"
            )
            print("    " + "; ".join(f"{k} {p[k]:.2f} ({p[k] / c['times'][k]:.2f})" for k in GOALS))
        print(f"  warm: first run after services start {warm['times']['run (first, warm)']:.1f} s")
        print(f"  services start {warm['times']['services start']:.1f} s, stop "
              f"{warm['times']['services stop']:.1f} s ({warm['stop_line']})")  # fmt: skip

        print("\nstages (each command's own timing summary):")
        for name in ("run (cold)", "run (again)", "run (edited)", "update (conjugate)", "rerun"):
            for who, res in (("baseline", b), ("current", c), ("warm", warm)):
                lines = res["stages"].get(name)
                if lines:
                    print(f"  {name}, {who}:")
                    print("\n".join(f"    {ln.strip()}" for ln in lines))

        same_run = outputs(b["archive"]) == outputs(c["archive"])
        same_edit = outputs(b["edited_archive"]) == outputs(c["edited_archive"])
        same_upd = update_numbers(b["archive"]) == update_numbers(c["archive"])
        same_warm = (
            outputs(warm["archives"][0]) == outputs(c["archive"])
            and outputs(warm["archives"][1]) == outputs(c["archive"])
            and outputs(warm["archives"][2]) == outputs(c["edited_archive"])
        )
        print("\nnumbers:")
        print(
            f"  main job outputs, baseline vs current: {'identical' if same_run else 'DIFFERENT'}"
        )
        print(
            f"  edited job outputs, baseline vs current: {'identical' if same_edit else 'DIFFERENT'}"
        )
        print(f"  update record, baseline vs current: {'identical' if same_upd else 'DIFFERENT'}")
        print(
            f"  warm vs embedded outputs (both runs): {'identical' if same_warm else 'DIFFERENT'}"
        )
        print(f"  rerun reproduces: baseline {b['rerun_identical']}, current {c['rerun_identical']}, "
              f"warm {warm['rerun_identical']}")  # fmt: skip
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
        if not (same_run and same_edit and same_upd and same_warm):
            sys.exit(1)
    finally:
        if args.keep:
            print(f"checkouts kept under {tmp}")
        else:
            for path in checkouts.values():
                sh(["git", "worktree", "remove", "--force", str(path)], ROOT, check=False)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

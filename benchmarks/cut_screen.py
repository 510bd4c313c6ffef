"""Benchmark: validating and applying a 100,000-subject real data cut, new screen vs the old one.

Run: ``uv run python benchmarks/cut_screen.py [--subjects 100000]``

A synthetic cut is written as CSV (not timed): ADSL (100,000 subjects, 10 columns, half in
the control arm), ADTTE (PFS), ADRS (BOR), ADLB (5 PSA records per subject) and ADEX (2
exposure intervals per subject); and an earlier cut of the first half of the subjects.

Timed, each in a fresh process (so that peak memory, ``ru_maxrss``, is the implementation's):

* ``load_cut``: read and validate the cut (every rule, the value screens, the hashes);
* ``apply``: the data part of ``update`` without the refit: load the earlier cut and the new
  one, the append-only check, the control arm's endpoint frames of both cuts and their
  concatenation (``pd_concat_latest``);
* ``screen``: the value screen alone over the five loaded tables (the old
  ``_check_identifiers`` against the new ``_screen_columns``).

The baseline is the previous implementation, ``insilico_trials/io/realdata.py`` at the merge
base of this branch and ``main`` (read with ``git show``), measured in the same run on the same
files. Both must give the same content hash. Peak RSS includes the interpreter and imports
(shown as "at start").

Measured on the 2-core development machine (shared), 100,000 subjects, 60 MB of CSV:
load_cut 30.9 s -> 4.1 s (7.6x), apply 47.7 s -> 6.1 s (7.8x), the value screen alone
6.3 s -> 0.29 s (22x); peak RSS 782 -> 746 MB (load_cut), 843 -> 827 MB (apply).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def write_cut(folder: Path, n: int, *, seed: int = 17) -> Path:
    """A valid cut of ``n`` subjects (see the module docstring)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ids = np.array([f"BENCH-{i:06d}" for i in range(n)], dtype=object)
    arm = np.where(np.arange(n) % 2 == 0, "control", "treatment")
    pd.DataFrame({
        "STUDYID": "BENCH", "USUBJID": ids, "SUBJID": [s[-6:] for s in ids], "ARM": arm,
        "ARMCD": np.where(arm == "control", "CTRL", "TRT"), "AGE": rng.integers(18, 90, n),
        "SEX": rng.choice(["F", "M"], n), "RACE": rng.choice(["WHITE", "ASIAN", "BLACK"], n),
        "COUNTRY": rng.choice(["GBR", "FRA", "USA", "JPN"], n), "ECOG": rng.integers(0, 2, n),
    }).to_csv(folder / "adsl.csv", index=False)  # fmt: skip
    pd.DataFrame({
        "STUDYID": "BENCH", "USUBJID": ids, "PARAMCD": "PFS", "PARAM": "Progression-free survival",
        "AVAL": np.round(rng.exponential(300.0, n), 1), "CNSR": rng.integers(0, 2, n),
    }).to_csv(folder / "adtte.csv", index=False)  # fmt: skip
    pd.DataFrame({
        "STUDYID": "BENCH", "USUBJID": ids, "PARAMCD": "BOR",
        "AVALC": rng.choice(["CR", "PR", "SD", "PD", "NE"], n),
    }).to_csv(folder / "adrs.csv", index=False)  # fmt: skip
    k = 5
    days = (np.arange(k) * 80.0 + rng.uniform(0, 79, (n, k))).round(1)  # distinct per subject
    days[:, 0] = 0.0
    pd.DataFrame({
        "STUDYID": "BENCH", "USUBJID": np.repeat(ids, k), "PARAMCD": "PSA",
        "PARAM": "Prostate specific antigen (ng/mL)",
        "AVAL": np.round(rng.lognormal(1.0, 1.0, n * k), 2), "AVALU": "ng/mL",
        "ADY": days.ravel(), "ABLFL": np.tile(["Y", "", "", "", ""], n),
    }).to_csv(folder / "adlb.csv", index=False)  # fmt: skip
    cut_day = rng.integers(20, 200, n).astype(float)
    pd.DataFrame({
        "STUDYID": "BENCH", "USUBJID": np.repeat(ids, 2), "EXTRT": "DRUG",
        "EXDOSE": np.tile([1000, 0], n), "EXDOSU": "mg",
        "ASTDY": np.column_stack([np.zeros(n), cut_day]).ravel(),
        "AENDY": np.column_stack([cut_day, cut_day + 100]).ravel(),
    }).to_csv(folder / "adex.csv", index=False)  # fmt: skip
    return folder


def _first_half(src: Path, dest: Path, n: int) -> Path:
    dest.mkdir(parents=True)
    keep = {f"BENCH-{i:06d}" for i in range(n // 2)}
    for f in sorted(src.iterdir()):
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        df[df["USUBJID"].isin(keep)].to_csv(dest / f.name, index=False)
    return dest


def _old_module(tmp: Path):
    base = subprocess.run(
        ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    text = subprocess.run(
        ["git", "show", f"{base}:insilico_trials/io/realdata.py"], cwd=ROOT,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp / "realdata_old.py"
    path.write_text(text)
    return base, path


def _load(path: Path | None):
    if path is None:
        from insilico_trials.io import realdata

        return realdata
    spec = importlib.util.spec_from_file_location("realdata_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["realdata_old"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(which: str, task: str, cut: Path, earlier: Path, old_path: Path) -> dict:
    """One measurement in this (fresh) process."""
    from insilico_trials.app.commands import pd_concat_latest  # imported before timing

    rd = _load(old_path if which == "old" else None)
    start_rss = _rss_mb()
    t = time.perf_counter()
    if task == "load_cut":
        c = rd.load_cut(cut)
        out = {"hash": c.content_hash}
    elif task == "apply":
        prev = rd.load_cut(earlier)
        new = rd.load_cut(cut)
        issues = rd.check_append_only([prev], new)
        frames = [rd.endpoint_frame(c, endpoint="binary", paramcd="BOR", control_arm="control")
                  for c in (prev, new)]  # fmt: skip
        real = pd_concat_latest(frames)
        out = {"hash": new.content_hash, "issues": len(issues), "n_real": len(real)}
    else:  # the value screen alone, over tables read beforehand (not timed)
        tables = {f.stem: rd._read(f) for f in sorted(cut.iterdir())}
        t = time.perf_counter()
        if which == "old":
            for name, df in tables.items():
                rd._check_identifiers(df, cut / f"{name}.csv")
        else:
            problems = rd._Problems()
            for name, df in tables.items():
                rd._screen_columns(df, name, cut / f"{name}.csv", problems,
                                   extra_allowed=frozenset(), allow_list=True,
                                   drop_unknown=False)  # fmt: skip
            assert not problems, problems.items[:3]
        out = {}
    out.update(seconds=time.perf_counter() - t, rss_mb=_rss_mb(), start_rss_mb=start_rss)
    return out


def _run_child(which: str, task: str, cut: Path, earlier: Path, old_path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", which, task, str(cut), str(earlier), str(old_path)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{which} {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        which, task, cut, earlier, old = args.child
        print(json.dumps(child(which, task, Path(cut), Path(earlier), Path(old))))
        return
    n = args.subjects
    with tempfile.TemporaryDirectory(prefix="cut-screen-") as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        cut = write_cut(tmp / "cut", n)
        earlier = _first_half(cut, tmp / "earlier", n)
        rows = {f.stem: sum(1 for _ in f.open()) - 1 for f in sorted(cut.iterdir())}
        size = sum(f.stat().st_size for f in cut.iterdir()) / 1e6
        print(f"cut: {n:,} subjects, rows {rows}, {size:.0f} MB of CSV; earlier cut: first "
              f"{n // 2:,} subjects (written in {time.perf_counter() - t:.1f} s, not timed)")  # fmt: skip
        base, old_path = _old_module(tmp)
        print(f"baseline: insilico_trials/io/realdata.py at {base[:10]} (merge base with main)")
        print(f"{'task':<10} {'old s':>8} {'new s':>8} {'old/new':>8} "
              f"{'old peak MB':>12} {'new peak MB':>12} {'at start MB':>12}")  # fmt: skip
        for task in ("load_cut", "apply", "screen"):
            old = _run_child("old", task, cut, earlier, old_path)
            new = _run_child("new", task, cut, earlier, old_path)
            if "hash" in old:
                assert old["hash"] == new["hash"], (task, old, new)
            if task == "apply":
                assert old["issues"] == new["issues"] == 0 and old["n_real"] == new["n_real"]
            print(f"{task:<10} {old['seconds']:8.2f} {new['seconds']:8.2f} "
                  f"{old['seconds'] / new['seconds']:8.1f} {old['rss_mb']:12.0f} "
                  f"{new['rss_mb']:12.0f} {new['start_rss_mb']:12.0f}")  # fmt: skip
        print("content hashes: identical (old and new)")


if __name__ == "__main__":
    main()

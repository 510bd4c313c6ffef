"""A 1,000,000-patient `insilico-trials run`, end to end, with peak memory of the process tree.

The example ORR protocol is scaled to 500,000 virtual patients per arm (24 weeks follow-up,
4 h PK grid, chunks of 10,000 patients as Dask tasks on a 2-worker LocalCluster) and run by the
real command in a temporary folder. Memory is the peak of the summed RSS of the command and all
its children (Prefect API server, Dask scheduler and workers), sampled every 0.5 s. The
baseline is the same protocol at 10,000 patients, run the same way in the same invocation;
the ratio shows how wall time and memory scale with 100x the patients.

    uv run python benchmarks/million_run.py [--patients-per-arm 500000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def protocol_text(per_arm: int) -> str:
    text = (ROOT / "protocols" / "onc_phase2_orr.yaml").read_text()
    text = text.replace("    n: 40\n", f"    n: {per_arm}\n").replace(
        "chunk_size: 20", "chunk_size: 10000"
    )
    text = text.replace("follow_up_weeks: 48", "follow_up_weeks: 24").replace(
        "n_doses: 168", "n_doses: 84"
    )
    text = text.replace("output_interval_h: 2", "output_interval_h: 4")
    return text.replace("trial_id: onc-ph2-orr", f"trial_id: scale-{per_arm}")


def run(per_arm: int, folder: Path) -> dict[str, float | str]:
    path = folder / f"scale_{per_arm}.yaml"
    path.write_text(protocol_text(per_arm))
    cmd = [sys.executable, "-m", "insilico_trials.app.cli", "run", str(path), "--workers", "2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = {"tree": 0, "main": 0}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs if p.is_running()]
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["main"] = max(peak["main"], rss[0])
            except psutil.Error:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "chunks done" in line or line.startswith("[") or "decision" in line:
            print(f"  [{per_arm:,}/arm] {line.rstrip()}", flush=True)
    proc.wait()
    done.set()
    thread.join()
    out = "".join(lines)
    if proc.returncode != 0:
        print(out[-3000:])
        raise SystemExit(f"run failed with exit {proc.returncode}")
    total = re.search(r"^\s+total\s+([\d.]+) s", out, re.M)
    return {
        "wall_s": time.perf_counter() - t0,
        "total_s": float(total.group(1)) if total else float("nan"),
        "peak_tree_gb": peak["tree"] / 1e9,
        "peak_main_gb": peak["main"] / 1e9,
        "timing": out[out.index("timing summary:") :].split("archive:")[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients-per-arm", type=int, default=500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="insilico-scale-") as tmp:
        folder = Path(tmp)
        base_n = max(1, args.patients_per_arm // 100)
        print(f"baseline: {2 * base_n:,} patients")
        base = run(base_n, folder)
        print(f"scale run: {2 * args.patients_per_arm:,} patients")
        big = run(args.patients_per_arm, folder)
    for name, r in (("baseline", base), ("scale", big)):
        print(
            f"{name:>8}: wall {r['wall_s']:.1f} s; peak RSS of the process tree "
            f"{r['peak_tree_gb']:.2f} GB (command process {r['peak_main_gb']:.2f} GB)"
        )
    print(
        f"ratio scale/baseline (100x patients): wall {big['wall_s'] / base['wall_s']:.1f}x, "
        f"peak tree RSS {big['peak_tree_gb'] / base['peak_tree_gb']:.1f}x"
    )
    print("scale run's own timing summary:\n" + str(big["timing"]))


if __name__ == "__main__":
    main()

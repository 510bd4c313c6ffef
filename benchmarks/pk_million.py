"""One million subjects: daily output over a year, written in chunks to Parquet.

``pk2cmt`` (CL 1, V1 20, Q 2, V2 10, KA 1, lognormal IIV omega^2 0.1 on CL, V1, KA), 100 mg
orally every 24 h for 365 days, output daily at 0, 24, ..., 8,760 h (366 per subject,
366,000,000 rows). Parameters are drawn once for all subjects (so the numbers do not depend on
the chunk size); each chunk is simulated and appended to one Parquet file (ID int32, TIME
float64, CP float64) with pyarrow. Prints the time, rows, file size and peak RSS
(``resource.getrusage``); the goal is peak memory under 4 GB.

Run: ``uv run python benchmarks/pk_million.py [--subjects N] [--chunk N] [--out PATH]``

Last measured (2026-11-24, 2 shared cores, load average ~4): 366,000,000 rows in 123 s
(simulation 78 s), Parquet 0.58 GB, peak RSS 0.86 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from insilico_trials.sim.pk import simulate_regimen

TIMES = np.arange(0.0, 8760.0 + 1.0, 24.0)


def draw_params(n: int, seed: int = 20261124) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd = np.sqrt(0.1)
    return {
        "CL": 1.0 * np.exp(rng.normal(0, sd, n)),
        "V1": 20.0 * np.exp(rng.normal(0, sd, n)),
        "Q": np.full(n, 2.0),
        "V2": np.full(n, 10.0),
        "KA": 1.0 * np.exp(rng.normal(0, sd, n)),
    }


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=25_000)
    ap.add_argument("--out", type=Path, default=None, help="Parquet file (default: a temp file)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.gettempdir()) / f"pk_million_{os.getpid()}.parquet"
    schema = pa.schema([("ID", pa.int32()), ("TIME", pa.float64()), ("CP", pa.float64())])
    t0 = time.perf_counter()
    params = draw_params(args.subjects)
    t_sim = 0.0
    rows = 0
    with pq.ParquetWriter(out, schema, compression="snappy") as writer:
        for a in range(0, args.subjects, args.chunk):
            b = min(a + args.chunk, args.subjects)
            s0 = time.perf_counter()
            conc = simulate_regimen(
                "pk2cmt",
                {k: v[a:b] for k, v in params.items()},
                dose_mg=100.0,
                interval_h=24.0,
                n_doses=365,
                route="oral",
                times_h=TIMES,
            )
            t_sim += time.perf_counter() - s0
            ids = np.repeat(np.arange(a + 1, b + 1, dtype=np.int32), TIMES.size)
            table = pa.table(
                {"ID": ids, "TIME": np.tile(TIMES, b - a), "CP": conc.ravel()}, schema=schema
            )
            writer.write_table(table, row_group_size=1_000_000)
            rows += table.num_rows
            del conc, table, ids
    total = time.perf_counter() - t0
    size = out.stat().st_size
    print(f"subjects {args.subjects:,}, chunk {args.chunk:,}, rows written {rows:,}")
    print(f"total {total:.1f} s (simulation {t_sim:.1f} s, the rest table building and Parquet)")
    print(f"Parquet file {out}: {size / 1e9:.2f} GB")
    print(f"peak RSS {peak_rss_gb():.2f} GB (goal < 4 GB)")
    print(
        f"machine load average (1 min) at the end: {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    if args.out is None:
        out.unlink()
        print("(temporary Parquet file removed)")


if __name__ == "__main__":
    main()

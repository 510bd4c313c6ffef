"""CGM noise statistics of simglucose's own sensor noise generator (a reference for tests).

Run with the isolated simglucose python (``scripts/simglucose_env.py``)::

    "$(uv run python scripts/simglucose_env.py)" scripts/simglucose_noise_reference.py \\
        > tests/diabetes/reference/simglucose_cgm_noise.json

For the Dexcom (3-min) and GuardianRT (5-min) sensors of simglucose 0.2.11's
``sensor_params.csv``: 200 sequences (``CGMNoise(params, seed=0..199)``) of 2,000 samples each
from ``simglucose.sensor.noise_gen.CGMNoise``; prints their pooled quantiles, mean, SD and the
autocorrelation at 15 minutes and at one sample, as one JSON object.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")  # gym's import-time warnings

import simglucose  # noqa: E402
from simglucose.sensor.noise_gen import CGMNoise  # noqa: E402

QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]


def main() -> None:
    path = os.path.join(os.path.dirname(simglucose.__file__), "params", "sensor_params.csv")
    params = pd.read_csv(path).set_index("Name")
    out = {"simglucose_version": "0.2.11", "sequences": 200, "samples": 2000,
           "quantile_levels": QUANTILES}  # fmt: skip
    for name in ("Dexcom", "GuardianRT"):
        prm = params.loc[name]
        x = np.array([[next(g) for _ in range(2000)] for g in
                      (CGMNoise(prm, seed=seed) for seed in range(200))])  # fmt: skip
        lag = round(15 / prm["sample_time"])
        c = x - x.mean()
        out[name] = {
            "quantiles": np.quantile(x, QUANTILES).tolist(),
            "mean": float(x.mean()),
            "sd": float(x.std()),
            "acf_15min": float((c[:, lag:] * c[:, :-lag]).mean() / x.var()),
            "acf_1sample": float((c[:, 1:] * c[:, :-1]).mean() / x.var()),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

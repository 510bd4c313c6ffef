"""Benchmark: the statistical refit of an ``update`` of the binary example, closed form vs MCMC.

Run: ``uv run python benchmarks/update_refit.py``

Protocol ``protocols/onc_phase2_orr.yaml`` (ORR, robust-mixture borrowing, vague weight 0.2,
NUTS 2 x (1000 tune + 1000 draws)). The synthetic control's prior is made as ``run`` makes it
(the protocol's replicate virtual control arms, simulated here, not timed) and read back
through its archive record, as ``update`` reads ``synthetic_control.json``. The real data are
the cuts of ``tests/test_flow_e2e.py``: three ADaM cuts of 10 control patients with 1 responder
each, loaded and validated with ``io.realdata`` (not timed).

Timed, in one process: :func:`insilico_trials.run.update.refit_control` (the refit ``update``
runs, serial executor) on the cumulative real data after each cut, with ``engine="closed_form"``
and with ``engine="mcmc"`` (today's behaviour before engines; the first MCMC refit includes the
model's compilation, later ones reuse it). The issue's goal: closed-form refit under 0.5 s.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _adam_cut(folder: Path, ids: list[str], responders: set[str]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame({"USUBJID": ids, "ARM": "control", "AGE": [60] * len(ids)}).to_csv(
        folder / "adsl.csv", index=False
    )
    pd.DataFrame(
        {"USUBJID": ids, "PARAMCD": "PFS", "AVAL": [90.0] * len(ids), "CNSR": [1] * len(ids)}
    ).to_csv(folder / "adtte.csv", index=False)
    pd.DataFrame(
        {"USUBJID": ids, "PARAMCD": "BOR",
         "AVALC": ["PR" if i in responders else "SD" for i in ids]}
    ).to_csv(folder / "adrs.csv", index=False)  # fmt: skip
    return folder


def main() -> None:
    from insilico_trials.infer.synthetic import VirtualPrior, protocol_prior
    from insilico_trials.io.realdata import endpoint_frame, load_cut
    from insilico_trials.run.update import refit_control
    from insilico_trials.run.virtual import simulate_virtual_arms
    from insilico_trials.spec.protocol import load_protocol

    protocol = load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml")
    t = time.perf_counter()
    arms = simulate_virtual_arms(protocol)
    virtual = VirtualPrior.from_json(protocol_prior(protocol, arms).to_json())
    print(
        f"virtual control: {len(arms.replicates)} replicate arms, prior ESS "
        f"{virtual.prior_ess:.1f} patients ({virtual.ess_method}); set-up "
        f"{time.perf_counter() - t:.1f} s (not timed below)"
    )
    reals = []
    with tempfile.TemporaryDirectory(prefix="update-refit-") as tmp:
        cuts = []
        for k in range(3):
            ids = [f"R{k}{i}" for i in range(10)]
            cuts.append(load_cut(_adam_cut(Path(tmp) / f"cut{k}", ids, {ids[0]})))
            frames = [
                endpoint_frame(c, endpoint="binary", paramcd="BOR", control_arm="control")
                for c in cuts
            ]
            real = pd.concat(frames, ignore_index=True)
            real.attrs["cut_id"] = f"{k + 1:03d}"
            reals.append(real)

    times: dict[str, list[float]] = {"closed_form": [], "mcmc": []}
    means: dict[str, list[tuple[float, float]]] = {"closed_form": [], "mcmc": []}
    for engine in ("closed_form", "mcmc"):
        for real in reals:
            t = time.perf_counter()
            result, _ = refit_control(virtual, real, protocol, engine=engine)
            times[engine].append(time.perf_counter() - t)
            s = result.final
            assert result.engine == engine
            means[engine].append((s.posterior_mean, s.posterior_sd))
    print("refit after cut   n_real   closed form (s)   MCMC (s)   ratio   mean (exact / MCMC)")
    for k, real in enumerate(reals):
        c, m = times["closed_form"][k], times["mcmc"][k]
        print(
            f"  {k + 1:>13}   {len(real):>6}   {c:>15.4f}   {m:>8.2f}   {m / c:>5.0f}x   "
            f"{means['closed_form'][k][0]:.4f} / {means['mcmc'][k][0]:.4f}"
        )
    c_med = statistics.median(times["closed_form"])
    m_first, m_rest = times["mcmc"][0], statistics.median(times["mcmc"][1:])
    print(
        f"closed form: median {c_med:.4f} s per refit (goal < 0.5 s: "
        f"{'met' if max(times['closed_form']) < 0.5 else 'NOT met'})"
    )
    print(
        f"MCMC: {m_first:.1f} s the first refit (compile + sampling), median {m_rest:.1f} s "
        "after (compiled model reused)"
    )
    print(
        f"ratio MCMC / closed form: {m_first / c_med:.0f}x (first), {m_rest / c_med:.0f}x (later)"
    )


if __name__ == "__main__":
    main()

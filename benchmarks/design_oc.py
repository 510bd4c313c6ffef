"""Benchmark: operating characteristics of a binary design, and a TTE design.

Run: ``uv run python benchmarks/design_oc.py``

1. ``protocols/design_binary_borrowing.yaml``: two-arm binary endpoint, two interim looks,
   robust-mixture borrowing (plus no/full borrowing on the same trials), 10,000 replicates for
   each of 4 scenarios; timed (a) in-process and (b) as Dask tasks in batches on a 2-worker
   LocalCluster (the flow's task layout, without Prefect's API start-up). Baseline, same run:
   a per-replicate Python loop that updates the robust prior with
   ``borrowing.beta_mixture_posterior`` and computes each look's posterior probability with
   4,000 Monte Carlo draws, timed on 200 replicates and extrapolated.
2. A TTE design (exponential fast path, 60 patients per arm, one interim), 1,000 replicates
   per scenario; baseline: one Weibull MCMC fit (fit_outcome) per replicate, timed on 2
   replicates after a warm-up compile and extrapolated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from insilico_trials.infer import borrowing, design
from insilico_trials.run.design import design_trial
from insilico_trials.spec.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]


def _loop_baseline(plan: design.DesignPlan, reps: int) -> float:
    """Per-replicate loop, Monte Carlo posterior probability at each look (robust prior)."""
    prior = plan.priors["robust_mixture"]
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    for s in plan.scenarios:
        for _ in range(reps):
            xc = xt = prev = 0
            for j, lk in enumerate(plan.looks):
                xc += rng.binomial(lk.n_control - prev, s.control)
                xt += rng.binomial(lk.n_treatment - prev, s.treatment)
                prev = lk.n_control
                w, a, b = borrowing.beta_mixture_posterior(
                    prior.weights, prior.a, prior.b, xc, lk.n_control
                )
                k = rng.choice(len(w), 4000, p=w)
                pc = rng.beta(a[k], b[k])
                pt = rng.beta(1 + xt, 1 + lk.n_treatment - xt, 4000)
                p = float(np.mean(pt - pc > plan.delta))
                if j < len(plan.looks) - 1 and (p > plan.efficacy[j] or p < plan.futility[j]):
                    break
    return time.perf_counter() - t


def binary() -> None:
    from insilico_trials.run.virtual import simulate_virtual_arms

    protocol = load_protocol(ROOT / "protocols" / "design_binary_borrowing.yaml")
    t = time.perf_counter()
    virtual = simulate_virtual_arms(protocol)
    t_virtual = time.perf_counter() - t
    t = time.perf_counter()
    plan = design.compile_design(protocol, virtual=virtual)
    t_plan = time.perf_counter() - t
    R = 10_000
    t = time.perf_counter()
    res = design_trial(plan, replicates=R, batch_size=2500).results
    oc = design.operating_characteristics(plan, res)
    cal = design.calibrate(plan, res, target=0.025, scenario="null_nodrift")
    t_serial = time.perf_counter() - t

    from distributed import Client, LocalCluster

    t = time.perf_counter()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    t_cluster = time.perf_counter() - t
    t = time.perf_counter()
    plan_f = client.scatter(plan, broadcast=True)
    futs = [
        client.submit(design.simulate_batch, plan_f, s.name, a, b, pure=False)
        for s in plan.scenarios
        for a, b in design.replicate_batches(R, 2500)
    ]
    merged = design.merge_batches(client.gather(futs))
    t_dask = time.perf_counter() - t
    client.close()
    cluster.close()
    same = all(
        np.array_equal(merged[s.name].data[m]["prob"], res[s.name].data[m]["prob"])
        for s in plan.scenarios
        for m in plan.methods
    )
    n_base = 200
    t_base = _loop_baseline(plan, n_base) / n_base * R  # per method; 4 scenarios

    print(
        f"binary design: {len(plan.scenarios)} scenarios x {R} replicates, {len(plan.looks)} looks, "
        f"methods {', '.join(plan.methods)}"
    )
    print(f"  virtual arms (20 x 500 patients, serial):   {t_virtual:7.2f} s")
    print(f"  plan (MAP priors + exact decision tables):  {t_plan:7.2f} s")
    print(f"  simulate + OC table + calibration, 1 proc:  {t_serial:7.2f} s")
    print(f"  Dask LocalCluster start (2 workers):        {t_cluster:7.2f} s")
    print(
        f"  Dask 16 batches on 2 workers:               {t_dask:7.2f} s  (identical to serial: {same})"
    )
    print(
        f"  baseline per-replicate MC loop, 1 method:   {t_base:7.1f} s  (extrapolated from {n_base}/scenario)"
    )
    print(f"  ratio baseline / fast (1 method vs 3):      {t_base / t_serial:7.0f} x")
    cols = ["method", "scenario", "p_success", "p_success_mcse", "expected_n", "expected_n_mcse"]
    print(oc[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(
        cal[
            ["method", "threshold", "threshold_se", "type1", "scenario", "power", "power_se_total"]
        ].to_string(index=False, float_format=lambda v: f"{v:.4f}")
    )


def tte() -> None:
    import math
    import tempfile

    from insilico_trials.infer.synthetic import VirtualArms

    text = (ROOT / "protocols" / "design_binary_borrowing.yaml").read_text()
    text = text.replace(
        "  endpoint: orr\n  model: binary\n  decision: {quantity: rate_difference, delta: 0.0, threshold: 0.975}",
        "  endpoint: pfs\n  model: tte_exponential\n  decision: {quantity: hazard_ratio, delta: 1.0, threshold: 0.975}",
    ).replace("    n: 40\n", "    n: 60\n")
    text = text.replace(
        "  vague_weight: 0.2\n",
        "  vague_weight: 0.2\n  prior: pooled\n  max_virtual_patients: 1000\n",
    )
    text = text[: text.index("design:\n")] + (
        "design:\n  endpoint: tte\n"
        "  interim_patients: [72]\n  efficacy_threshold: 0.999\n  futility_threshold: 0.1\n"
        "  compare_borrowing: [none]\n  scenarios:\n"
        "    - {name: null0, control: 6.0, treatment: 6.0}\n"
        "    - {name: alt, control: 6.0, treatment: 10.0}\n"
        "    - {name: drift_null, control: 9.0, treatment: 9.0}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tte.yaml"
        path.write_text(text)
        protocol = load_protocol(path)
    # 150 virtual patients followed to the event, median 6 months
    virtual = VirtualArms(
        "tte", ({"n": 150, "events": 150, "exposure_days": 150 * 6.0 / math.log(2) * 30.4375},)
    )
    plan = design.compile_design(protocol, virtual=virtual)
    R = 1000
    t = time.perf_counter()
    res = design_trial(plan, replicates=R).results
    oc = design.operating_characteristics(plan, res)
    t_fast = time.perf_counter() - t
    design.mcmc_agreement(plan, protocol, scenario="alt", replicates=[0], draws=500, tune=500)
    t = time.perf_counter()
    agree = design.mcmc_agreement(
        plan, protocol, scenario="null0", replicates=[1, 2, 3], draws=1000
    )
    per_fit = (time.perf_counter() - t) / 3
    t_mcmc = per_fit * R * len(plan.scenarios) * len(plan.looks) * len(plan.methods)
    print(
        f"\nTTE design: {len(plan.scenarios)} scenarios x {R} replicates, {len(plan.looks)} looks, "
        f"methods {', '.join(plan.methods)}"
    )
    print(f"  exact path (quadrature of the analysis):    {t_fast:7.2f} s")
    print(f"  MCMC per fit (tte_exponential, warm):       {per_fit:7.2f} s")
    print(
        f"  MCMC path extrapolated:                     {t_mcmc:7.0f} s  ratio {t_mcmc / t_fast:.0f} x"
    )
    print(agree.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    cols = ["method", "scenario", "p_success", "p_success_mcse", "bias", "coverage95"]
    print(oc[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    binary()
    tte()

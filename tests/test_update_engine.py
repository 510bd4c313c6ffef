"""The engine of a synthetic-control update (infer/borrowing.update_control): exact where exact.

Where the control parameter's prior is a conjugate mixture (none, full, power, robust, procova;
binary, TTE, or continuous with sigma known) the update is the closed-form mixture posterior;
MCMC only where there is none (commensurate, procova_bayes, sigma estimated).

Sources of the hand computations below: the posterior of a mixture of conjugate priors is the
mixture of the components' conjugate posteriors with weights
``w_k' ∝ w_k m_k(data)``, ``m_k`` the prior predictive (marginal likelihood) of component k;
for a beta component and x responders of n, ``m_k ∝ B(a_k + x, b_k + n - x) / B(a_k, b_k)``
(the binomial coefficient is common to all components and cancels). Schmidli H, Gsteiger S,
Roychoudhury S, O'Hagan A, Spiegelhalter D, Neuenschwander B (2014), "Robust meta-analytic-
predictive priors in clinical trials with historical control information", Biometrics 70(4):
1023-1032, section 2; RBesT's ``postmix`` documentation ("the posterior of a mixture prior is
again a mixture, with updated component weights proportional to the prior weight times the
marginal likelihood of the data under the component").

MCMC comparisons (marked slow) hold within Monte Carlo error: the posterior mean within 4
MCSE (ArviZ mcse_mean), the sd within 5 %.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from insilico_trials.infer.borrowing import (
    BorrowingError,
    mixture_quantile,
    resolve_engine,
    update_control,
)
from insilico_trials.infer.conjugate import MixturePrior

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_COLUMNS = [  # the columns of fit_outcome's summary (infer/outcomes._summary)
    "param", "mean", "sd", "eti_2.5%", "eti_97.5%", "r_hat", "ess_bulk", "ess_tail", "mcse_mean",
]  # fmt: skip


def binary_arm(x: int, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"arm": "control", "response": np.r_[np.ones(x), np.zeros(n - x)].astype(int)}
    )


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


# ----------------------------------------------------------------- hand-computed robust update


@pytest.mark.parametrize("x, n", [(18, 60), (28, 40)])  # agreement (30 %) and conflict (70 %)
def test_robust_beta_mixture_update_matches_hand_computation(x, n):
    """Virtual control 30/100, robust prior with vague weight 0.2:
    0.8 Beta(1 + 30, 1 + 70) + 0.2 Beta(1, 1) (power prior a0 = 1 on Beta(1, 1), RBesT
    ``robustify`` with a unit-information Beta(1, 1)); real control x/n."""
    res = update_control(
        binary_arm(30, 100), [binary_arm(x, n)], method="robust", params={"weight": 0.2},
        endpoint="binary", seed=1,
    )  # fmt: skip
    s = res.final
    comps = [(0.8, 31.0, 71.0), (0.2, 1.0, 1.0)]  # (w_k, a_k, b_k)
    assert res.prior.weights == pytest.approx([w for w, _, _ in comps])
    assert res.prior.a == pytest.approx([a for _, a, _ in comps])
    # Schmidli et al. (2014) / RBesT postmix: w_k' ∝ w_k B(a_k + x, b_k + n - x) / B(a_k, b_k)
    logw = [math.log(w) + _lbeta(a + x, b + n - x) - _lbeta(a, b) for w, a, b in comps]
    top = max(logw)
    w_post = [math.exp(v - top) for v in logw]
    w_post = [v / sum(w_post) for v in w_post]
    post = [(a + x, b + n - x) for _, a, b in comps]
    means = [a / (a + b) for a, b in post]
    variances = [a * b / ((a + b) ** 2 * (a + b + 1)) for a, b in post]
    mean = sum(w * m for w, m in zip(w_post, means, strict=True))
    var = sum(w * (v + m * m) for w, v, m in zip(w_post, variances, means, strict=True)) - mean**2

    assert s.engine == "closed_form" and s.fit is None and s.converged
    assert s.diagnostics["engine"] == "closed_form" and s.diagnostics["failed"] == []
    assert s.closed_form.weights == pytest.approx(w_post, rel=1e-10)
    assert s.closed_form.a == pytest.approx([a for a, _ in post])
    assert s.closed_form.b == pytest.approx([b for _, b in post])
    assert s.posterior_mean == pytest.approx(mean, rel=1e-12)
    assert s.posterior_sd == pytest.approx(math.sqrt(var), rel=1e-10)
    # the conflict figures' component weight is the exact posterior weight of the vague part
    assert s.conflict["vague_weight_posterior"] == pytest.approx(w_post[1], rel=1e-10)
    assert s.conflict["vague_weight_posterior_exact"] == s.conflict["vague_weight_posterior"]
    # the summary has the MCMC summary's shape; its interval is the mixture's exact quantiles
    assert list(s.summary.columns) == SUMMARY_COLUMNS and len(s.summary) == 1
    row = s.summary.iloc[0]
    assert row["param"] == "p_c" and row["mcse_mean"] == 0.0
    assert row["mean"] == pytest.approx(mean, rel=1e-12)
    assert row["sd"] == pytest.approx(math.sqrt(var), rel=1e-10)
    for q, col in ((0.025, "eti_2.5%"), (0.975, "eti_97.5%")):
        cdf = sum(
            w * stats.beta.cdf(row[col], a, b) for w, (a, b) in zip(w_post, post, strict=True)
        )
        assert cdf == pytest.approx(q, abs=1e-9)
    # posterior ESS by moments of the exact posterior: m (1 - m) / v - 1
    assert s.posterior_ess == pytest.approx(mean * (1 - mean) / var - 1, rel=1e-9)
    if x / n > 0.5:
        assert w_post[1] > 0.9  # conflict: the vague component takes over
    else:
        assert w_post[1] < 0.2


def test_mixture_quantile_of_a_single_component_and_of_gamma():
    one = MixturePrior.single("gamma", 12.0, 300.0)
    assert mixture_quantile(one, 0.975) == pytest.approx(stats.gamma.ppf(0.975, 12, scale=1 / 300))
    mix = MixturePrior("normal", (0.3, 0.7), (-1.0, 2.0), (0.5, 1.5))
    t = mixture_quantile(mix, 0.1)
    assert 0.3 * stats.norm.cdf(t, -1, 0.5) + 0.7 * stats.norm.cdf(t, 2, 1.5) == pytest.approx(0.1)


# ----------------------------------------------------------------- engine choice and refusal


def test_auto_takes_the_closed_form_only_where_one_exists():
    assert resolve_engine("auto", "robust", "binary", None) == "closed_form"
    assert resolve_engine("auto", "power", "tte", None) == "closed_form"
    assert resolve_engine("auto", "none", "continuous", 12.0) == "closed_form"
    assert resolve_engine("auto", "robust", "continuous", None) == "mcmc"  # sigma estimated
    assert resolve_engine("auto", "commensurate", "binary", None) == "mcmc"
    assert resolve_engine("auto", "procova_bayes", "continuous", 3.0) == "mcmc"
    assert resolve_engine("mcmc", "robust", "binary", None) == "mcmc"


def test_closed_form_refused_where_none_exists():
    virtual = binary_arm(30, 100)
    with pytest.raises(BorrowingError, match=r"no closed form.*commensurate"):
        update_control(virtual, [binary_arm(9, 30)], method="commensurate", endpoint="binary",
                       seed=1, engine="closed_form")  # fmt: skip
    cont = pd.DataFrame({"arm": "control", "value": np.linspace(-20, 0, 50)})
    with pytest.raises(BorrowingError, match=r"no closed form.*sigma unknown"):
        update_control(cont, [cont], method="power", params={"a0": 0.5},
                       endpoint="continuous", seed=1, engine="closed_form")  # fmt: skip
    real = cont.assign(prognostic_score=np.linspace(0, 1, 50))
    with pytest.raises(BorrowingError, match=r"no closed form.*procova_bayes"):
        update_control(cont, [real], method="procova_bayes", endpoint="continuous", sigma=3.0,
                       seed=1, engine="closed_form")  # fmt: skip
    with pytest.raises(BorrowingError, match="engine: must be one of"):
        update_control(virtual, [virtual], method="robust", endpoint="binary", seed=1,
                       engine="exact")  # fmt: skip


def test_continuous_known_sigma_closed_form_is_normal_normal():
    rng = np.random.default_rng(3)
    virtual = pd.DataFrame({"arm": "control", "value": rng.normal(-10, 12, 200)})
    real = pd.DataFrame({"arm": "control", "value": rng.normal(-8, 12, 40)})
    res = update_control(virtual, [real], method="power", params={"a0": 0.25},
                         endpoint="continuous", sigma=12.0, seed=4)  # fmt: skip
    s = res.final
    m0, s0 = res.prior.a[0], res.prior.b[0]
    prec = 1 / s0**2 + 40 / 144.0
    assert s.engine == "closed_form"
    assert s.posterior_mean == pytest.approx((m0 / s0**2 + 40 * real["value"].mean() / 144) / prec)
    assert s.posterior_sd == pytest.approx(prec**-0.5)
    row = s.summary.iloc[0]
    assert row["eti_97.5%"] == pytest.approx(s.posterior_mean + 1.959963985 * prec**-0.5)


# ----------------------------------------------------------------- the archive's record


def _fake_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "manifest.json").write_text("{}\n")  # hashed into the update's chain only
    return archive


def test_engine_recorded_in_update_json(tmp_path):
    from insilico_trials.io.updates import UpdatePlan, write_update

    archive = _fake_archive(tmp_path)
    res = update_control(binary_arm(30, 100), [binary_arm(5, 20)], method="robust",
                         endpoint="binary", seed=1)  # fmt: skip
    plan = UpdatePlan(number=1, cut_dir=tmp_path, cut_sha256="0" * 64, flags=[])
    folder, record = write_update(archive, plan, res, meta={})
    on_disk = json.loads((folder / "update.json").read_text())
    assert on_disk["engine"] == record["engine"] == "closed_form"
    assert on_disk["diagnostics"]["engine"] == "closed_form"
    mix = on_disk["posterior_mixture"]  # no draws: the exact posterior is what is kept
    assert mix["family"] == "beta" and mix["labels"][-1] == "vague"
    assert mix["weights"] == pytest.approx(list(res.final.closed_form.weights))
    lo, hi = on_disk["posterior_ci"]
    assert lo < on_disk["posterior_mean"] < hi
    assert on_disk["vague_weight"] == pytest.approx(res.final.closed_form.weights[-1])
    # an MCMC state (as archived before engines, or engine="mcmc") records "mcmc" and no mixture
    mcmc_state = dataclasses.replace(res.final, engine="mcmc")
    mcmc_res = dataclasses.replace(res, states=(mcmc_state,))
    _, rec2 = write_update(archive, dataclasses.replace(plan, number=2), mcmc_res, meta={})
    assert rec2["engine"] == "mcmc" and "posterior_mixture" not in rec2


def test_recorded_engine_defaults_to_mcmc_for_old_archives():
    from insilico_trials.run.update import recorded_engine

    assert recorded_engine({"method": "robust"}) == "mcmc"
    assert recorded_engine({"method": "robust", "engine": "closed_form"}) == "closed_form"
    assert recorded_engine({"method": "robust", "engine": "mcmc"}) == "mcmc"


def _adam_cut(folder: Path, ids: list[str], responders: set[str]) -> Path:
    """A real data cut in ADaM shape (as tests/test_flow_e2e.py): control subjects with a best
    overall response."""
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


def test_replay_uses_the_recorded_engine(tmp_path, monkeypatch):
    """``rerun`` replays each control-arm update with the engine its record states; a record
    without one (an archive made before engines existed) is replayed by MCMC."""
    from insilico_trials.app import commands
    from insilico_trials.io.realdata import endpoint_frame, load_cut
    from insilico_trials.io.updates import UpdatePlan, write_update
    from insilico_trials.run.update import refit_control, virtual_source
    from insilico_trials.spec.protocol import load_protocol

    protocol = load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml")
    archive = _fake_archive(tmp_path)
    virtual_record = {"n": 40, "responders": 0}  # the run's control-arm statistics
    (archive / "synthetic_control.json").write_text(json.dumps(virtual_record))
    cuts = []
    for k in (1, 2):
        ids = [f"R{k}{i}" for i in range(10)]
        cut_dir = _adam_cut(tmp_path / f"cut{k}", ids, {ids[0]})
        cuts.append(load_cut(cut_dir))
        frames = [endpoint_frame(c, endpoint="binary", paramcd="BOR", control_arm="control")
                  for c in cuts]  # fmt: skip
        real = pd.concat(frames, ignore_index=True)
        real.attrs["cut_id"] = f"{k:03d}"
        result, _ = refit_control(virtual_source(virtual_record), real, protocol)
        assert result.engine == "closed_form"
        plan = UpdatePlan(number=k, cut_dir=cut_dir, cut_sha256=cuts[-1].content_hash,
                          flags=[], files=tuple(cuts[-1].files.values()))  # fmt: skip
        write_update(archive, plan, result, meta={}, extra={"control_arm": "control"})

    rows = commands.replay_control_updates(archive, protocol)
    assert [(name, same) for name, same, _ in rows] == [
        ("updates/001/update.json (control, closed_form)", True),
        ("updates/001/states.csv", True),
        ("updates/002/update.json (control, closed_form)", True),
        ("updates/002/states.csv", True),
    ]
    # a changed number is found
    path = archive / "updates" / "002" / "update.json"
    rec = json.loads(path.read_text())
    rec["posterior_mean"] += 1e-9
    path.write_text(json.dumps(rec))
    rows = commands.replay_control_updates(archive, protocol)
    assert rows[2][1] is False and "posterior_mean" in rows[2][2]
    # an old record (no engine entry) is replayed by MCMC (spied: no sampling here)
    for folder in ("001", "002"):
        p = archive / "updates" / folder / "update.json"
        rec = json.loads(p.read_text())
        del rec["engine"]
        p.write_text(json.dumps(rec))
    seen = []

    def spy(virtual, real, protocol, *, engine="auto", executor=None):
        seen.append(engine)
        return refit_control(virtual, real, protocol, engine="closed_form")

    import insilico_trials.run.update as update_module

    monkeypatch.setattr(update_module, "refit_control", spy)  # commands imports it when called
    rows = commands.replay_control_updates(archive, protocol)
    assert seen == ["mcmc", "mcmc"]
    assert rows[0] == ("updates/001/update.json (control, mcmc)", True, "")


# ----------------------------------------------------------------- closed form vs MCMC


def _compare_with_mcmc(closed, mcmc):
    row = mcmc.summary.iloc[0]
    assert closed.engine == "closed_form" and mcmc.engine == "mcmc"
    assert mcmc.converged, mcmc.diagnostics
    assert abs(row["mean"] - closed.posterior_mean) < 4 * row["mcse_mean"]
    assert row["sd"] == pytest.approx(closed.posterior_sd, rel=0.05)
    assert closed.summary.iloc[0]["param"] == row["param"]
    # the MCMC record's mixture weights (Rao-Blackwellised) against the exact ones
    if "vague_weight_posterior" in mcmc.conflict:
        assert (
            abs(mcmc.conflict["vague_weight_posterior"] - closed.conflict["vague_weight_posterior"])
            < 0.02
        )
    for k in ("prior_ess", "borrowed_virtual", "prior_predictive_p"):
        a = getattr(closed, k, None) if k != "prior_predictive_p" else closed.conflict.get(k)
        b = getattr(mcmc, k, None) if k != "prior_predictive_p" else mcmc.conflict.get(k)
        assert a == pytest.approx(b, rel=1e-12)  # exact in both engines


@pytest.mark.slow
def test_closed_form_equals_mcmc_binary_robust():
    # Real control 14/30 (47 %) against a virtual 30/100: a mixture posterior with both parts.
    kw = {"method": "robust", "params": {"weight": 0.2}, "endpoint": "binary", "seed": 21,
          "draws": 2000, "tune": 1000}  # fmt: skip
    closed = update_control(binary_arm(30, 100), [binary_arm(14, 30)], engine="closed_form", **kw)
    mcmc = update_control(binary_arm(30, 100), [binary_arm(14, 30)], engine="mcmc", **kw)
    assert 0.05 < closed.final.conflict["vague_weight_posterior"] < 0.95
    _compare_with_mcmc(closed.final, mcmc.final)


@pytest.mark.slow
def test_closed_form_equals_mcmc_tte_gamma_robust():
    # Exponential control times (months ~ 10-month mean), virtual 200 patients, real 60.
    rng = np.random.default_rng(31)
    virtual = pd.DataFrame({"arm": "control", "time": rng.exponential(300.0, 200), "event": 1})
    t = rng.exponential(250.0, 60)
    c = rng.uniform(60, 600, 60)
    real = pd.DataFrame({"arm": "control", "time": np.minimum(t, c), "event": (t <= c).astype(int)})
    kw = {"method": "robust", "params": {"a0": 0.5, "weight": 0.2}, "endpoint": "tte",
          "seed": 22, "draws": 2000, "tune": 1000}  # fmt: skip
    closed = update_control(virtual, [real], engine="closed_form", **kw)
    mcmc = update_control(virtual, [real], engine="mcmc", **kw)
    assert closed.final.closed_form.family == "gamma"
    assert closed.final.summary.iloc[0]["param"] == "lambda_c[0]"
    _compare_with_mcmc(closed.final, mcmc.final)


def test_real_arm_map_is_one_mapping_per_archive():
    """--arm and --control-arm map protocol arms to ADSL ARM values; the archive's earlier
    mapping is kept when none is given, and a different one is refused (every cut is read with
    one mapping, so an update cannot drop earlier patients)."""
    from insilico_trials.app.commands import real_arm_map
    from insilico_trials.errors import InputError
    from insilico_trials.spec.protocol import load_protocol

    protocol = load_protocol(ROOT / "protocols" / "onc_phase2_orr.yaml")
    assert real_arm_map(protocol, None, None) == {"control": "control", "tki200": "tki200"}
    first = real_arm_map(protocol, None, {"control": "Placebo", "tki200": "TKI"})
    assert first == {"control": "Placebo", "tki200": "TKI"}
    assert real_arm_map(protocol, "Placebo", {"tki200": "TKI"}) == first
    assert real_arm_map(protocol, None, None, archived=first) == first
    with pytest.raises(InputError, match="differs from the one this archive's earlier updates"):
        real_arm_map(protocol, None, {"tki200": "TKI 200"}, archived=first)
    with pytest.raises(InputError, match="disagree"):
        real_arm_map(protocol, "Placebo", {"control": "PBO"})
    with pytest.raises(InputError, match="not an arm of the protocol"):
        real_arm_map(protocol, None, {"tki400": "X"})
    with pytest.raises(InputError, match="two protocol arms map to one ADSL ARM"):
        real_arm_map(protocol, None, {"tki200": "control"})

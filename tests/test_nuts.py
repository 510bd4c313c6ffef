"""The Python-callback compile path (:mod:`insilico_trials.infer.nuts`) gives the draws of
nutpie's compiled path bit for bit on the model it serves, the binary model on counts.

Each case fits the same data and seed twice in this process: once as the product does and
once through ``nutpie.compile_pymc_model`` (nutpie's own numba callbacks, the path every
archive before the change was made with), and compares every posterior array byte for byte.
The cases: two arms with a robust two-component prior (the main job's model) and a
control-only fit.
"""

from __future__ import annotations

import numpy as np
import nutpie
import pandas as pd
import pytest

from insilico_trials.infer import nuts, outcomes
from insilico_trials.infer.map_prior import MixturePrior

pytestmark = pytest.mark.slow


@pytest.fixture
def both_paths(monkeypatch):
    """Run ``fn`` with the product's compile path, then with nutpie's compiled one."""

    def clear() -> None:
        outcomes._CACHE.clear()

    def run(fn):
        clear()
        ours = fn()
        clear()
        with monkeypatch.context() as m:
            m.setattr(nuts, "compile_model", nutpie.compile_pymc_model)
            theirs = fn()
        clear()
        return ours, theirs

    return run


def _posterior_bytes(idata) -> dict[str, bytes]:
    post = idata["posterior"]
    return {name: np.ascontiguousarray(post[name].values).tobytes() for name in post.data_vars}


def _same_fit(a: outcomes.OutcomeFit, b: outcomes.OutcomeFit) -> None:
    pa, pb = _posterior_bytes(a.idata), _posterior_bytes(b.idata)
    assert pa.keys() == pb.keys()
    differ = [name for name in pa if pa[name] != pb[name]]
    assert not differ, f"draws differ in {differ}"
    div_a = np.asarray(a.idata["sample_stats"]["diverging"].values)
    div_b = np.asarray(b.idata["sample_stats"]["diverging"].values)
    assert np.array_equal(div_a, div_b)
    assert np.array_equal([a.probability], [b.probability], equal_nan=True)


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arm = np.repeat(["control", "treatment"], n)
    trt = (arm == "treatment").astype(float)
    baseline = rng.normal(50.0, 10.0, 2 * n)
    return pd.DataFrame(
        {
            "arm": arm,
            "response": (rng.random(2 * n) < 0.25 + 0.2 * trt).astype(int),
            "value": -5.0 - 8.0 * trt + 0.3 * (baseline - 50) + rng.normal(0, 12, 2 * n),
            "baseline": baseline,
            "time": rng.weibull(1.3, 2 * n) * 300 / (1 + 0.4 * trt) + 1,
            "event": (rng.random(2 * n) < 0.8).astype(int),
        }
    )


CASES = {
    "binary_counts_mixture": dict(
        model="binary",
        decision={"quantity": "rate_difference", "delta": 0.1, "threshold": 0.9},
        prior=MixturePrior("beta", (0.8, 0.2), (8.0, 1.0), (30.0, 1.0)),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_outcome_draws_equal_nutpie_compiled(both_paths, case):
    data = _frame(60, seed=11)
    kw = CASES[case]
    ours, theirs = both_paths(lambda: outcomes.fit_outcome(data, **kw, draws=500, tune=500, seed=3))
    _same_fit(ours, theirs)


def test_control_only_counts_equal_nutpie_compiled(both_paths):
    data = _frame(60, seed=12)
    data = data[data["arm"] == "control"]
    prior = MixturePrior("beta", (0.8, 0.2), (8.0, 1.0), (30.0, 1.0))
    ours, theirs = both_paths(
        lambda: outcomes.fit_outcome(data, "binary", prior=prior, draws=500, tune=500, seed=9)
    )
    _same_fit(ours, theirs)


def test_only_the_counts_model_takes_the_callback_path():
    data = _frame(20, seed=1)
    outcomes._CACHE.clear()
    outcomes.fit_outcome(data, "binary", draws=50, tune=50)
    (key,) = outcomes._CACHE
    assert key[0] == "binary" and key[3] == "counts"
    assert type(outcomes._CACHE[key]).__name__ == "PyFuncModel"

"""Helpers for testing code that runs trials: protocol transforms and a fit without MCMC.

Protocols are frozen; a test changes one with a ``with_*`` transform (a new protocol, validated
again), never by editing YAML text, and writes it with :func:`write_protocol` when a command
needs a file. :func:`mock_fit` stands in for the outcome fit (as PyMC's ``mock_sample`` does for
its sampler): ``run_trial(protocol, fit=mock_fit)`` runs every stage but MCMC.

Examples
--------
>>> from insilico_trials.spec.protocol import load_protocol
>>> p = load_protocol("protocols/onc_phase2_orr.yaml")  # doctest: +SKIP
>>> small = with_mcmc(with_arm_sizes(p, 12), draws=300, tune=300)  # doctest: +SKIP
>>> result = run_trial(small, fit=mock_fit)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from insilico_trials.infer.conjugate import MixturePrior
from insilico_trials.sim.trial import analysis_frame
from insilico_trials.spec.protocol import TrialProtocol

__all__ = [
    "MockFit",
    "mock_fit",
    "with_arm_sizes",
    "with_changes",
    "with_fields",
    "with_mcmc",
    "with_typical_values",
    "write_protocol",
]


def _revalidated(protocol: TrialProtocol, data: dict[str, Any]) -> TrialProtocol:
    """``data`` validated as a protocol; a model file read for ``protocol`` stays attached
    while the new protocol names the same file (the folder it came from is not known here)."""
    new = TrialProtocol.model_validate(data)
    old = protocol.__pydantic_private__.get("_pk_file") if protocol.__pydantic_private__ else None
    if old is not None and new.pk is not None and protocol.pk is not None:
        if new.pk.model == protocol.pk.model:
            new.__pydantic_private__["_pk_file"] = old
    return new


def with_changes(protocol: TrialProtocol, **sections: Any) -> TrialProtocol:
    """``protocol`` with whole sections or fields replaced, validated again.

    ``with_changes(p, trial_id="x", endpoints={**p.endpoints.model_dump(), "follow_up_weeks": 24})``
    """
    data = protocol.model_dump(mode="json")
    data.update(sections)
    return _revalidated(protocol, data)


def _path(dotted: str) -> list[str | int]:
    """``"arms[1].regimen.n_doses"`` -> ``["arms", 1, "regimen", "n_doses"]``."""
    out: list[str | int] = []
    for part in dotted.split("."):
        name, *indices = part.replace("]", "").split("[")
        if name:
            out.append(name)
        out += [int(i) for i in indices]
    return out


def with_fields(protocol: TrialProtocol, changes: dict[str, Any]) -> TrialProtocol:
    """``protocol`` with fields set by path, validated again (every cross-section rule too).

    ``with_fields(p, {"endpoints.follow_up_weeks": 24, "arms[1].regimen.n_doses": 84})``;
    a value ``None`` removes an optional section (``{"design": None}``).
    """
    data = protocol.model_dump(mode="json")
    for dotted, value in changes.items():
        *parents, leaf = _path(dotted)
        node: Any = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    return _revalidated(protocol, data)


def _with(protocol: TrialProtocol, path: tuple[str | int, ...], value: Any) -> TrialProtocol:
    return with_fields(protocol, {".".join(map(str, path)): value})


def with_arm_sizes(protocol: TrialProtocol, n: int | dict[str, int]) -> TrialProtocol:
    """Every arm with ``n`` virtual patients (or ``{arm: n}``)."""
    data = protocol.model_dump(mode="json")
    for arm in data["arms"]:
        arm["n"] = n if isinstance(n, int) else n.get(arm["name"], arm["n"])
    return _revalidated(protocol, data)


def with_mcmc(
    protocol: TrialProtocol, *, draws: int, tune: int = 500, chains: int = 2
) -> TrialProtocol:
    """The outcome model sampled with other NUTS settings."""
    return _with(protocol, ("analysis", "mcmc"), {"draws": draws, "tune": tune, "chains": chains})


def with_typical_values(protocol: TrialProtocol, values: dict[str, float]) -> TrialProtocol:
    """Population parameters with other typical values (``{"CL": 2.0}``)."""
    data = protocol.model_dump(mode="json")
    for name, value in values.items():
        data["population"]["parameters"][name]["typical"] = value
    return _revalidated(protocol, data)


def write_protocol(protocol: TrialProtocol, path: str | Path) -> Path:
    """Write ``protocol`` as a YAML file that loads back to the same protocol."""
    path = Path(path)
    path.write_text(
        yaml.safe_dump(protocol.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    return path


@dataclass(frozen=True)
class MockFit:
    """What the archive, report and tracker read of an outcome fit, from exact conjugate draws."""

    probability: float
    decision: str
    converged: bool
    diagnostics: dict[str, Any]
    summary: pd.DataFrame
    idata: Any


def mock_fit(
    protocol: TrialProtocol,
    endpoints: pd.DataFrame,
    prior: MixturePrior | None = None,
    *,
    seed: int = 7,
) -> MockFit:
    """Exact posterior draws of a binary protocol: ``p_t ~ Beta(1 + r, 1 + n - r)``, ``p_c``
    from the conjugate posterior of ``prior`` (a beta mixture; None: Beta(1, 1)).

    Exact for the binary model without covariates; no MCMC. Other outcome families are not
    mocked (use the real fit).
    """
    import xarray as xr

    from insilico_trials.infer.conjugate import beta_mixture_posterior

    if protocol.analysis.model != "binary":
        raise NotImplementedError(f"mock_fit: binary protocols only, got {protocol.analysis.model}")
    rng = np.random.default_rng(seed)
    d = protocol.analysis.decision
    frame = analysis_frame(protocol, endpoints)
    treat = protocol.analysis.treatment or protocol.treatment_arms[0].name
    ctrl = frame.loc[frame["arm"] == protocol.control_arm.name, "response"]
    trt = frame.loc[frame["arm"] == treat, "response"]
    if prior is None:
        p_c = rng.beta(1 + ctrl.sum(), 1 + len(ctrl) - ctrl.sum(), size=(2, 500))
    else:
        w, a, b = beta_mixture_posterior(prior.weights, prior.a, prior.b, ctrl.sum(), len(ctrl))
        k = rng.choice(w.size, size=(2, 500), p=w / w.sum())
        p_c = rng.beta(a[k], b[k])
    p_t = rng.beta(1 + trt.sum(), 1 + len(trt) - trt.sum(), size=(2, 500))
    post = {"p_c": p_c, "p_t": p_t, "rate_difference": p_t - p_c}
    ds = xr.Dataset({k: (("chain", "draw"), v) for k, v in post.items()})
    prob = float(np.mean(post["rate_difference"] > d.delta))
    rows = [
        {"param": k, "mean": float(v.mean()), "sd": float(v.std()),
         "eti_2.5%": float(np.quantile(v, 0.025)), "eti_97.5%": float(np.quantile(v, 0.975)),
         "r_hat": 1.0, "ess_bulk": 1000.0}
        for k, v in post.items()
    ]  # fmt: skip
    return MockFit(
        probability=prob,
        decision="go" if prob > d.threshold else "no-go",
        converged=True,
        diagnostics={"divergences": 0, "failed": [], "max_rhat": 1.0, "min_ess_bulk": 1000.0},
        summary=pd.DataFrame(rows),
        idata=xr.DataTree.from_dict({"posterior": ds}),
    )

"""Pharmacodynamic models on top of any PK profile.

Each model takes the concentration ``conc`` (mg/L) of shape (n, m) on a shared grid ``times_h``
(shape (m,), sorted, h) and returns the response on the same grid. Between grid points the
concentration is taken as linear (so use a grid fine enough for the PK). ODE-based models are
integrated with a fixed-step classical Runge-Kutta (``steps_per_interval`` sub-steps per grid
interval), elementwise across patients, so results do not depend on chunking; the global error
is O(h^4): about 1e-7 relative for rate constants near 0.5/h on a 1 h grid with 8 sub-steps,
growing as (rate * step)^4 (raise ``steps_per_interval`` for fast kinetics). The effect
compartment is solved exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from insilico_trials.sim.pk.linear import expm1rel

__all__ = ["effect_compartment", "emax", "friberg", "indirect_response"]


def emax(
    conc: np.ndarray, *, e0: float | np.ndarray = 0.0, emax: float | np.ndarray, ec50, hill=1.0
) -> np.ndarray:
    """Direct sigmoid Emax: ``E0 + Emax C^h / (EC50^h + C^h)`` (units of E0/Emax; EC50 in mg/L)."""
    c = np.clip(np.asarray(conc, dtype=float), 0.0, None)
    ch = c**hill
    return e0 + emax * ch / (np.asarray(ec50, dtype=float) ** hill + ch)


def _rk4(
    rhs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    y0: np.ndarray,
    times_h: np.ndarray,
    conc: np.ndarray,
    steps: int,
) -> np.ndarray:
    """Integrate y' = rhs(y, C(t)) with C linear between grid points; y0 (k, n)."""
    t = np.asarray(times_h, dtype=float)
    c = np.atleast_2d(np.asarray(conc, dtype=float))
    out = np.empty((y0.shape[0], c.shape[0], t.size))
    y = y0.copy()
    out[:, :, 0] = y
    for i in range(t.size - 1):
        dt = t[i + 1] - t[i]
        h = dt / steps
        c0, c1 = c[:, i], c[:, i + 1]
        for s in range(steps):
            # concentration at the sub-step start, middle and end (linear interpolation)
            fa, fb = s / steps, (s + 0.5) / steps
            fc = (s + 1) / steps
            ca, cb, cc = c0 + (c1 - c0) * fa, c0 + (c1 - c0) * fb, c0 + (c1 - c0) * fc
            k1 = rhs(y, ca)
            k2 = rhs(y + 0.5 * h * k1, cb)
            k3 = rhs(y + 0.5 * h * k2, cb)
            k4 = rhs(y + h * k3, cc)
            y = y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        out[:, :, i + 1] = y
    return out


def effect_compartment(times_h: np.ndarray, conc: np.ndarray, *, ke0) -> np.ndarray:
    """Effect-site concentration Ce (mg/L): ``dCe/dt = ke0 (C - Ce)``, Ce(t0) = 0; ke0 in 1/h.

    Solved exactly for C linear between grid points (no step-size error). Feed Ce to
    :func:`emax` for a delayed direct effect.
    """
    t = np.asarray(times_h, dtype=float)
    c = np.atleast_2d(np.asarray(conc, dtype=float))
    k = np.broadcast_to(np.asarray(ke0, dtype=float), (c.shape[0],))
    out = np.empty_like(c)
    ce = np.zeros(c.shape[0])
    out[:, 0] = ce
    for i in range(t.size - 1):
        h = t[i + 1] - t[i]
        decay = np.exp(-k * h)
        slope = (c[:, i + 1] - c[:, i]) / h if h > 0 else np.zeros(c.shape[0])
        # int_0^h ke0 e^{-ke0 (h - s)} (C0 + slope s) ds, with (1 - e^{-kh})/k = h expm1rel(-kh)
        gain = h * expm1rel(-k * h)
        ce = ce * decay + c[:, i] * (1 - decay) + slope * (h - gain)
        out[:, i + 1] = ce
    return out


def indirect_response(
    times_h: np.ndarray,
    conc: np.ndarray,
    *,
    kind: int,
    kin,
    kout,
    emax=1.0,
    ec50,
    hill=1.0,
    r0=None,
    steps_per_interval: int = 8,
) -> np.ndarray:
    """Indirect-response models I-IV (Dayneka, Garg & Jusko 1993).

    ``dR/dt = kin (1 +/- S(C)) - kout (1 +/- S(C)) R`` with ``S = Emax C^h / (EC50^h + C^h)``:
    kind 1 inhibits production (kin (1 - S)), 2 inhibits loss (kout (1 - S)), 3 stimulates
    production (kin (1 + S)), 4 stimulates loss (kout (1 + S)). For inhibition Emax must be in
    [0, 1]. R0 defaults to the baseline kin/kout. kin in response units/h, kout in 1/h.
    """
    if kind not in (1, 2, 3, 4):
        raise ValueError(f"kind must be 1, 2, 3 or 4, got {kind}")
    if kind in (1, 2) and not np.all((np.asarray(emax) >= 0) & (np.asarray(emax) <= 1)):
        raise ValueError(f"inhibition needs 0 <= emax <= 1, got {emax}")
    c = np.atleast_2d(np.asarray(conc, dtype=float))
    n = c.shape[0]
    kin_, kout_ = (
        np.broadcast_to(kin, (n,)).astype(float),
        np.broadcast_to(kout, (n,)).astype(float),
    )
    base = kin_ / kout_ if r0 is None else np.broadcast_to(r0, (n,)).astype(float)

    emax_ = np.broadcast_to(emax, (n,)).astype(float)
    ec50_ = np.broadcast_to(ec50, (n,)).astype(float)
    hill_ = np.broadcast_to(hill, (n,)).astype(float)

    def rhs(y: np.ndarray, cc: np.ndarray) -> np.ndarray:
        ch = np.clip(cc, 0.0, None) ** hill_
        s = emax_ * ch / (ec50_**hill_ + ch)
        prod = kin_ * (1 - s) if kind == 1 else kin_ * (1 + s) if kind == 3 else kin_
        loss = kout_ * (1 - s) if kind == 2 else kout_ * (1 + s) if kind == 4 else kout_
        return prod - loss * y

    return _rk4(rhs, base[None, :], times_h, c, steps_per_interval)[0]


def friberg(
    times_h: np.ndarray,
    conc: np.ndarray,
    *,
    circ0,
    mtt_h,
    gamma,
    slope=None,
    emax=None,
    ec50=None,
    steps_per_interval: int = 8,
) -> np.ndarray:
    """Friberg (2002) myelosuppression: circulating neutrophils (units of ``circ0``, e.g. 1e9/L).

    Proliferating pool, three transit compartments and circulation with ``ktr = 4 / MTT``:
    ``dProl = ktr Prol (1 - Edrug) (Circ0 / Circ)^gamma - ktr Prol``, transit chain, and
    ``dCirc = ktr T3 - ktr Circ``, all starting at ``circ0``. The drug effect is linear
    (``Edrug = slope * C``, slope in L/mg) or Emax (``emax * C / (ec50 + C)``).
    """
    c = np.atleast_2d(np.asarray(conc, dtype=float))
    n = c.shape[0]
    if (slope is None) == (emax is None):
        raise ValueError("give exactly one drug effect: slope, or emax with ec50")
    if emax is not None and ec50 is None:
        raise ValueError("emax needs ec50")
    circ0_ = np.broadcast_to(circ0, (n,)).astype(float)
    ktr = 4.0 / np.broadcast_to(mtt_h, (n,)).astype(float)
    gam = np.broadcast_to(gamma, (n,)).astype(float)

    def drug(cc: np.ndarray) -> np.ndarray:
        cc = np.clip(cc, 0.0, None)
        if slope is not None:
            return np.broadcast_to(slope, (n,)) * cc
        return np.broadcast_to(emax, (n,)) * cc / (np.broadcast_to(ec50, (n,)) + cc)

    def rhs(y: np.ndarray, cc: np.ndarray) -> np.ndarray:
        prol, t1, t2, t3, circ = y
        feedback = (circ0_ / np.maximum(circ, 1e-300)) ** gam
        return np.stack(
            [
                ktr * prol * (1 - drug(cc)) * feedback - ktr * prol,
                ktr * (prol - t1),
                ktr * (t1 - t2),
                ktr * (t2 - t3),
                ktr * (t3 - circ),
            ]
        )

    y0 = np.tile(circ0_, (5, 1))
    return _rk4(rhs, y0, times_h, c, steps_per_interval)[4]

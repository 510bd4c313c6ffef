"""Exact state transition for the linear mammillary models, vectorised across patients.

The disposition part (central plus peripherals, amounts ``y``) obeys ``y' = A y + input`` with
``A`` similar to a symmetric matrix: with ``D = diag(V)``, ``S = D^-1/2 A D^1/2`` is symmetric, so
its eigenvalues are real and ``numpy.linalg.eigh`` gives an orthonormal basis even when they
coincide. The depot is a single exponential that feeds the central compartment; its coupling to
each disposition mode is integrated analytically with the well-conditioned form
``(e^{at} - e^{bt}) / (a - b) = e^{max(a,b) t} t expm1(-|a-b| t) / (-|a-b| t)``, so KA equal to a
disposition eigenvalue is no special case.

Every product here is an explicit sum over the (at most 4) compartments in a fixed order, with
elementwise numpy operations only, so a patient's result never depends on which other patients
share the batch (identical numbers for any chunking).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from insilico_trials.models.pk import PKModel

__all__ = ["LinearSystem", "expm1rel"]


def expm1rel(x: np.ndarray) -> np.ndarray:
    """``expm1(x) / x`` with the limit 1 at ``x == 0`` (accurate for tiny ``|x|``)."""
    x = np.asarray(x, dtype=float)
    zero = x == 0.0
    safe = np.where(zero, 1.0, x)
    return np.where(zero, 1.0, np.expm1(safe) / safe)


def _integral_exp(mu: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``int_0^t exp(mu (t - s)) ds`` for ``mu <= 0``."""
    return t * expm1rel(mu * t)


def _convolve_exp(mu: np.ndarray, a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``int_0^t exp(mu (t - s)) exp(a s) ds``, stable also when ``a == mu``."""
    return np.exp(np.maximum(mu, a) * t) * t * expm1rel(-np.abs(a - mu) * t)


class LinearSystem:
    """Per-patient eigensystems of a linear model, ready to propagate states exactly.

    Parameters
    ----------
    model
        A linear :class:`~insilico_trials.models.pk.PKModel`.
    params
        Parameter arrays of shape (n,) (or scalars), keyed by the model's parameter names.
    """

    def __init__(self, model: PKModel, params: Mapping[str, np.ndarray]) -> None:
        vols, cls, ka = model.disposition(params)
        self.model = model
        self.n = vols.shape[0] if vols.ndim == 2 else 1
        vols = vols.reshape(-1, vols.shape[-1])
        cls = cls.reshape(-1, cls.shape[-1])
        self.ka = np.asarray(ka, dtype=float).reshape(-1)
        self.volumes = vols
        nd = vols.shape[1]
        self.sqrt_v = np.sqrt(vols)
        s = np.zeros((vols.shape[0], nd, nd))
        s[:, 0, 0] = -cls.sum(axis=1) / vols[:, 0]
        for p in range(1, nd):
            s[:, p, p] = -cls[:, p] / vols[:, p]
            s[:, 0, p] = s[:, p, 0] = cls[:, p] / np.sqrt(vols[:, 0] * vols[:, p])
        mu, u = np.linalg.eigh(s)
        # Rounding can leave a tiny positive eigenvalue when CL == 0; the system cannot grow.
        self.mu = np.minimum(mu, 0.0)
        self.u = u
        self.nd = nd

    @property
    def n_cmt(self) -> int:
        """Number of compartments (depot plus disposition)."""
        return 1 + self.nd

    def advance(self, x0: np.ndarray, dt: np.ndarray, rate: np.ndarray | None = None) -> np.ndarray:
        """Propagate states exactly over elapsed times ``dt`` with constant zero-order inputs.

        Parameters
        ----------
        x0
            Shape (n, n_cmt): amounts at the start (mg), compartment order as in the model.
        dt
            Shape (n, m) or (m,): elapsed times (h), >= 0.
        rate
            Shape (n, n_cmt): zero-order input per compartment (mg/h); ``None`` for none.

        Returns
        -------
        numpy.ndarray
            Shape (n, m, n_cmt): amounts (mg) after each elapsed time.
        """
        x0 = np.asarray(x0, dtype=float)
        dt = np.asarray(dt, dtype=float)
        if dt.ndim == 1:
            dt = np.broadcast_to(dt, (x0.shape[0], dt.shape[0]))
        ka = self.ka[:, None]
        d0 = x0[:, :1]
        decay_d = np.exp(-ka * dt)
        out = np.empty((*dt.shape, self.n_cmt))
        out[..., 0] = d0 * decay_d
        has_rate = rate is not None and bool(np.any(rate))
        r_d = None
        if has_rate:
            rate = np.asarray(rate, dtype=float)
            r_d = rate[:, :1]
            if np.any(r_d):
                out[..., 0] += r_d * _integral_exp(-ka, dt)
        has_depot = bool(np.any(d0)) or (r_d is not None and bool(np.any(r_d)))
        xi = []
        for j in range(self.nd):
            mu = self.mu[:, j : j + 1]
            uj = self.u[:, :, j]
            xi0 = np.zeros(x0.shape[0])
            for i in range(self.nd):
                xi0 = xi0 + uj[:, i] * (x0[:, 1 + i] / self.sqrt_v[:, i])
            e = np.exp(mu * dt)
            xij = e * xi0[:, None]
            if has_rate:
                g = np.zeros(x0.shape[0])
                for i in range(self.nd):
                    g = g + uj[:, i] * (rate[:, 1 + i] / self.sqrt_v[:, i])
                b0 = uj[:, 0] / self.sqrt_v[:, 0]
                # depot infusion: rate r_d enters the central compartment as r_d (1 - e^{-ka s})
                g = g + b0 * rate[:, 0]
                if np.any(g):
                    xij = xij + g[:, None] * _integral_exp(mu, dt)
            if has_depot:
                b0 = (uj[:, 0] / self.sqrt_v[:, 0])[:, None]
                h = _convolve_exp(mu, -ka, dt)
                depot_term = ka * d0 * h
                if r_d is not None and np.any(r_d):
                    depot_term = depot_term - r_d * h
                xij = xij + b0 * depot_term
            xi.append(xij)
        for i in range(self.nd):
            acc = np.zeros(dt.shape)
            for j in range(self.nd):
                acc = acc + self.u[:, i, j][:, None] * xi[j]
            out[..., 1 + i] = self.sqrt_v[:, i][:, None] * acc
        return out

    def steady_state_infusion(self, rate: np.ndarray) -> np.ndarray:
        """Steady-state amounts (mg) under constant zero-order inputs ``rate`` (n, n_cmt), mg/h."""
        # The t -> infinity limit of ``advance``: each mode contributes g / (-mu).
        rate = np.asarray(rate, dtype=float)
        out = np.zeros((rate.shape[0], self.n_cmt))
        with np.errstate(divide="ignore"):
            out[:, 0] = np.where(rate[:, 0] != 0, rate[:, 0] / self.ka, 0.0)
        xi = []
        for j in range(self.nd):
            uj = self.u[:, :, j]
            g = uj[:, 0] / self.sqrt_v[:, 0] * rate[:, 0]
            for i in range(self.nd):
                g = g + uj[:, i] * (rate[:, 1 + i] / self.sqrt_v[:, i])
            mu = self.mu[:, j]
            if np.any((mu == 0) & (g != 0)):
                raise ValueError("no steady state under a constant infusion when CL is 0")
            xi.append(np.where(g == 0, 0.0, g / np.where(mu == 0, -1.0, -mu)))
        for i in range(self.nd):
            acc = np.zeros(rate.shape[0])
            for j in range(self.nd):
                acc = acc + self.u[:, i, j] * xi[j]
            out[:, 1 + i] = self.sqrt_v[:, i] * acc
        return out

"""Population simulation of a regular dosing regimen on an output grid.

This is the fast path the trial flows call: every patient gets the same dosing times (the dose
amount may differ per patient), so the event timeline is shared and the exact linear solution is
evaluated with superposition of per-patient unit responses over the distinct offsets from the
last event. Nonlinear models fall back to a per-patient stiff ODE solve.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from insilico_trials.errors import PKInputError
from insilico_trials.models.pk import PKModel, resolve_model
from insilico_trials.sim.pk.linear import LinearSystem
from insilico_trials.sim.pk.modelkernel import kernel_for
from insilico_trials.sim.pk.ode import ODE_ATOL, ODE_RTOL, integrate_segments
from insilico_trials.spec.modelfile import UserModel

__all__ = ["ROUTES", "simulate_regimen", "simulate_regimen_outputs"]

ROUTES = ("oral", "iv_bolus", "iv_infusion")


def _check_params(
    model: PKModel | UserModel, params: Mapping[str, object]
) -> tuple[dict[str, np.ndarray], int]:
    missing = [p for p in model.parameters if p not in params]
    if missing:
        raise PKInputError(
            f"model {model.name} needs parameters {', '.join(model.parameters)}; "
            f"missing {', '.join(missing)}"
        )
    arrays = {k: np.atleast_1d(np.asarray(params[k], dtype=float)) for k in model.parameters}
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError:
        shapes = {k: a.shape for k, a in arrays.items()}
        raise PKInputError(f"parameter arrays must share one shape (n,), got {shapes}") from None
    if len(shape) != 1:
        raise PKInputError(f"parameter arrays must be 1-D (n,), got shape {shape}")
    arrays = {k: np.broadcast_to(a, shape) for k, a in arrays.items()}
    if isinstance(model, UserModel):
        for spec in model.inputs:

            def where(i: int, message: str) -> None:
                raise PKInputError(f"patient {i}: {message}")

            spec.check(arrays[spec.name], where)
        return arrays, shape[0]
    for k, a in arrays.items():
        bad = np.flatnonzero(~np.isfinite(a) | (a < 0))
        if bad.size:
            i = int(bad[0])
            raise PKInputError(f"parameter {k} of patient {i} must be finite and >= 0, got {a[i]}")
        if k in ("V", "V1", "V2", "V3") or k in ("KM",):
            bad = np.flatnonzero(a == 0)
            if bad.size:
                raise PKInputError(f"parameter {k} of patient {int(bad[0])} must be > 0, got 0")
    return arrays, shape[0]


def simulate_regimen(
    model: str | PKModel | UserModel,
    params: Mapping[str, np.ndarray],
    *,
    dose_mg: float | np.ndarray,
    interval_h: float,
    n_doses: int,
    route: str = "oral",
    infusion_h: float | None = None,
    times_h: np.ndarray,
    start_h: float = 0.0,
    method: str = "exact",
) -> np.ndarray:
    """Central concentration of every patient under a regular regimen.

    Parameters
    ----------
    model
        Model name, one of :data:`insilico_trials.models.pk.MODELS` (``pk1cmt``, ``pk2cmt``,
        ``pk3cmt``, ``pk1cmt_mm``), a model file path or spec. A model file's first output is
        the concentration; its ``routes`` say where oral and iv doses go, and its F scales them.
    params
        Per-patient parameter arrays of shape (n,) keyed by ``MODELS[model].parameters``
        (CL, Q* in L/h; V* in L; KA in 1/h; VMAX in mg/h; KM in mg/L).
    dose_mg
        Dose per administration (mg): a scalar or shape (n,).
    interval_h
        Dosing interval (h), > 0 when ``n_doses > 1``.
    n_doses
        Number of doses (>= 0), the first at ``start_h``.
    route
        ``"oral"`` (bolus into the depot, compartment 1), ``"iv_bolus"`` (bolus into the
        central compartment) or ``"iv_infusion"`` (zero-order into the central compartment over
        ``infusion_h``).
    infusion_h
        Infusion duration (h) for ``iv_infusion``; must be None for the other routes.
    times_h
        Output times (h), shape (m,). A dose at time t is applied before an observation at t.
    start_h
        Time of the first dose (h).
    method
        ``"exact"`` (default): closed-form state transition for linear models, stiff ODE solver
        for nonlinear ones. ``"ode"``: force the per-patient ODE solver (rtol 1e-10, atol 1e-12 mg),
        used to cross-check the exact path.

    Returns
    -------
    numpy.ndarray
        Shape (n, m): central concentration (mg/L).
    """
    spec, arrays, _, dose, timeline, times = _prepare(
        model, params, dose_mg, interval_h, n_doses, route, infusion_h, times_h, start_h, method
    )
    if isinstance(spec, UserModel):
        outputs = _user_regimen(spec, arrays, dose, route, timeline, times)
        return outputs[spec.outputs[0][0]]
    cmt = 0 if route == "oral" else spec.central
    volume = arrays[spec.volume]
    if spec.linear and method == "exact":
        return _central_linear(spec, arrays, dose, cmt, timeline, times, volume)
    return _central_ode(spec, arrays, dose, cmt, timeline, times) / volume[:, None]


def _prepare(model, params, dose_mg, interval_h, n_doses, route, infusion_h, times_h, start_h,
             method):  # fmt: skip
    """Checked inputs of a regular regimen: (spec, arrays, n, dose, timeline, times)."""
    spec = resolve_model(model) if isinstance(model, str) else model
    arrays, n = _check_params(spec, params)
    if route not in ROUTES:
        raise PKInputError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    if route == "iv_infusion":
        if infusion_h is None or not np.isfinite(infusion_h) or infusion_h <= 0:
            raise PKInputError(f"infusion_h must be > 0 for route iv_infusion, got {infusion_h}")
    elif infusion_h is not None:
        raise PKInputError(f"infusion_h is only allowed with route iv_infusion, got {infusion_h}")
    if int(n_doses) != n_doses or n_doses < 0:
        raise PKInputError(f"n_doses must be a non-negative integer, got {n_doses}")
    n_doses = int(n_doses)
    if n_doses > 1 and not (np.isfinite(interval_h) and interval_h > 0):
        raise PKInputError(f"interval_h must be > 0 with {n_doses} doses, got {interval_h}")
    if method not in ("exact", "ode"):
        raise PKInputError(f"method must be 'exact' or 'ode', got {method!r}")
    dose = np.broadcast_to(np.asarray(dose_mg, dtype=float), (n,))
    if np.any(~np.isfinite(dose) | (dose < 0)):
        i = int(np.flatnonzero(~np.isfinite(dose) | (dose < 0))[0])
        raise PKInputError(f"dose_mg of patient {i} must be finite and >= 0, got {dose[i]}")
    times = np.asarray(times_h, dtype=float)
    if times.ndim != 1 or np.any(~np.isfinite(times)):
        raise PKInputError("times_h must be a 1-D array of finite times (h)")

    timeline = _Timeline.build(
        n_doses=n_doses,
        interval_h=float(interval_h),
        start_h=float(start_h),
        infusion_h=infusion_h if route == "iv_infusion" else None,
    )
    return spec, arrays, n, dose, timeline, times


def simulate_regimen_outputs(
    model: str | UserModel,
    params: Mapping[str, np.ndarray],
    *,
    dose_mg: float | np.ndarray,
    interval_h: float,
    n_doses: int,
    route: str = "oral",
    infusion_h: float | None = None,
    times_h: np.ndarray,
    start_h: float = 0.0,
) -> dict[str, np.ndarray]:
    """Every output of a model file under a regular regimen: ``{name: (n, m)}``.

    The arguments are those of :func:`simulate_regimen`, which returns the first output only.
    """
    spec, arrays, _, dose, timeline, times = _prepare(
        model, params, dose_mg, interval_h, n_doses, route, infusion_h, times_h, start_h, "exact"
    )
    if not isinstance(spec, UserModel):
        raise PKInputError(f"model {spec.name} is built in; its one output is simulate_regimen's")
    return _user_regimen(spec, arrays, dose, route, timeline, times)


class _Timeline:
    """Breakpoints shared by all patients: bolus counts and infusion counts per segment."""

    def __init__(self, points: np.ndarray, bolus: np.ndarray, infusing: np.ndarray, dur):
        self.points = points  # segment starts (h)
        self.bolus = bolus  # number of bolus doses at each start
        self.infusing = infusing  # number of infusions running in each segment
        self.infusion_h = dur

    @classmethod
    def build(cls, *, n_doses, interval_h, start_h, infusion_h):
        dose_times = start_h + interval_h * np.arange(n_doses)
        if infusion_h is None:
            pts, counts = np.unique(dose_times, return_counts=True)
            return cls(pts, counts.astype(float), np.zeros(pts.size), None)
        ends = dose_times + infusion_h
        pts = np.unique(np.concatenate([dose_times, ends]))
        starts_le = np.searchsorted(np.sort(dose_times), pts, side="right")
        ends_le = np.searchsorted(np.sort(ends), pts, side="right")
        return cls(pts, np.zeros(pts.size), (starts_le - ends_le).astype(float), infusion_h)


def _central_linear(spec, arrays, dose, cmt, tl: _Timeline, times, volume) -> np.ndarray:
    """Central concentration (mg/L), shape (n, len(times))."""
    system = LinearSystem(spec, arrays)
    n, nc = dose.shape[0], system.n_cmt
    npts = tl.points.size
    if npts == 0:
        return np.zeros((n, times.size))
    central = spec.central
    infusion = tl.infusion_h is not None
    unit_rate = dose / tl.infusion_h if infusion else None
    # state at the start of each segment, after the boluses at that time
    history: list[list[np.ndarray]] = [[] for _ in range(nc)]
    x = [np.zeros(n) for _ in range(nc)]
    steps: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    eye = np.eye(nc)
    for i in range(npts):
        if i > 0:
            dt = tl.points[i] - tl.points[i - 1]
            if dt not in steps:
                # transition matrix Phi(dt) and the response to a unit rate into cmt, per patient
                phi = np.stack(
                    [
                        system.advance(np.broadcast_to(eye[c], (n, nc)), np.array([dt]))[:, 0, :]
                        for c in range(nc)
                    ],
                    axis=2,
                )
                unit = np.zeros((n, nc))
                unit[:, cmt] = 1.0
                gamma = system.advance(np.zeros((n, nc)), np.array([dt]), unit)[:, 0, :]
                steps[dt] = (phi, gamma)
            phi, gamma = steps[dt]
            new = []
            for r in range(nc):
                acc = phi[:, r, 0] * x[0]
                for c in range(1, nc):
                    acc = acc + phi[:, r, c] * x[c]
                if infusion and tl.infusing[i - 1] > 0:
                    acc = acc + gamma[:, r] * (tl.infusing[i - 1] * unit_rate)
                new.append(acc)
            x = new
        if tl.bolus[i] > 0:
            x[cmt] = x[cmt] + tl.bolus[i] * dose
        for c in range(nc):
            history[c].append(x[c])
    # state at each segment start, per compartment, shape (n, npts); stacked once (writing
    # column by column into one array is cache-hostile)
    starts = [np.stack(h, axis=1) for h in history]
    # Output = sum over compartments of (state at the segment start) x (unit response at the
    # offset into the segment), plus the infusion response. Responses are computed once per
    # distinct offset; on a regular grid the interior segments share one offset pattern and are
    # filled by broadcasting (no gathers), the rest by indexing.
    order = None
    if np.any(np.diff(times) < 0):
        order = np.argsort(times, kind="stable")
        times = times[order]
    seg = np.searchsorted(tl.points, times, side="right") - 1
    before = seg < 0
    seg_c = np.maximum(seg, 0)
    offsets = np.where(before, 0.0, times - tl.points[seg_c])
    uniq, inv = np.unique(offsets, return_inverse=True)
    ones = np.ones(n)
    responses = []  # (per-segment weights (n, nseg), response at unique offsets (n, u))
    for c in range(nc):
        xc = starts[c]
        if not np.any(xc):
            continue
        e = np.zeros((n, nc))
        e[:, c] = ones
        responses.append((xc, system.advance(e, uniq)[:, :, central] / volume[:, None]))
    if infusion:
        rates = np.zeros((n, nc))
        rates[:, cmt] = ones
        resp = system.advance(np.zeros((n, nc)), uniq, rates)[:, :, central] / volume[:, None]
        responses.append((tl.infusing[None, :] * unit_rate[:, None], resp))
    out = np.zeros((n, times.size))
    lo, hi, k_a, k_b = _regular_block(seg, offsets)
    if hi > lo:
        m = (hi - lo) // (k_b - k_a)
        view = out[:, lo:hi].reshape(n, k_b - k_a, m)
        cols = inv[lo : lo + m]
        for w, resp in responses:
            view += w[:, k_a:k_b, None] * resp[:, None, cols]
    rest = np.r_[0:lo, hi : times.size]
    rest = rest[~before[rest]]
    if rest.size:
        for w, resp in responses:
            out[:, rest] += resp[:, inv[rest]] * w[:, seg_c[rest]]
    if order is not None:
        unsorted = np.empty_like(out)
        unsorted[:, order] = out
        out = unsorted
    return out


def _regular_block(seg: np.ndarray, offsets: np.ndarray) -> tuple[int, int, int, int]:
    """Largest run of consecutive segments whose sorted outputs share one offset pattern.

    Returns output positions [lo, hi) and segments [k_a, k_b); empty when there is none.
    """
    valid = seg >= 0
    if not valid.any():
        return 0, 0, 0, 0
    segs, first, counts = np.unique(seg[valid], return_index=True, return_counts=True)
    first = first + np.argmax(valid)
    best = (0, 0, 0, 0)
    i = 0
    while i < segs.size:
        m = counts[i]
        pattern = offsets[first[i] : first[i] + m]
        j = i + 1
        while (
            j < segs.size
            and segs[j] == segs[j - 1] + 1
            and counts[j] == m
            and np.array_equal(offsets[first[j] : first[j] + m], pattern)
        ):
            j += 1
        if (j - i) * m > best[1] - best[0]:
            best = (int(first[i]), int(first[i] + (j - i) * m), int(segs[i]), int(segs[j - 1] + 1))
        i = j
    return best


def _central_ode(spec, arrays, dose, cmt, tl: _Timeline, times) -> np.ndarray:
    n = dose.shape[0]
    out = np.zeros((n, times.size))
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    for p in range(n):  # nonlinear: one stiff solve per patient (independent of batching)
        pars = {k: float(v[p]) for k, v in arrays.items()}
        boluses = []
        rates = []
        for i in range(tl.points.size):
            b = np.zeros(spec.n_cmt)
            b[cmt] = tl.bolus[i] * dose[p]
            r = np.zeros(spec.n_cmt)
            if tl.infusion_h is not None:
                r[cmt] = tl.infusing[i] * dose[p] / tl.infusion_h
            boluses.append(b)
            rates.append(r)
        amounts = integrate_segments(
            spec, pars, tl.points, boluses, rates, sorted_times, rtol=ODE_RTOL, atol=ODE_ATOL
        )
        out[p, order] = amounts[:, spec.central]
    return out


def _user_regimen(
    spec: UserModel, arrays, dose: np.ndarray, route: str, tl: _Timeline, times: np.ndarray
) -> dict[str, np.ndarray]:
    """A model file's outputs under the shared timeline, all patients in one kernel call."""
    key = "oral" if route == "oral" else "iv"
    if key not in spec.routes:
        raise PKInputError(
            f"model {spec.name} ({spec.source}) has no {key} route; add routes: {{{key}: STATE}}"
        )
    cmt = spec.routes[key]
    attrs = spec.dosing.get(cmt, {})
    for attr in ("ALAG", "R", "D"):
        if attr in attrs:
            raise PKInputError(
                f"model {spec.name}: {attr} on the dosed compartment {spec.compartments[cmt]} is "
                "not supported for a regular regimen; simulate event records (pk simulate)"
            )
    with np.errstate(divide="ignore", invalid="ignore"):
        individual = spec.individual(arrays)
    n = dose.shape[0]
    amount = dose.copy()
    if "F" in attrs:
        amount = amount * spec.dose_attributes(individual)[(cmt, "F")]
    nc, npts = spec.n_cmt, tl.points.size
    # the model runs from time 0 (or the first output, if earlier): initial amounts that are
    # not an equilibrium (a growing tumour) evolve before the first dose too
    t0 = min(0.0, float(times.min())) if times.size else 0.0
    lead = 1 if npts == 0 or tl.points[0] > t0 else 0
    k = npts + lead
    bolus = np.zeros((n, k, nc))
    rates = np.zeros((n, k, nc))
    points = np.concatenate([[t0]] * lead + [tl.points])
    if npts:
        bolus[:, lead:, cmt] = tl.bolus[None, :] * amount[:, None]
        if tl.infusion_h is not None:
            rates[:, lead:, cmt] = tl.infusing[None, :] * (amount / tl.infusion_h)[:, None]
    order = np.argsort(times, kind="stable")
    states = kernel_for(spec).population(
        individual, points, bolus, rates, times[order], spec.initial_amounts(individual)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        values = spec.evaluate_outputs(states, individual[:, None, :])
    result = {}
    for name, value in values.items():
        out = np.empty((n, times.size))
        out[:, order] = value
        result[name] = out
    return result

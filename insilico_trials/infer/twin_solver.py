"""A compiled RK4 solver of a twin model, with exact sensitivities, as a pytensor Op.

The fit (:mod:`insilico_trials.infer.twins`) needs, at every NUTS step, every patient's
log-states on his step grid and their gradient. Written as a pytensor ``scan`` (the generic
path) a gradient costs ~3 ms for the 32 real patients over 1700 days, most of it the
overhead of a loop of small array operations. This module integrates the same classical RK4
on the log-states in one numba loop, together with the forward sensitivities of the
log-states with respect to the log initial states and the log shared parameters
(the variational equations integrated by the same RK4 stages, which is the exact derivative
of the discrete solution, not an approximation of it). The gradient of any function of the
trajectories is then a contraction of its output gradient with the sensitivities.

It needs the model's per-capita rates and their partial derivatives as a numba-compilable
function (:attr:`insilico_trials.models.twins.TwinModel.per_capita_jacobian`); a model
without one is solved by the ``scan``. Both paths give the same trajectories to rounding
and the same gradients (``tests/test_twin_solver.py``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from insilico_trials.models.twins import TwinModel, get_twin_model

__all__ = ["TwinSolve", "rk4_sensitivity_kernel", "solve_log_states"]

_KERNELS: dict[str, Any] = {}
_KERNELS_LOCK = threading.Lock()


def rk4_sensitivity_kernel(model: TwinModel) -> Any:
    """The compiled solver of ``model`` (one per model and process).

    ``kernel(z0, log_shared, h, u, k) -> (Z, SZ)``:

    * ``z0`` (n, ns): log initial states; ``log_shared`` (np,): log shared parameters in
      ``model.shared_parameters`` order; ``h``, ``u`` (T, n): step lengths (days; 0 pads) and
      treatment indicator of a :class:`insilico_trials.sim.twins.StepGrid`; ``k``: the
      constants in ``model.constants`` order;
    * ``Z`` (T + 1, n, ns): log-states after each step;
    * ``SZ`` (T + 1, n, ns, ns + np): ``d Z / d (z0, log_shared)`` for each patient.
    """
    import numba

    if model.per_capita_jacobian is None:
        raise ValueError(f"twin model {model.name!r} declares no per_capita_jacobian")
    with _KERNELS_LOCK:
        if model.name in _KERNELS:
            return _KERNELS[model.name]
        jac = numba.njit(model.per_capita_jacobian)
        ns = len(model.states)
        npar = len(model.shared_parameters)
        nq = ns + npar

        @numba.njit
        def kernel(z0, log_shared, h, u, k):  # pragma: no cover - compiled
            n_steps, n = h.shape
            p = np.exp(log_shared)
            Z = np.empty((n_steps + 1, n, ns))
            SZ = np.empty((n_steps + 1, n, ns, nq))
            y = np.empty(ns)
            g = np.empty(ns)
            gy = np.empty((ns, ns))
            gp = np.empty((ns, max(npar, 1)))
            z = np.empty(ns)
            sz = np.empty((ns, nq))
            zt = np.empty(ns)
            szt = np.empty((ns, nq))
            az = np.empty(ns)
            asz = np.empty((ns, nq))
            m = np.empty((ns, ns))
            d = np.empty((ns, nq))
            for i in range(n):
                for a in range(ns):
                    z[a] = z0[i, a]
                    Z[0, i, a] = z[a]
                    for q in range(nq):
                        sz[a, q] = 1.0 if q == a else 0.0
                        SZ[0, i, a, q] = sz[a, q]
                for t in range(n_steps):
                    hh = h[t, i]
                    if hh > 0.0:
                        uu = u[t, i]
                        for a in range(ns):
                            zt[a] = z[a]
                            az[a] = 0.0
                            for q in range(nq):
                                szt[a, q] = sz[a, q]
                                asz[a, q] = 0.0
                        for st in range(4):
                            for a in range(ns):
                                y[a] = np.exp(zt[a])
                            jac(y, uu, p, k, g, gy, gp)
                            w = 1.0 if (st == 0 or st == 3) else 2.0
                            c = 0.5 * hh if st < 2 else hh
                            # d g / d z = d g / d y * y; d g / d log p = d g / d p * p
                            for a in range(ns):
                                for b in range(ns):
                                    m[a, b] = gy[a, b] * y[b]
                            for a in range(ns):
                                az[a] += w * g[a]
                                for q in range(nq):
                                    acc = 0.0
                                    for b in range(ns):
                                        acc += m[a, b] * szt[b, q]
                                    if q >= ns:
                                        acc += gp[a, q - ns] * p[q - ns]
                                    d[a, q] = acc
                                    asz[a, q] += w * acc
                            if st < 3:
                                for a in range(ns):
                                    zt[a] = z[a] + c * g[a]
                                    for q in range(nq):
                                        szt[a, q] = sz[a, q] + c * d[a, q]
                        for a in range(ns):
                            z[a] += hh / 6.0 * az[a]
                            for q in range(nq):
                                sz[a, q] += hh / 6.0 * asz[a, q]
                    for a in range(ns):
                        Z[t + 1, i, a] = z[a]
                        for q in range(nq):
                            SZ[t + 1, i, a, q] = sz[a, q]
            return Z, SZ

        _KERNELS[model.name] = kernel
        return kernel


def _op_class():
    import pytensor.tensor as pt
    from pytensor.gradient import DisconnectedType, disconnected_type
    from pytensor.graph.basic import Apply
    from pytensor.graph.op import Op

    class _TwinSolve(Op):
        """``(z0, log_shared, h, u, k) -> (Z, SZ)`` of :func:`rk4_sensitivity_kernel`."""

        __props__ = ("model",)

        def __init__(self, model: str):
            self.model = model

        def make_node(self, z0, log_shared, h, u, k):
            inputs = [pt.as_tensor_variable(x).astype("float64") for x in (z0, log_shared, h, u, k)]
            z = pt.tensor(dtype="float64", shape=(None, None, None))
            sz = pt.tensor(dtype="float64", shape=(None, None, None, None))
            return Apply(self, inputs, [z, sz])

        def perform(self, node, inputs, output_storage):
            kernel = rk4_sensitivity_kernel(get_twin_model(self.model))
            z, sz = kernel(*(np.asarray(x, dtype=float) for x in inputs))
            output_storage[0][0] = z
            output_storage[1][0] = sz

        def connection_pattern(self, node):
            # outputs depend differentiably on z0 and log_shared only
            return [[True, False], [True, False], [False, False], [False, False], [False, False]]

        def pullback(self, inputs, outputs, output_grads):
            z0 = inputs[0]
            _z, sz = outputs
            g_z = output_grads[0]
            if isinstance(output_grads[1].type, DisconnectedType) is False:
                raise NotImplementedError("the gradient through the sensitivities is not defined")
            if isinstance(g_z.type, DisconnectedType):
                return [pt.zeros_like(z0), pt.zeros_like(inputs[1]), *(
                    disconnected_type() for _ in inputs[2:]
                )]  # fmt: skip
            ns = z0.shape[1]
            per_patient = (g_z[..., None] * sz).sum(axis=(0, 2))  # (n, ns + np)
            return [
                per_patient[:, :ns],
                per_patient[:, ns:].sum(axis=0),
                *(disconnected_type() for _ in inputs[2:]),
            ]

    from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

    @register_funcify_default_op_cache_key(_TwinSolve)
    def _funcify(op, node=None, **kwargs):
        return rk4_sensitivity_kernel(get_twin_model(op.model))

    return _TwinSolve


_OP_CLASS: Any = None


def TwinSolve(model: str) -> Any:
    """The pytensor Op solving ``model`` (see :func:`rk4_sensitivity_kernel`)."""
    global _OP_CLASS
    if _OP_CLASS is None:
        _OP_CLASS = _op_class()
    return _OP_CLASS(model)


def solve_log_states(model: TwinModel, params: dict[str, Any], h: Any, u: Any) -> tuple[Any, ...]:
    """The log-state trajectories as in :func:`insilico_trials.infer.twins.twin_graph`, solved
    by the compiled kernel: one tensor of shape (n_steps + 1, n_patients) per state."""
    import pytensor.tensor as pt

    z0 = pt.stack([pt.log(params[q]) for q in model.initial], axis=1)
    log_shared = pt.stack([pt.log(params[q]) for q in model.shared_parameters])
    k = np.array([c.value for c in model.constants.values()], dtype=float)
    z, _sz = TwinSolve(model.name)(z0, log_shared, h, u, k)
    return tuple(z[:, :, a] for a in range(len(model.states)))

"""Compiling a small PyMC model for nutpie in about a second instead of eight: the same draws.

``nutpie.compile_pymc_model`` (numba backend) compiles the model's log density and gradient
with PyTensor's numba linker, which PyTensor caches on disk across processes, and then wraps
them in two numba C callbacks whose types name a per-call random record layout; those two
wrappers cannot be cached and take 7-12 s to compile in every new process (measured on the
2-core CI machine: 7.8 s of 8.3 s for the two-parameter binary model of the main job).

:func:`compile_model` builds the same two PyTensor functions the same way (the same graph,
mode, rewrites and initial-point function as nutpie's own numba path) and hands them to
nutpie as Python callables (:func:`nutpie.compiled_pyfunc.from_pyfunc`). The sampler is the
same Rust NUTS and receives log densities and gradients from the same cached machine code.

Bit for bit only where the density has no long sums. Inside nutpie's C callback LLVM inlines
the PyTensor function and, under numba's fastmath, may reassociate its sums over patients: the
last bits of the log density then differ from the standalone function's, and so do the draws
(measured for the Weibull model, the MAP hierarchical model and the commensurate prior; the
continuous model with a covariate differed in one of two runs). For the binary model on
counts (two binomial terms) the draws are identical (``tests/test_nuts.py``), so that is the
one model :mod:`insilico_trials.infer.outcomes` compiles here; the others keep nutpie's
compiled callbacks and the numbers of every archive made before. The cost of this path is a
Python call per gradient (about 4 microseconds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["compile_model"]


def compile_model(model: Any) -> Any:
    """The nutpie model of a PyMC ``model`` with Python callbacks around PyTensor's cached
    numba functions; ``with_data`` swaps ``pm.Data`` values as for a compiled model.

    Mirrors ``nutpie.compile_pymc_model(model)`` at its defaults: support-point initial
    values jittered for every free variable, all variables stored, the expanded values
    joined into one vector (then split by name here, as nutpie's compiled path splits them).
    """
    from nutpie.compile_pymc import (
        _make_functions,
        _prepare_dims_and_coords,
        _wrap_with_lock,
    )
    from nutpie.compiled_pyfunc import from_pyfunc
    from pymc.initial_point import make_initial_point_fn

    initial_point = _wrap_with_lock(
        make_initial_point_fn(
            model=model,
            overrides=None,
            default_strategy="support_point",
            jitter_rvs=set(model.free_RVs),
            return_transformed=True,
        )
    )
    (n_dim, _n_expanded, logp_pt, expand_pt, initial_point_fn, shape_info, reparameterized) = (
        _make_functions(
            model,
            mode="NUMBA",
            compute_grad=True,
            join_expanded=True,
            pymc_initial_point_fn=initial_point,
            var_names=None,
        )
    )
    logp_jit = logp_pt.vm.jit_fn
    expand_jit = expand_pt.vm.jit_fn
    logp_names = [v.name for v in logp_pt.get_shared()]
    expand_names = [v.name for v in expand_pt.get_shared()]
    shared: dict[str, np.ndarray] = {}
    for var in [*logp_pt.get_shared(), *expand_pt.get_shared()]:
        if var.name in shared:
            continue
        shared[var.name] = np.array(var.get_value(), order="C", copy=True)
    names, slices, shapes = shape_info

    def make_logp() -> Any:
        def logp(x: np.ndarray, **data: np.ndarray) -> tuple[float, np.ndarray]:
            value, grad = logp_jit(x, *[data[n] for n in logp_names])
            return float(value), np.asarray(grad, dtype="float64", order="C")

        return logp

    def make_expand(_seed1: int, _seed2: int, _chain: int) -> Any:
        def expand(x: np.ndarray, **data: np.ndarray) -> dict[str, np.ndarray]:
            (joined,) = expand_jit(x, *[data[n] for n in expand_names])
            return {
                name: np.asarray(joined[sl], dtype="float64", order="C").reshape(shape)
                for name, sl, shape in zip(names, slices, shapes, strict=True)
            }

        return expand

    dims, coords = _prepare_dims_and_coords(model, shape_info, reparameterized)
    return from_pyfunc(
        ndim=n_dim,
        make_logp_fn=make_logp,
        make_expand_fn=make_expand,
        make_initial_point_fn=initial_point_fn,
        expanded_dtypes=[np.dtype("float64")] * len(names),
        expanded_shapes=[tuple(s) for s in shapes],
        expanded_names=list(names),
        shared_data=shared,
        dims=dims,
        coords=coords,
        reparameterized_names=reparameterized,
    )

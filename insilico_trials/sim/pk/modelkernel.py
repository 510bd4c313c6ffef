"""Compile a model file to machine code once, and solve whole populations with it.

The validated expressions of a :class:`~insilico_trials.spec.modelfile.UserModel` are
translated (from their syntax tree, never by evaluating text) into a numba function
``rhs(x, p, rate, dx)``; a fixed solver template is appended and the module is written to a
cache folder named by the SHA-256 of the generated source, so a model is compiled once per
machine (numba's own on-disk cache) and reloaded in a fraction of a second afterwards.

Solvers, both written here in numba so that one compiled loop covers all patients of a chunk
(threads over blocks of patients, the GIL released) without a Python call per step:

- ``nonstiff``: Dormand-Prince 5(4) (Hairer, Norsett and Wanner, *Solving ODEs I*, II.5) with
  the standard step-size controller and Hairer's initial step.
- ``stiff``: the linearly implicit Rosenbrock method of MATLAB's ode23s (Shampine and Reichelt,
  SIAM J. Sci. Comput. 18, 1997), L-stable, order 2 with a third-order error estimate, with a
  forward-difference Jacobian.

Why not a library: numbalsoda ships only a source distribution (a C++ build at install);
diffrax needs JAX, whose import and tracing cost seconds per process; scipy's ``solve_ivp``
calls Python per step (``benchmarks/pk_model_file.py`` measures it: thousands of times
slower on a population).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np

from insilico_trials.errors import PKInputError
from insilico_trials.spec.modelfile import UserModel

__all__ = ["ModelKernel", "Stepper", "cache_folder", "kernel_for"]

_FUNCS = {
    "exp": "np.exp",
    "log": "np.log",
    "log10": "np.log10",
    "sqrt": "np.sqrt",
    "tanh": "np.tanh",
    "abs": "abs",
}
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_LOCK = threading.Lock()
_LOADED: dict[str, ModuleType] = {}
_PRIVATE: Path | None = None


def _emit(node: ast.AST) -> str:
    """Python source for a node of an already validated expression; user names get ``v_``."""
    if isinstance(node, ast.Constant):
        return repr(float(node.value))
    if isinstance(node, ast.Name):
        return f"v_{node.id}"
    if isinstance(node, ast.UnaryOp):
        inner = _emit(node.operand)
        if isinstance(node.op, ast.USub):
            return f"(-{inner})"
        if isinstance(node.op, ast.UAdd):
            return inner
        return f"(1.0 if {inner} == 0.0 else 0.0)"  # not
    if isinstance(node, ast.BinOp):
        return f"({_emit(node.left)} {_OPS[type(node.op)]} {_emit(node.right)})"
    if isinstance(node, ast.Compare):
        parts, left = [], node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                values = " or ".join(
                    f"{_emit(left)} == {_emit(e)}"
                    for e in right.elts  # type: ignore[attr-defined]
                )
                parts.append(f"({values})" if isinstance(op, ast.In) else f"(not ({values}))")
            else:
                parts.append(f"({_emit(left)} {_CMP[type(op)]} {_emit(right)})")
            left = right
        return f"(1.0 if ({' and '.join(parts)}) else 0.0)"
    if isinstance(node, ast.BoolOp):
        glue = " and " if isinstance(node.op, ast.And) else " or "
        return f"(1.0 if ({glue.join(f'({_emit(v)} != 0.0)' for v in node.values)}) else 0.0)"
    if isinstance(node, ast.Call):
        name = node.func.id  # type: ignore[attr-defined]
        args = ", ".join(_emit(a) for a in node.args)
        if name in ("min", "max"):
            return f"{name}({args})"
        if name == "ifelse":  # only the branch taken is evaluated
            c, a, b = (_emit(x) for x in node.args)
            return f"({a} if {c} != 0.0 else {b})"
        return f"{_FUNCS[name]}({args})"
    raise TypeError(f"unexpected node {type(node).__name__}")  # validated before


def _names(text: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(text.strip(), mode="eval")) if isinstance(n, ast.Name)}


def _hoist(node: ast.AST, states: frozenset[str], found: dict[str, tuple[str, ast.AST]]) -> ast.AST:
    """Replace each largest subtree free of states (and not a bare name) by a hoisted name.

    Such subtrees (``(CL + Q) / V1``) are constant for a patient between records: computed once
    per parameter vector instead of at every stage of every step (divisions dominate a small
    right-hand side).
    """
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    if names and not names & states and not isinstance(node, ast.Name):
        key = ast.dump(node)
        if key not in found:
            found[key] = (f"_h{len(found)}", node)
        return ast.Name(id=found[key][0], ctx=ast.Load())
    for name, value in ast.iter_fields(node):
        if isinstance(value, ast.AST):
            setattr(node, name, _hoist(value, states, found))
        elif isinstance(value, list):
            setattr(
                node,
                name,
                [_hoist(v, states, found) if isinstance(v, ast.AST) else v for v in value],
            )
    return node


def generate_source(model: UserModel) -> str:
    """The module text: the per-patient constants, the right-hand side, the solver template."""
    # signals change between a simulator's steps: never hoisted, read after the rates
    states = (
        frozenset(model.compartments)
        | frozenset(model.signal_names)
        | frozenset(n for n, _ in model.auxiliary)
    )
    hoisted: dict[str, tuple[str, ast.AST]] = {}
    aux = [
        (name, _hoist(ast.parse(text.strip(), mode="eval").body, states, hoisted))
        for name, text in model.auxiliary
    ]
    bodies = [
        _hoist(ast.parse(text.strip(), mode="eval").body, states, hoisted) for text in model.odes
    ]
    k = len(model.individual_names)
    lines = [
        # the name is a validated identifier; the file's path stays out (it is not code, and
        # the same model in another folder, an archive, must find the same compiled module)
        f"# generated from model file {model.name} (sha256 {model.digest[:16]})",
        "import math",
        "import numpy as np",
        "from numba import njit",
        "",
        f"N = {model.n_cmt}",
        f"K = {k}",
        f"H = {len(hoisted)}",
        "",
        "",
        "@njit(cache=True, error_model='numpy', nogil=True)",
        "def prep(p):",
        "    q = np.empty(K + H)",
        "    for i in range(K):",
        "        q[i] = p[i]",
    ]
    used_p: set[str] = set()
    for _, node in hoisted.values():
        used_p |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    for j, name in enumerate(model.individual_names):
        if name in used_p:
            lines.append(f"    v_{name} = p[{j}]")
    for i, (hname, node) in enumerate(hoisted.values()):
        lines.append(f"    q[K + {i}] = {_emit(node)}  # {hname}")
    lines += [
        "    return q",
        "",
        "",
        "@njit(cache=True, error_model='numpy', nogil=True, inline='always')",
        "def rhs(x, q, rate, dx):",
    ]
    used: set[str] = set()
    for body in bodies + [b for _, b in aux]:
        used |= {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
    for i, c in enumerate(model.compartments):
        if c in used:
            lines.append(f"    v_{c} = x[{i}]")
    for s, name in enumerate(model.signal_names):
        if name in used:
            lines.append(f"    v_{name} = rate[N + {s}]")
    for j, name in enumerate(model.individual_names):
        if name in used:
            lines.append(f"    v_{name} = q[{j}]")
    for i, (hname, _) in enumerate(hoisted.values()):
        if hname in used:
            lines.append(f"    v_{hname} = q[K + {i}]")
    for name, body in aux:
        lines.append(f"    v_{name} = {_emit(body)}")
    for i, body in enumerate(bodies):
        lines.append(f"    dx[{i}] = {_emit(body)} + rate[{i}]")
    return "\n".join(lines) + "\n" + _select(_TEMPLATE, model.solver)


def _select(template: str, solver: str) -> str:
    """The template with only the chosen solver's blocks (numba compiles what is referenced)."""
    out, skip = [], False
    for line in template.splitlines():
        tag = line.strip()
        if tag in ("# <nonstiff>", "# <stiff>"):
            skip = tag != f"# <{solver}>"
            continue
        if tag in ("# </nonstiff>", "# </stiff>"):
            skip = False
            continue
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n"


def cache_folder() -> Path:
    """Where compiled models live: ``$INSILICO_MODEL_CACHE`` or ``~/.cache/insilico-trials``."""
    env = os.environ.get("INSILICO_MODEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "insilico-trials" / "models"


def _load(source: str) -> ModuleType:
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:24]
    with _LOCK:
        mod = _LOADED.get(digest)
        if mod is not None:
            return mod
        folder = cache_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(folder, os.W_OK):
                raise PermissionError(folder)
        except OSError:
            # a private folder of this process (compiled again next time), never a shared one
            # that another user could fill with modules to import
            global _PRIVATE
            if _PRIVATE is None:
                _PRIVATE = Path(tempfile.mkdtemp(prefix="insilico-trials-models-"))
            folder = _PRIVATE
        path = folder / f"model_{digest}.py"
        if not path.is_file() or path.read_text(encoding="utf-8") != source:
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(source)
            os.replace(tmp, path)  # atomic: two processes may compile the same model
        name = f"insilico_trials_model_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _LOADED[digest] = mod
        return mod


class ModelKernel:
    """The compiled functions of one model file."""

    def __init__(self, model: UserModel) -> None:
        self.model = model
        self.source = generate_source(model)
        self._mod = _load(self.source)
        self.method = 0 if model.solver == "nonstiff" else 1

    def rhs(self, p: np.ndarray, x: np.ndarray, rate: np.ndarray) -> np.ndarray:
        """dx/dt for one individual vector ``p``, amounts ``x`` and input rates."""
        dx = np.empty(self.model.n_cmt)
        q = self._mod.prep(np.ascontiguousarray(p, dtype=float))
        self._mod.rhs(np.asarray(x, float), q, np.asarray(rate, float), dx)
        return dx

    def _check_finite(self, individual: np.ndarray, amounts: np.ndarray, who: str) -> None:
        """Name the first individual parameter or amount that is not a finite number."""
        bad = ~np.isfinite(np.atleast_2d(individual))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            name = self.model.individual_names[col]
            value = np.atleast_2d(individual)[row, col]
            raise PKInputError(
                f"model {self.model.name}: {name} is {value} for {who}"
                + (f" {row}" if who == "patient" else "")
                + "; check the expression that computes it and its inputs"
            )
        bad = ~np.isfinite(np.atleast_2d(amounts))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise PKInputError(
                f"model {self.model.name}: the amount in {self.model.compartments[col]} is "
                f"{np.atleast_2d(amounts)[row, col]} for {who}"
                + (f" {row}" if who == "patient" else "")
                + " (an initial amount or a dose that is not finite)"
            )

    def advance(self, p: np.ndarray, x: np.ndarray, dt: float, rate: np.ndarray) -> np.ndarray:
        """Amounts after ``dt`` h from ``x`` under constant input ``rate`` (one individual)."""
        self._check_finite(p, x, "a record")
        y = np.array(x, dtype=float)
        status = self._mod.advance(
            y,
            np.ascontiguousarray(p, dtype=float),
            np.ascontiguousarray(rate, dtype=float),
            float(dt),
            self.model.rtol,
            self.model.atol,
            self.method,
        )
        if status != 0:
            raise PKInputError(
                f"{_failure(self.model, status)} (from amounts {x.tolist()} over {dt:g} h)"
            )
        return y

    def stepper(self, individual: np.ndarray) -> Stepper:
        """A :class:`Stepper` for patients ``individual`` (n, k): constant inputs per step."""
        return Stepper(self, individual)

    def population(
        self,
        individual: np.ndarray,
        points: np.ndarray,
        bolus: np.ndarray,
        rates: np.ndarray,
        times: np.ndarray,
        initial: np.ndarray | None = None,
    ) -> np.ndarray:
        """Amounts of every patient at sorted ``times``.

        ``individual`` (n, k); ``points`` (K,) sorted breakpoints; at ``points[i]`` patient j
        receives ``bolus[j, i]`` (mg per compartment) and the input rates become
        ``rates[j, i]`` (mg/h) until the next breakpoint. An output at a breakpoint is taken
        after its bolus; before the first breakpoint the amounts are ``initial`` (n, n_cmt),
        zeros by default. Returns shape (n, len(times), n_cmt).
        """
        n = individual.shape[0]
        if initial is None:
            initial = np.zeros((n, self.model.n_cmt))
        self._check_finite(individual, initial, "patient")
        out = np.zeros((n, times.size, self.model.n_cmt))
        status = np.zeros(n, dtype=np.int64)
        args = (
            np.ascontiguousarray(individual, dtype=float),
            np.ascontiguousarray(points, dtype=float),
            np.ascontiguousarray(bolus, dtype=float),
            np.ascontiguousarray(rates, dtype=float),
            np.ascontiguousarray(times, dtype=float),
            np.ascontiguousarray(initial, dtype=float),
            out,
            self.model.rtol,
            self.model.atol,
            self.method,
            status,
        )
        threads = min(_threads(), max(1, n // 16))
        if threads == 1:
            self._mod.population(*args, 0, n)
        else:
            # one compiled loop per thread over interleaved blocks of patients (the kernel
            # releases the GIL); each patient's result does not depend on the split
            edges = np.linspace(0, n, 8 * threads + 1).astype(int)
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda k: self._mod.population(*args, edges[k], edges[k + 1]),
                              range(edges.size - 1)))  # fmt: skip
        bad = np.flatnonzero(status)
        if bad.size:
            j = int(bad[0])
            raise PKInputError(f"patient {j}: {_failure(self.model, int(status[j]))}")
        return out


class Stepper:
    """Advance a population step by step under inputs chosen between steps (closed loop).

    A simulator that reacts to the state (a controller reading a sensor) calls :meth:`step`
    once per control interval with each patient's input rates (one per compartment, in the
    model's units per time unit) followed by its signals; the states stay in :attr:`x`
    (n, n_cmt), and each patient's step size carries over, so a call costs one compiled loop
    over the patients and no Python per solver step.
    """

    def __init__(self, kernel: ModelKernel, individual: np.ndarray) -> None:
        self.kernel = kernel
        model = kernel.model
        p = np.ascontiguousarray(np.atleast_2d(individual), dtype=float)
        self.n = p.shape[0]
        self.x = np.ascontiguousarray(model.initial_amounts(p), dtype=float)
        kernel._check_finite(p, self.x, "patient")
        self._q = kernel._mod.prep_all(p)
        self._h = np.zeros(self.n)
        self._status = np.zeros(self.n, dtype=np.int64)
        self.width = model.n_cmt + len(model.signals)

    def step(self, inputs: np.ndarray, dt: float) -> np.ndarray:
        """Advance every patient by ``dt`` with ``inputs`` (n, n_cmt + n_signals); return x."""
        inputs = np.ascontiguousarray(inputs, dtype=float)
        if inputs.shape != (self.n, self.width):
            raise ValueError(f"inputs have shape {inputs.shape}, expected {(self.n, self.width)}")
        model = self.kernel.model
        self.kernel._mod.step_all(
            self._q, self.x, inputs, float(dt), self._h, model.rtol, model.atol,
            self.kernel.method, self._status,
        )  # fmt: skip
        if self._status.any():
            j = int(np.flatnonzero(self._status)[0])
            raise PKInputError(f"patient {j}: {_failure(model, int(self._status[j]))}")
        return self.x


def _threads() -> int:
    """Threads for a population: ``$INSILICO_MODEL_THREADS`` or the CPU count."""
    env = os.environ.get("INSILICO_MODEL_THREADS", "")
    return max(1, int(env)) if env.isdigit() else (os.cpu_count() or 1)


def _failure(model: UserModel, status: int) -> str:
    if status == 1:
        why = "more than 1,000,000 steps in one interval"
        hint = " (a stiff problem? set solver: stiff in the model file)"
        if model.solver == "stiff":
            hint = ""
        return f"ODE solver for model {model.name} failed: {why}{hint}"
    if status == 2:
        return f"ODE solver for model {model.name} failed: the state became NaN or infinite"
    return f"ODE solver for model {model.name} failed: step size underflow"


def kernel_for(model: UserModel) -> ModelKernel:
    """The model's compiled kernel, built on first use and kept on the model."""
    cache = model._compiled
    kernel = cache.get("kernel")
    if kernel is None or kernel.model is not model:
        # (a dataclasses.replace copy shares the cache dict: never reuse another model's kernel,
        # whose ODEs or tolerances may differ; the compiled module itself is cached by source)
        kernel = cache["kernel"] = ModelKernel(model)
    return kernel


# The solver template. Status codes: 0 ok, 1 too many steps, 2 non-finite state, 3 step
# underflow. Times are relative to the start of an interval; the right-hand side is autonomous.
_TEMPLATE = """

MAX_STEPS = 1000000


@njit(cache=True, error_model='numpy', nogil=True, inline='always')
def _wnorm(e, y0, y1, rtol, atol):
    s = 0.0
    for i in range(N):
        sc = atol + rtol * max(abs(y0[i]), abs(y1[i]))
        s += (e[i] / sc) ** 2
    return math.sqrt(s / N)


@njit(cache=True, error_model='numpy', nogil=True)
def _initial_step(x, p, rate, f0, y1, f1, t_end, order, rtol, atol):
    d0 = 0.0
    d1 = 0.0
    for i in range(N):
        sc = atol + rtol * abs(x[i])
        d0 += (x[i] / sc) ** 2
        d1 += (f0[i] / sc) ** 2
    d0 = math.sqrt(d0 / N)
    d1 = math.sqrt(d1 / N)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, t_end)
    for i in range(N):
        y1[i] = x[i] + h0 * f0[i]
    rhs(y1, p, rate, f1)
    d2 = 0.0
    for i in range(N):
        sc = atol + rtol * abs(x[i])
        d2 += ((f1[i] - f0[i]) / sc) ** 2
    d2 = math.sqrt(d2 / N) / h0
    m = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if m <= 1e-15 else (0.01 / m) ** (1.0 / (order + 1))
    return min(100.0 * h0, h1, t_end)


# <nonstiff>
@njit(cache=True, error_model='numpy', nogil=True)
def _dopri(x, p, rate, t_end, h, rtol, atol, times, t0, q0, q1, out, j, w):
    # Integrates x over [0, t_end] in place; outputs q0..q1-1 (at times[q] - t0, in
    # (0, t_end]) are written to out[j, q] by Hairer's dense output (dopri5.f, contd5).
    k1 = w[0]
    k2 = w[1]
    k3 = w[2]
    k4 = w[3]
    k5 = w[4]
    k6 = w[5]
    k7 = w[6]
    y = w[7]
    e = w[8]
    r5 = w[9]
    rhs(x, p, rate, k1)
    still = True
    for i in range(N):
        if k1[i] != 0.0:
            still = False
    if still:  # an equilibrium of an autonomous system stays one
        for q in range(q0, q1):
            for i in range(N):
                out[j, q, i] = x[i]
        return h, 0
    if h <= 0.0:
        h = _initial_step(x, p, rate, k1, y, k2, t_end, 4, rtol, atol)
    t = 0.0
    q = q0
    facmax = 10.0
    for _ in range(MAX_STEPS):
        if t >= t_end:
            return h, 0
        last = False
        hs = h
        if t + hs >= t_end * (1.0 - 1e-15):
            hs = t_end - t
            last = True
        for i in range(N):
            y[i] = x[i] + hs * (0.2 * k1[i])
        rhs(y, p, rate, k2)
        for i in range(N):
            y[i] = x[i] + hs * (3.0 / 40.0 * k1[i] + 9.0 / 40.0 * k2[i])
        rhs(y, p, rate, k3)
        for i in range(N):
            y[i] = x[i] + hs * (44.0 / 45.0 * k1[i] - 56.0 / 15.0 * k2[i] + 32.0 / 9.0 * k3[i])
        rhs(y, p, rate, k4)
        for i in range(N):
            y[i] = x[i] + hs * (
                19372.0 / 6561.0 * k1[i] - 25360.0 / 2187.0 * k2[i]
                + 64448.0 / 6561.0 * k3[i] - 212.0 / 729.0 * k4[i]
            )
        rhs(y, p, rate, k5)
        for i in range(N):
            y[i] = x[i] + hs * (
                9017.0 / 3168.0 * k1[i] - 355.0 / 33.0 * k2[i] + 46732.0 / 5247.0 * k3[i]
                + 49.0 / 176.0 * k4[i] - 5103.0 / 18656.0 * k5[i]
            )
        rhs(y, p, rate, k6)
        for i in range(N):
            y[i] = x[i] + hs * (
                35.0 / 384.0 * k1[i] + 500.0 / 1113.0 * k3[i] + 125.0 / 192.0 * k4[i]
                - 2187.0 / 6784.0 * k5[i] + 11.0 / 84.0 * k6[i]
            )
        rhs(y, p, rate, k7)
        for i in range(N):
            e[i] = hs * (
                71.0 / 57600.0 * k1[i] - 71.0 / 16695.0 * k3[i] + 71.0 / 1920.0 * k4[i]
                - 17253.0 / 339200.0 * k5[i] + 22.0 / 525.0 * k6[i] - 1.0 / 40.0 * k7[i]
            )
        err = _wnorm(e, x, y, rtol, atol)
        if not math.isfinite(err):
            if hs < 1e-14 * max(1.0, t_end):
                return h, 2
            h = 0.2 * hs
            facmax = 1.0
            continue
        if err <= 1.0:
            t_new = t_end if last else t + hs
            if q < q1 and times[q] - t0 <= t_new:
                for i in range(N):
                    r5[i] = hs * (
                        -12715105075.0 / 11282082432.0 * k1[i]
                        + 87487479700.0 / 32700410799.0 * k3[i]
                        - 10690763975.0 / 1880347072.0 * k4[i]
                        + 701980252875.0 / 199316789632.0 * k5[i]
                        - 1453857185.0 / 822651844.0 * k6[i]
                        + 69997945.0 / 29380423.0 * k7[i]
                    )
                while q < q1 and times[q] - t0 <= t_new:
                    th = (times[q] - t0 - t) / hs
                    if th >= 1.0 or last and times[q] - t0 >= t_end:
                        for i in range(N):
                            out[j, q, i] = y[i]
                    else:
                        th1 = 1.0 - th
                        for i in range(N):
                            dy = y[i] - x[i]
                            b = hs * k1[i] - dy
                            c = dy - hs * k7[i] - b
                            out[j, q, i] = x[i] + th * (dy + th1 * (b + th * (c + th1 * r5[i])))
                    q += 1
            t = t_new
            for i in range(N):
                x[i] = y[i]
                k1[i] = k7[i]
            fac = 10.0 if err == 0.0 else min(facmax, max(0.2, 0.9 * err ** -0.2))
            if not last or fac < 1.0:
                h = hs * fac
            facmax = 10.0
        else:
            h = hs * max(0.2, 0.9 * err ** -0.2)
            facmax = 1.0
            if h < 1e-14 * max(1.0, t_end):
                return h, 3
    return h, 1


# </nonstiff>
# <stiff>
@njit(cache=True, error_model='numpy', nogil=True)
def _solve(a, b):
    # Gaussian elimination with partial pivoting; a is overwritten, b becomes the solution
    n = b.size
    for c in range(n):
        piv = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[piv, c]):
                piv = r
        if piv != c:
            for k in range(n):
                a[c, k], a[piv, k] = a[piv, k], a[c, k]
            b[c], b[piv] = b[piv], b[c]
        for r in range(c + 1, n):
            m = a[r, c] / a[c, c]
            for k in range(c, n):
                a[r, k] -= m * a[c, k]
            b[r] -= m * b[c]
    for c in range(n - 1, -1, -1):
        s = b[c]
        for k in range(c + 1, n):
            s -= a[c, k] * b[k]
        b[c] = s / a[c, c]


@njit(cache=True, error_model='numpy', nogil=True)
def _rosenbrock(x, p, rate, t_end, h, rtol, atol):
    d = 1.0 / (2.0 + math.sqrt(2.0))
    e32 = 6.0 + math.sqrt(2.0)
    f0 = np.empty(N)
    f1 = np.empty(N)
    f2 = np.empty(N)
    k1 = np.empty(N)
    k2 = np.empty(N)
    k3 = np.empty(N)
    y = np.empty(N)
    e = np.empty(N)
    jac = np.empty((N, N))
    w = np.empty((N, N))
    rhs(x, p, rate, f0)
    still = True
    for i in range(N):
        if f0[i] != 0.0:
            still = False
    if still:
        return h, 0
    if h <= 0.0:
        h = _initial_step(x, p, rate, f0, y, f1, t_end, 2, rtol, atol)
    t = 0.0
    fresh = True
    for _ in range(MAX_STEPS):
        if t >= t_end:
            return h, 0
        if not fresh:
            rhs(x, p, rate, f0)
        fresh = False
        # forward-difference Jacobian
        for c in range(N):
            dlt = math.sqrt(2.2e-16) * max(abs(x[c]), atol / max(rtol, 1e-14), 1e-8)
            for i in range(N):
                y[i] = x[i]
            y[c] += dlt
            rhs(y, p, rate, f1)
            for i in range(N):
                jac[i, c] = (f1[i] - f0[i]) / dlt
        while True:
            last = False
            hs = h
            if t + hs >= t_end * (1.0 - 1e-15):
                hs = t_end - t
                last = True
            for i in range(N):
                for c in range(N):
                    w[i, c] = -hs * d * jac[i, c]
                w[i, i] += 1.0
            a = w.copy()
            for i in range(N):
                k1[i] = f0[i]
            _solve(a, k1)
            for i in range(N):
                y[i] = x[i] + 0.5 * hs * k1[i]
            rhs(y, p, rate, f1)
            a = w.copy()
            for i in range(N):
                k2[i] = f1[i] - k1[i]
            _solve(a, k2)
            for i in range(N):
                k2[i] += k1[i]
                y[i] = x[i] + hs * k2[i]
            rhs(y, p, rate, f2)
            a = w.copy()
            for i in range(N):
                k3[i] = f2[i] - e32 * (k2[i] - f1[i]) - 2.0 * (k1[i] - f0[i])
            _solve(a, k3)
            for i in range(N):
                e[i] = hs / 6.0 * (k1[i] - 2.0 * k2[i] + k3[i])
            err = _wnorm(e, x, y, rtol, atol)
            if math.isfinite(err) and err <= 1.0:
                t = t_end if last else t + hs
                for i in range(N):
                    x[i] = y[i]
                fac = 5.0 if err == 0.0 else min(5.0, max(0.2, 0.8 * err ** (-1.0 / 3.0)))
                if not last or fac < 1.0:
                    h = hs * fac
                break
            h = hs * (0.5 if not math.isfinite(err) else max(0.2, 0.8 * err ** (-1.0 / 3.0)))
            if h < 1e-14 * max(1.0, t_end):
                return h, 3
    return h, 1


# </stiff>
@njit(cache=True, error_model='numpy', nogil=True)
def _finite(x):
    for i in range(N):
        if not math.isfinite(x[i]):
            return False
    return True


@njit(cache=True, error_model='numpy', nogil=True)
def _segment(x, p, rate, t_end, h, rtol, atol, times, t0, q0, q1, out, j, w, method):
    # x over [0, t_end]; outputs q0..q1-1 lie in [0, t_end] relative to t0
    q = q0
    while q < q1 and times[q] - t0 <= 0.0:
        for i in range(N):
            out[j, q, i] = x[i]
        q += 1
    if t_end <= 0.0:
        return h, 0
    # <nonstiff>
    h, status = _dopri(x, p, rate, t_end, h, rtol, atol, times, t0, q, q1, out, j, w)
    # </nonstiff>
    # <stiff>
    tcur = 0.0
    status = 0
    while q < q1 and status == 0:
        dt = times[q] - t0 - tcur
        if dt > 0.0:
            h, status = _rosenbrock(x, p, rate, dt, h, rtol, atol)
        tcur = times[q] - t0
        for i in range(N):
            out[j, q, i] = x[i]
        q += 1
    if status == 0 and t_end > tcur:
        h, status = _rosenbrock(x, p, rate, t_end - tcur, h, rtol, atol)
    # </stiff>
    if status == 0 and not _finite(x):
        return h, 2
    return h, status


@njit(cache=True, error_model='numpy', nogil=True)
def advance(x, p, rate, dt, rtol, atol, method):
    p = prep(p)
    w = np.empty((10, N))
    none = np.empty(0)
    sink = np.empty((1, 0, N))
    h, status = _segment(x, p, rate, dt, 0.0, rtol, atol, none, 0.0, 0, 0, sink, 0, w, method)
    return status


@njit(cache=True, error_model='numpy', nogil=True)
def _one(j, P, points, bolus, rates, times, init, out, rtol, atol, method):
    nk = points.size
    m = times.size
    w = np.empty((10, N))
    x = init[j].copy()
    ti = 0
    while ti < m and times[ti] < points[0]:
        for c in range(N):
            out[j, ti, c] = x[c]
        ti += 1
    h = 0.0
    q = prep(P[j])
    for i in range(points.size):
        if ti >= m:
            break  # nothing left to output
        for c in range(N):
            if bolus[j, i, c] != 0.0:
                h = 0.0  # a jump in the state: choose a fresh initial step
            x[c] += bolus[j, i, c]
        t1 = points[i + 1] if i + 1 < nk else -1.0
        q1 = ti
        while q1 < m and (t1 < 0.0 or times[q1] < t1):
            q1 += 1
        if t1 < 0.0:
            span = times[m - 1] - points[i] if q1 > ti else 0.0
        else:
            span = t1 - points[i]
        h, status = _segment(
            x, q, rates[j, i], span, h, rtol, atol, times, points[i], ti, q1, out, j, w,
            method,
        )
        if status != 0:
            return status
        ti = q1
    return 0


@njit(cache=True, error_model='numpy', nogil=True)
def population(P, points, bolus, rates, times, init, out, rtol, atol, method, status, lo, hi):
    # patients lo..hi-1; releases the GIL, so threads share a population
    for j in range(lo, hi):
        status[j] = _one(j, P, points, bolus, rates, times, init, out, rtol, atol, method)


@njit(cache=True, error_model='numpy', nogil=True)
def prep_all(P):
    Q = np.empty((P.shape[0], K + H))
    for j in range(P.shape[0]):
        Q[j] = prep(P[j])
    return Q


@njit(cache=True, error_model='numpy', nogil=True)
def step_all(Q, X, inputs, dt, hs, rtol, atol, method, status):
    # every patient j with status 0 advances X[j] by dt under constant inputs[j] (rates per
    # compartment, then signals); hs[j] carries its step size from one call to the next
    w = np.empty((10, N))
    none = np.empty(0)
    sink = np.empty((1, 0, N))
    for j in range(X.shape[0]):
        if status[j] != 0:
            continue
        h, st = _segment(
            X[j], Q[j], inputs[j], dt, hs[j], rtol, atol, none, 0.0, 0, 0, sink, 0, w, method
        )
        hs[j] = h
        status[j] = st
"""

"""Where the work of a run goes: an injected executor, serial by default.

A command (``run_trial``, ``design_trial``, ``apply_cut``) is written once, as a *body* that
submits plain functions and waits for their results. The executor decides where they run:

- :class:`Serial` (the default) calls each function at once, in this process: no services, no
  start-up, the reference behaviour;
- :class:`insilico_trials.adapters.prefect_dask.PrefectDask` runs the body as a Prefect flow and
  each submission as a Prefect task on a Dask cluster, with a task cache keyed by ``key``.

Every number is a function of the submitted arguments only (random streams are keyed by what
they belong to), so both give identical results.

Examples
--------
>>> def body(session):
...     futures = [session.submit(pow, 2, k, key=f"pow-{k}", label="power") for k in range(4)]
...     return sorted(f.result() for f in session.as_completed(futures))
>>> Serial().run("powers", body)
[1, 2, 4, 8]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# What the simulation tasks import: a cluster's workers may load it before the first task.
WARM = (
    "insilico_trials.sim.trial", "insilico_trials.sim.cohort", "insilico_trials.sim.pk",
    "insilico_trials.sim.tumour", "insilico_trials.sim.endpoints", "insilico_trials.io.spool",
)  # fmt: skip
# What a model fit imports (about 6 s of CPU per process on the 2-core machine): a cluster
# loads it on one worker only, and runs the ``model=True`` calls there.
MODEL_WARM = ("pymc", "nutpie", "insilico_trials.infer.outcomes")

__all__ = ["Done", "Executor", "Future", "Serial", "Session"]

T = TypeVar("T")


class Future(Protocol):
    """A submitted call: its result, and whether it was taken from a cache."""

    def result(self) -> Any: ...

    @property
    def cached(self) -> bool: ...


class Session(Protocol):
    """What a body may do while its executor runs it."""

    @property
    def run_id(self) -> str:
        """The orchestrator's id of this run (a Prefect flow-run id); empty when serial."""
        ...

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        key: str,
        label: str,
        retries: int = 0,
        model: bool = False,
    ) -> Future:
        """Call ``fn(*args)``; ``key`` names what it computes (the cache key), ``label`` the
        kind of work (a task name), ``retries`` how often a lost call may be repeated;
        ``model``: the call fits a PyMC model (a cluster runs it where PyMC is loaded)."""
        ...

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        """The futures in the order they finish."""
        ...


class Executor(Protocol):
    """Runs a body (``body(session) -> T``) under the name ``name``."""

    def run(self, name: str, body: Callable[[Session], T], *, warm: tuple[str, ...] = ()) -> T:
        """``warm`` names modules the workers may import before the first task."""
        ...


@dataclass(frozen=True)
class Done:
    """A call that has finished in this process."""

    value: Any
    cached: bool = False

    def result(self) -> Any:
        return self.value


class _SerialSession:
    run_id = ""

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        key: str,
        label: str,
        retries: int = 0,
        model: bool = False,
    ) -> Done:
        return Done(fn(*args))

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        return iter(list(futures))


@dataclass(frozen=True)
class Serial:
    """Every call at once, in this process, in submission order."""

    def run(self, name: str, body: Callable[[Session], T], *, warm: tuple[str, ...] = ()) -> T:
        return body(_SerialSession())

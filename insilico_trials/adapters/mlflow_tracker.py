"""Experiment tracking: the one module that imports mlflow.

Embedded default: a SQLite store ``.insilico/mlflow.db`` and an artifact folder
``.insilico/mlartifacts`` under the working directory, no server. ``MLFLOW_TRACKING_URI``
points it at a real tracking server instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from insilico_trials.errors import RunFailure

__all__ = [
    "MlflowTracker",
    "TrackingError",
    "default_tracking_uri",
    "flatten",
]


class TrackingError(RunFailure):
    """The tracking store cannot be reached or written."""


def default_tracking_uri(workdir: Path) -> tuple[str, str]:
    """``(tracking_uri, artifact_root)``: the environment's, or the embedded SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    home = workdir / ".insilico"
    if uri:
        return uri, ""
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(home / 'mlflow.db').resolve()}", (home / "mlartifacts").resolve().as_uri()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested protocol sections to MLflow params: ``arms.0.regimen.dose`` -> ``"200"``."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{name}.{i}."))
        else:
            out[name] = str(value)[:6000]
    return out


class MlflowTracker:
    """MLflow run lifecycle for one trial run (and nested runs for data-cut updates)."""

    def __init__(self, workdir: Path, *, parent_run_id: str | None = None) -> None:
        # MLflow prints "View run ... at: URL" for a server; the CLI prints its own lines.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.workdir = workdir
        self.uri, self.artifact_root = default_tracking_uri(workdir)
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self._client: Any = None
        self._starting: Any = None
        self._error: BaseException | None = None
        self._ended = False

    def start_in_background(
        self,
        experiment: str,
        *,
        run_name: str,
        tags: Mapping[str, str],
        after: Any = None,
    ) -> None:
        """:meth:`check` and :meth:`start` in a thread, while the command does its work
        (importing MLflow and opening its store cost about 6 s of CPU on the 2-core machine),
        once ``after`` (a ``threading.Event``, if given) is set. A server that does not answer
        is found here, at once, before any work; any other failure is raised by :meth:`wait`
        (every other method waits first, and sets ``after``)."""
        import threading

        self.reach_server()
        self._after = after

        def target() -> None:
            try:
                if after is not None:
                    after.wait()
                self.check()
                self.start(experiment, run_name=run_name, tags=tags)
            except BaseException as exc:  # re-raised in the waiting thread
                self._error = exc

        self._starting = threading.Thread(target=target, name="insilico-tracking", daemon=True)
        self._starting.start()

    def wait(self) -> None:
        """Wait for a background start; raise what it raised."""
        if getattr(self, "_after", None) is not None:
            self._after.set()
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def reach_server(self) -> None:
        """A tracking server (http) must answer its health check; a local store needs none."""
        if self.uri.startswith(("http://", "https://")):
            # MLflow's client retries an unreachable server for minutes: ask it once, briefly.
            import urllib.error
            import urllib.request

            try:
                with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=10):
                    pass
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise TrackingError(
                    f"MLflow tracking store {self.uri} cannot be reached "
                    f"({getattr(exc, 'reason', exc)}); nothing was run. Start that server, or "
                    "unset MLFLOW_TRACKING_URI to use the embedded SQLite store."
                ) from None

    def check(self) -> None:
        """Reach the store before any work starts, so a bad URI fails fast and clearly."""
        from mlflow.tracking import MlflowClient

        self.reach_server()
        # An explicit client only: mlflow.set_tracking_uri() would also export
        # MLFLOW_TRACKING_URI to this process, and the next run would land in this store.
        try:
            self._client = MlflowClient(tracking_uri=self.uri)
            self._client.search_experiments(max_results=1)
        except Exception as exc:  # mlflow raises many types for an unreachable store
            raise TrackingError(
                f"MLflow tracking store {self.uri} cannot be reached: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Set MLFLOW_TRACKING_URI to a "
                "running server, or unset it to use the embedded SQLite store."
            ) from exc

    def start(self, experiment: str, *, run_name: str, tags: Mapping[str, str]) -> str:
        if self._client is None:
            self.check()
        client = self._client
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            kwargs = (
                {"artifact_location": f"{self.artifact_root}/{experiment}"}
                if self.artifact_root
                else {}
            )
            exp_id = client.create_experiment(experiment, **kwargs)
        else:
            exp_id = exp.experiment_id
        all_tags = dict(tags)
        if self.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.wait()
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self.wait()
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k[:250], float(v), now, 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), 500):
            self._client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.wait()
        for key, value in sorted(tags.items()):
            self._client.set_tag(self.run_id, key, str(value))

    def recorded(self, run_id: str) -> dict[str, Any]:
        """What the store recorded of a run and its updates: ``manifest_sha256`` (the run's
        tag) and ``updates`` ({number: manifest SHA-256} of its nested update runs).

        Raises
        ------
        TrackingError
            When the store has no such run.
        """
        if self._client is None:
            self.check()
        try:
            run = self._client.get_run(run_id)
        except Exception as exc:  # mlflow raises its own types for an unknown run
            raise TrackingError(
                f"the tracking store {self.uri} has no run {run_id!r} ({type(exc).__name__})"
            ) from None
        children = self._client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
            max_results=10_000,
        )
        updates = {}
        for child in children:
            number = child.data.tags.get("insilico.update")
            if number is not None and child.info.status == "FINISHED":
                updates[int(number)] = child.data.tags.get("insilico.update_manifest_sha256")
        return {
            "manifest_sha256": run.data.tags.get("insilico.manifest_sha256"),
            "updates": updates,
        }

    def log_artifacts(self, folder: Path, *, artifact_path: str | None = None) -> None:
        self.wait()
        self._client.log_artifacts(self.run_id, str(folder), artifact_path=artifact_path)

    def log_artifact(self, path: Path, *, artifact_path: str | None = None) -> None:
        self.wait()
        self._client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def end(self, *, status: str = "FINISHED") -> None:
        """End the run with ``status``; a second call does nothing."""
        if getattr(self, "_after", None) is not None:
            self._after.set()
        if self._starting is not None:
            self._starting.join()  # a start that failed has nothing to end
            self._starting = None
        if self._ended:
            return
        self._ended = True
        if self.run_id:
            self._client.set_terminated(self.run_id, status=status)

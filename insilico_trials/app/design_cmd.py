"""``insilico-trials design PROTOCOL --replicates R``: operating characteristics of a design.

Validates the protocol (and its ``design`` section against the rest) before any work; exit 2
with every problem as ``file:line: field.path: message (got VALUE)`` and nothing written. Then
builds the plan, runs the Prefect/Dask design flow with a progress bar per batch, and writes
``reports/<trial_id>/design-<timestamp>/`` atomically: ``oc.csv`` (one row per borrowing method
and scenario, every OC with its MCSE), ``calibration.csv``, ``oc.json`` (both tables, the plan
and provenance) and ``oc.md`` (the table for the report). Metrics go to MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from insilico_trials.adapters import interrupts
from insilico_trials.adapters.prefect_dask import embedded_services
from insilico_trials.errors import InputError, RunFailure
from insilico_trials.io.archive import atomic_write_text, staged_directory
from insilico_trials.run.design import design_trial
from insilico_trials.spec.protocol import ProtocolError, TrialProtocol, issues_at, load_protocol

__all__ = ["execute_design", "oc_markdown"]

MAX_SIMULATED_TRIALS = 100_000_000  # replicates x scenarios of one design


def _say(msg: str) -> None:
    print(msg, flush=True)


def _validate(protocol_path: Path) -> TrialProtocol:
    """The protocol; every cross-section rule is checked at load, so ``validate`` and
    ``design`` agree, and a design only needs the section to exist (ProtocolError if not)."""
    protocol = load_protocol(protocol_path)
    if protocol.design is None:
        raise ProtocolError(
            issues_at(protocol_path, [(("design",), None, "the protocol has no design section")])
        )
    return protocol


def _fmt(v: float, se: float) -> str:
    return f"{v:.4f} ± {se:.4f}"


def oc_markdown(oc: pd.DataFrame, calibration: pd.DataFrame | None, n_looks: int) -> str:
    """The OC table (and calibration) as Markdown, each figure as ``value ± MCSE``."""
    head = ["method", "scenario", "null", "drift", "P(success)", "E[N]", "N 5/50/95 %"]
    head += [f"stop eff/fut look {j + 1}" for j in range(n_looks - 1)]
    head += ["bias", "RMSE", "coverage 95 %"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in oc.iterrows():
        cells = [
            r["method"],
            r["scenario"],
            "type I" if r["null"] else "power",
            f"{r['drift']:+.3g}",
            _fmt(r["p_success"], r["p_success_mcse"]),
            f"{r['expected_n']:.1f} ± {r['expected_n_mcse']:.1f}",
            f"{r['n_q05']:.0f}/{r['n_q50']:.0f}/{r['n_q95']:.0f}",
        ]
        for j in range(1, n_looks):
            cells.append(
                f"{r[f'p_stop_eff_look{j}']:.3f} ± {r[f'p_stop_eff_look{j}_mcse']:.3f} / "
                f"{r[f'p_stop_fut_look{j}']:.3f} ± {r[f'p_stop_fut_look{j}_mcse']:.3f}"
            )
        cells += [
            _fmt(r["bias"], r["bias_mcse"]),
            _fmt(r["rmse"], r["rmse_mcse"]),
            _fmt(r["coverage95"], r["coverage95_mcse"]),
        ]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    if calibration is not None and len(calibration):
        out += [
            "",
            "Calibration of the final success threshold (type I error target in the "
            "calibration scenario; power at that threshold):",
            "",
            "| method | threshold ± se | type I ± MCSE | scenario | P(success) ± MCSE | "
            "± threshold search | ± total |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, r in calibration.iterrows():
            out.append(
                f"| {r['method']} | {r['threshold']:.5f} ± {r['threshold_se']:.5f} | "
                f"{_fmt(r['type1'], r['type1_mcse'])} | {r['scenario']} | "
                f"{_fmt(r['power'], r['power_mcse'])} | {r['power_se_threshold']:.4f} | "
                f"{r['power_se_total']:.4f} |"
            )
    return "\n".join(out) + "\n"


def _metrics(oc: pd.DataFrame, calibration: pd.DataFrame | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    keep = ("p_success", "expected_n", "bias", "rmse", "coverage95")
    for _, r in oc.iterrows():
        for k in keep:
            for suffix in ("", "_mcse"):
                v = float(r[k + suffix])
                if math.isfinite(v):
                    metrics[f"{r['method']}.{r['scenario']}.{k}{suffix}"] = v
    if calibration is not None:
        for _, r in calibration.iterrows():
            metrics[f"{r['method']}.calibrated_threshold"] = float(r["threshold"])
            metrics[f"{r['method']}.calibrated_threshold_se"] = float(r["threshold_se"])
            metrics[f"{r['method']}.{r['scenario']}.p_success_at_calibrated"] = float(r["power"])
    return metrics


def _write_design(
    final: Path, protocol: Any, plan: Any, oc: Any, cal: Any, table: str, outcome: Any,
    tracker: Any, started: dt.datetime, *, replicates: int, workers: int | None,
    dask_address: str | None, virtual: Any,
) -> None:  # fmt: skip
    """Write the design folder atomically (staged, then renamed into place)."""
    spec = protocol.design
    with staged_directory(final) as stage:
        atomic_write_text(stage / "oc.csv", oc.to_csv(index=False))
        if cal is not None:
            atomic_write_text(stage / "calibration.csv", cal.to_csv(index=False))
        atomic_write_text(stage / "oc.md", table)
        doc = {
            "trial_id": protocol.trial_id,
            "protocol_sha256": protocol.sha256(),
            "seed": protocol.seed,
            "replicates": replicates,
            "batch_size": spec.batch_size,
            "design": spec.model_dump(mode="json"),
            "looks": [lk.__dict__ for lk in plan.looks],
            "methods": list(plan.methods),
            # the prior of every method, as the run's analysis and update will use it
            "virtual_priors": {m: vp.to_json() for m, vp in plan.virtual_priors.items()},
            "virtual_arms": virtual.to_json(),
            "success_threshold": plan.success,
            "operating_characteristics": json.loads(oc.to_json(orient="records")),
            "calibration": None if cal is None else json.loads(cal.to_json(orient="records")),
            "prefect_flow_run_id": outcome.run_id,
            "mlflow_run_id": tracker.run_id or "",
            "started_utc": started.isoformat(timespec="seconds"),
            "ended_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "execution": {"workers": workers, "dask_address": dask_address or "LocalCluster"},
        }
        atomic_write_text(
            stage / "oc.json", json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
        )


def execute_design(
    protocol_path: Path,
    *,
    replicates: int,
    workers: int | None,
    dask_address: str | None,
    reports: Path,
) -> Path:
    """``insilico-trials design``: returns the folder of the design's results.

    Raises
    ------
    InsilicoError
        Bad input, an unwritable folder, an unreachable service, a failed write; nothing is
        written in any of these cases.
    """
    from insilico_trials.adapters.mlflow_tracker import flatten
    from insilico_trials.app.commands import (
        _timing_table,
        add_flow_timings,
        reach_tracker,
        require_dask,
        require_prefect_api,
        require_workers,
        require_writable,
    )

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    protocol_path = Path(protocol_path)
    if replicates < 1:
        raise InputError(
            f"--replicates: must be >= 1, got {replicates}", actual=replicates, expected=">= 1"
        )
    require_workers(workers, dask_address)
    require_dask(dask_address)
    protocol = _validate(protocol_path)
    simulated = replicates * len(protocol.design.scenarios)
    if simulated > MAX_SIMULATED_TRIALS:
        raise InputError(
            f"--replicates: {replicates} replicates x {len(protocol.design.scenarios)} scenarios "
            f"= {simulated:,} simulated trials; at most {MAX_SIMULATED_TRIALS:,} (the MCSE of a "
            "rate at 10^7 replicates is below 2e-4 already)",
            actual=replicates, expected=f"<= {MAX_SIMULATED_TRIALS // len(protocol.design.scenarios):,}",
        )  # fmt: skip
    require_writable(reports / protocol.trial_id, "design")
    from insilico_trials.infer import design

    _say(f"protocol {protocol_path}: {protocol.trial_id} (sha256 {protocol.sha256()[:12]})")
    from insilico_trials.run.virtual import simulate_virtual_arms, virtual_patients

    t = time.perf_counter()
    require_prefect_api()  # an unreachable server fails here, before any simulation
    timings["reach Prefect API"] = time.perf_counter() - t
    t = time.perf_counter()
    sc = protocol.synthetic_control
    _say(
        f"virtual arms: {sc.virtual_replicates} replicate control arms of "
        f"{virtual_patients(protocol)} patients, simulated as run simulates them"
    )
    virtual = simulate_virtual_arms(protocol)
    timings["virtual arms (simulation)"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = design.compile_design(protocol, virtual=virtual)
    spec = protocol.design
    for m, vp in plan.virtual_priors.items():
        _say(
            f"  prior {m}: ESS {vp.prior_ess:.1f} ({vp.ess_method}; moment "
            f"{vp.ess['moment']:.1f}, Morita {vp.ess['morita']:.1f})"
            + (f", capped at {vp.cap:g} from {vp.uncapped_ess:.1f}" if vp.cap_factor < 1 else "")
        )
    timings["plan (MAP priors, decision tables)"] = time.perf_counter() - t
    _say(
        f"design: {plan.endpoint}, {len(plan.looks)} looks at "
        + ", ".join(f"{lk.n_control}+{lk.n_treatment}" for lk in plan.looks)
        + f" patients; methods {', '.join(plan.methods)}; {len(plan.scenarios)} scenarios"
    )
    t = time.perf_counter()
    require_prefect_api()
    with embedded_services(
        cluster=True, workers=workers, dask_address=dask_address,
        warm=("insilico_trials.infer.design",),
    ):  # fmt: skip
        tracker = reach_tracker()
        started = dt.datetime.now(dt.UTC)
        run_name = f"design-{started:%Y%m%dT%H%M%S}Z-{protocol.sha256()[:8]}"
        final = reports / protocol.trial_id / run_name
        tracker.start(
            protocol.trial_id,
            run_name=run_name,
            tags={
                "insilico.trial_id": protocol.trial_id,
                "insilico.protocol_sha256": protocol.sha256(),
                "insilico.kind": "design",
            },
        )
        timings["tracking (MLflow)"] = time.perf_counter() - t
        status = "FAILED"
        try:
            t = time.perf_counter()
            from insilico_trials.adapters.prefect_dask import PrefectDask, quiet_prefect

            quiet_prefect()
            timings["import prefect"] = time.perf_counter() - t
            t = time.perf_counter()
            outcome = design_trial(
                plan,
                replicates=replicates,
                batch_size=spec.batch_size,
                executor=PrefectDask(workers=workers, dask_address=dask_address),
                progress=_say,
            )
            add_flow_timings(timings, time.perf_counter() - t, outcome.timings)
            t = time.perf_counter()
            oc = design.operating_characteristics(plan, outcome.results)
            cal = None
            if spec.calibration is not None and any(plan.is_null(s) for s in plan.scenarios):
                c = spec.calibration
                cal = design.calibrate(
                    plan,
                    outcome.results,
                    target=c.target,
                    scenario=c.scenario,
                    bootstrap=c.bootstrap,
                )
            timings["summarise and calibrate"] = time.perf_counter() - t
            t = time.perf_counter()
            table = oc_markdown(oc, cal, len(plan.looks))
            try:
                _write_design(
                    final, protocol, plan, oc, cal, table, outcome, tracker, started,
                    replicates=replicates, workers=workers, dask_address=dask_address,
                    virtual=virtual,
                )  # fmt: skip
            except OSError as exc:
                raise RunFailure(
                    f"cannot write the design folder {final}: {exc.strerror or exc}"
                    + (f" ({exc.filename})" if exc.filename else "")
                    + "; nothing was written and earlier results are untouched",
                    where=str(final),
                ) from None
            timings["write report"] = time.perf_counter() - t
            t = time.perf_counter()
            tracker.log_params(flatten({"design": spec.model_dump(mode="json")}))
            tracker.log_metrics(_metrics(oc, cal))
            tracker.log_artifacts(final, artifact_path="design")
            timings["tracking (MLflow)"] += time.perf_counter() - t
            status = "FINISHED"
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) or interrupts.seen():
                status = "KILLED"
            raise
        finally:
            tracker.end(status=status)
        _say(table)
        _say(_timing_table(timings, time.perf_counter() - t_all))
        _say(f"report: {final}")
        _say(f"mlflow run: {tracker.run_id} ({tracker.uri})")
        return final

"""The run report: one self-contained HTML file built from an archive's files alone.

Figures are PNGs embedded as data URIs; there is no script and no external request, so the file
opens offline and renders the same anywhere. ``render_report(archive, meta)`` reads only the
archive (and the provenance ``meta`` that the manifest holds), so ``insilico-trials report``
rebuilds the same report from a copied archive.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from insilico_trials.report import plots_tumour
from insilico_trials.sim.cohort import baseline_table

__all__ = ["chromium_flags", "render_pdf", "render_report"]

_TEMPLATES = Path(__file__).with_name("templates")
_WATERFALL_MAX = 500


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    # Fixed metadata: matplotlib would otherwise stamp its version and the time into the PNG.
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _exposure_figure(profiles: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for arm, grp in profiles.groupby("arm", sort=False):
        t = grp["time_h"].to_numpy() / 24.0
        if float(grp["p95"].max()) <= 0:
            continue
        (line,) = ax.plot(t, grp["p50"], label=f"{arm} median")
        ax.fill_between(
            t, grp["p05"], grp["p95"], alpha=0.25, color=line.get_color(), label=f"{arm} 90% PI"
        )
    ax.set_xlabel("time (days)")
    ax.set_ylabel("concentration (mg/L)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _posterior_figure(
    draws: pd.DataFrame, columns: list[str], quantity: str, delta: float
) -> Figure:
    fig = Figure(figsize=(7, 3.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, col in zip(axes, columns, strict=True):
        vals = draws[col].to_numpy(dtype=float)
        lo, hi = np.quantile(vals, [0.005, 0.995])
        ax.hist(vals[(vals >= lo) & (vals <= hi)], bins=50, density=True, alpha=0.7)
        if col == quantity:
            ax.axvline(delta, color="k", ls="--", lw=1, label=f"delta = {delta:g}")
            ax.legend(fontsize=8)
        ax.set_xlabel(col.replace("_", " "))
        ax.set_yticks([])
    axes[0].set_ylabel("posterior density")
    return fig


def _table(frame: pd.DataFrame, *, floatfmt: str = "{:.3g}") -> Markup:
    """An HTML table whose cells pandas escapes (``escape=True``): markup, never code."""
    return Markup(
        frame.to_html(
            index=False, border=0, classes="tbl", float_format=lambda v: floatfmt.format(v),
            na_rep="", escape=True,
        )
    )  # fmt: skip


def _baseline(protocol: Any, cohort: pd.DataFrame, summary: dict[str, Any]) -> tuple[str, str]:
    """Baseline table (``cohort.baseline_table``) with the target population beside the arms."""
    from insilico_trials.sim.cohort import Cohort, population_draw
    from insilico_trials.spec.population import Target, TargetCovariate

    pop = protocol.population
    covs = tuple(pop.covariates)
    categorical = tuple(n for n, c in pop.covariates.items() if c.distribution == "categorical")
    units = {n: c.unit for n, c in pop.covariates.items() if getattr(c, "unit", None)}
    draw = population_draw(pop, seed=protocol.seed)
    cohorts = []
    for arm, grp in cohort.groupby("arm", sort=False):
        table = grp.reset_index(drop=True)
        cohorts.append(
            Cohort(table=table, arm=str(arm), replicate=0, seed=protocol.seed,
                   screened=int(summary["screening"].get(arm, {}).get("screened", len(table))),
                   draw=draw, uncertainty=False, covariates=covs, categorical=categorical,
                   units=units)
        )  # fmt: skip
    if pop.target is not None:
        target, note = pop.target, f"the calibration target '{pop.target.name}' of the protocol"
    else:
        tc = {}
        for n, c in pop.covariates.items():
            if c.distribution == "categorical" and c.categories:
                tc[n] = TargetCovariate(frequencies=dict(c.categories))
            elif c.distribution != "categorical" and c.mean is not None and c.sd is not None:
                tc[n] = TargetCovariate(mean=c.mean, sd=c.sd)
        target = Target(name="protocol population", covariates=tc)
        note = (
            "the population the protocol declares (its covariate distributions before the "
            "eligibility criteria; the protocol names no external target population)"
        )
    frame = baseline_table(cohorts, target)
    frame = frame.rename(columns={"target": f"target: {target.name}"})
    frame["under_represented"] = frame["under_represented"].map({True: "yes", False: ""})
    return _table(frame), note


def _spider_figures(sld: pd.DataFrame, endpoints: pd.DataFrame) -> list[tuple[str, Figure]]:
    out = []
    for arm, grp in sld.groupby("arm", sort=False):
        days = np.sort(grp["visit_day"].unique())
        wide = grp.pivot(index="patient", columns="visit_day", values="sld_mm")[days]
        ep = endpoints[endpoints["arm"] == arm].set_index("patient").reindex(wide.index)
        fig = plots_tumour.spider_plot(
            wide.to_numpy(dtype=float), days, best_response=ep["best_response"].to_numpy(),
            title=f"Change in tumour size from baseline: {arm}",
        )  # fmt: skip
        out.append((str(arm), fig))
    return out


def _sensitivity_figure(sens: dict[str, Any], quantity: str) -> Figure:
    res = sens["outputs"][quantity]
    names = [p["name"] for p in sens["parameters"]]
    x = np.arange(len(names))
    fig = Figure(figsize=(7, 3.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(x - 0.18, res["S1"], 0.36, yerr=res["S1_conf"], label="first order (S1)", capsize=3)
    ax.bar(x + 0.18, res["ST"], 0.36, yerr=res["ST_conf"], label="total (ST)", capsize=3)
    ax.set_xticks(x, names)
    ax.set_ylabel("Sobol index")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    return fig


def _updates(archive: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((archive / "updates").glob("*/update.json")):
        rows.append(json.loads(path.read_text(encoding="utf-8")))
    return sorted(rows, key=lambda r: int(r.get("cut", 0)))


def _updates_figure(updates: list[dict[str, Any]]) -> Figure:
    cuts = [int(u["cut"]) for u in updates]
    mean = np.array([float(u["posterior_mean"]) for u in updates])
    ci = np.array([u["posterior_ci"] for u in updates], dtype=float)
    fig = Figure(figsize=(7, 3.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.errorbar(cuts, mean, yerr=[mean - ci[:, 0], ci[:, 1] - mean], fmt="o-", capsize=4,
                label="control-arm posterior mean, 95% interval")  # fmt: skip
    ax2 = ax.twinx()
    ax2.bar(cuts, [float(u.get("borrowed_virtual") or 0) for u in updates], alpha=0.2,
            color="C2", label="virtual patients borrowed")  # fmt: skip
    ax2.set_ylabel("virtual patients borrowed")
    ax.set_xticks(cuts)
    ax.set_xlabel("data cut")
    ax.set_ylabel("control-arm parameter")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _verification(archive: Path) -> dict[str, Any] | None:
    """The test results archived with the run (never the checkout's, which change)."""
    from insilico_trials.report.verification import ARCHIVED, read_test_results

    return read_test_results(archive / ARCHIVED)


def _fmt_num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt_days(v: Any) -> str:
    """A median time in days; NaN (fewer than half had the event) is "not reached"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "not reached"
    return f"{_fmt_num(v)} days"


def render_report(archive: Path, meta: dict[str, Any]) -> str:
    """Render the HTML report of an archive folder; ``meta`` is the manifest's provenance.

    Reads only the archive's files, the code-verification part included (the test results
    recorded at build time are archived with the run as ``verification/junit.xml``).
    Optional archive files (``tumour_sld.parquet``, ``sensitivity.json``, ``updates/*/update.json``,
    ``oc.csv``) add their figures and tables when present; the section says so when absent.
    """
    from insilico_trials.spec.protocol import load_protocol

    archive = Path(archive)
    summary = json.loads((archive / "summary.json").read_text(encoding="utf-8"))
    control = json.loads((archive / "synthetic_control.json").read_text(encoding="utf-8"))
    protocol_text = (archive / "protocol.yaml").read_text(encoding="utf-8")
    protocol = load_protocol(archive / "protocol.yaml")
    cohort = pd.read_parquet(archive / "cohort.parquet")
    endpoints = pd.read_parquet(archive / "endpoints.parquet")
    profiles = pd.read_parquet(archive / "profiles.parquet")
    draws = pd.read_parquet(archive / "posterior.parquet")
    sld_path = archive / "tumour_sld.parquet"
    sld = pd.read_parquet(sld_path) if sld_path.exists() else None
    sens_path = archive / "sensitivity.json"
    sens = json.loads(sens_path.read_text(encoding="utf-8")) if sens_path.exists() else None
    all_updates = _updates(archive)
    # twin-only updates (a cut with longitudinal data only) do not refit the control arm
    updates = [u for u in all_updates if u.get("posterior_mean") is not None]
    from insilico_trials.report.twins import twin_section

    twins = twin_section(archive, all_updates)
    procova_path = archive / "procova.json"
    procova = (
        json.loads(procova_path.read_text(encoding="utf-8")) if procova_path.exists() else None
    )
    oc_files = sorted(archive.rglob("oc.csv"))

    figures: list[dict[str, str]] = []

    def add(section: str, fig: Figure, caption: str) -> None:
        figures.append({"section": section, "src": _png(fig), "caption": caption})

    glucose = protocol.disease.is_glucose
    has_profiles = not glucose and bool(len(profiles)) and float(profiles["p95"].max()) > 0
    exposure = pd.read_parquet(archive / "exposure.parquet")
    exposure_summary = (
        exposure.drop(columns=["patient"]).groupby("arm", sort=False).mean(numeric_only=True)
    ).reset_index()
    if has_profiles:
        add(
            "exposure",
            _exposure_figure(profiles),
            "Plasma concentration over the first two weeks of dosing: median (line) and 90% "
            "prediction interval (5th-95th percentile, shaded) of the virtual patients in each "
            "treated arm (the first 1,000 of a larger arm). Untreated arms have no "
            "concentration and are not drawn.",
        )
    glucose_tables = None
    if glucose:
        from insilico_trials.report import plots_glucose

        agp = pd.read_parquet(archive / "glucose_agp.parquet")
        for arm in agp["arm"].unique():
            add(
                "glucose",
                plots_glucose.agp_plot(agp, str(arm)),
                f"Ambulatory glucose profile, arm {arm}: the CGM readings every 15 minutes "
                "after the run-in of every patient (the first 1,000 of a larger arm), pooled "
                "by time of day; median (line), "
                "25th-75th and 5th-95th percentiles (bands); dashed lines at 54, 70, 180 and "
                "250 mg/dL; shaded: the target range 70-180 mg/dL.",
            )
        glucose_tables = {
            "metrics": _table(plots_glucose.metrics_table(endpoints)),
            "baseline": _table(plots_glucose.glucose_baseline(cohort)),
        }
    if sld is not None:
        for arm, fig in _spider_figures(sld, endpoints):
            add(
                "tumour",
                fig,
                f"Spider plot, arm {arm}: percentage change of the model's (true, before "
                "measurement error) sum of longest diameters from baseline at each visit, one "
                "line per virtual patient, coloured by confirmed best response. Dashed lines: "
                "+20% (progression) and -30% (response).",
            )
    has_bpc = "best_pct_change" in endpoints
    for arm, grp in endpoints.groupby("arm", sort=False):
        if not has_bpc:
            break
        # One bar per patient stops being readable (and fast) past a few hundred; patient
        # indices are already in random order, so the first ones are a random sample.
        shown = grp.iloc[:_WATERFALL_MAX]
        sample = (
            "" if len(grp) <= _WATERFALL_MAX else f" (the first {_WATERFALL_MAX} of {len(grp)})"
        )
        add(
            "tumour",
            plots_tumour.waterfall_plot(
                shown["best_pct_change"].to_numpy(dtype=float),
                best_response=shown["best_response"].to_numpy(),
                title=f"Best percent change in SLD: {arm}",
            ),
            f"Waterfall plot, arm {arm}: best percentage change from baseline in the sum of "
            f"longest diameters, one bar per virtual patient{sample}, sorted, coloured by best "
            "response. Dashed lines: +20% (progression) and -30% (response).",
        )
    for tcol, ecol, label in (
        ("pfs_days", "pfs_event", "Progression-free survival"),
        ("os_days", "os_event", "Overall survival"),
    ):
        if tcol in endpoints and ecol in endpoints:
            arms = {
                str(a): (g[tcol].to_numpy(dtype=float), g[ecol].to_numpy().astype(bool))
                for a, g in endpoints.groupby("arm", sort=False)
            }
            add(
                "tumour",
                plots_tumour.kaplan_meier_plot(
                    arms, title=label, ylabel=f"{label.lower()} probability"
                ),
                f"Kaplan-Meier estimate of {label.lower()} per arm with pointwise 95% bands; "
                "ticks mark censored patients (who count until censoring).",
            )
    quantity, delta = summary["quantity"], float(summary["delta"])
    post_cols = [c for c in ("p_c", "p_t", "mu_c", "mu_t") if c in draws]
    if quantity in draws:
        post_cols.append(quantity)
    if post_cols:
        add(
            "outcome",
            _posterior_figure(draws, post_cols, quantity, delta),
            "Posterior densities of "
            + ", ".join(c.replace("_", " ") for c in post_cols)
            + f" (histograms of the MCMC draws). The decision uses the posterior probability "
            f"that the {quantity.replace('_', ' ')} is on the favourable side of delta = {delta:g}.",
        )
    if updates:
        add(
            "control",
            _updates_figure(updates),
            "History of the synthetic control arm over real data cuts: the control-arm posterior "
            "mean with its 95% interval (points, left axis) and the number of virtual patients "
            "borrowed (bars, right axis) at each cut.",
        )
    if twins is not None:
        if twins["figures"]["fits"] is not None:
            add(
                "twins",
                twins["figures"]["fits"],
                f"Digital twins after data cut {twins['cut']}: each real patient's measured PSA "
                "(dots), his twin's fitted PSA (posterior median, line; 90% credible band, "
                "shaded), the twins fitted at earlier cuts (dashed), and the PSA values that "
                "arrived with this cut against the previous cut's twins' 90% posterior "
                "predictive interval (red bars). Symmetric-log scale (linear below 0.1 ng/mL).",
            )
        if twins["figures"]["km"] is not None:
            add(
                "twins",
                twins["figures"]["km"],
                "Freedom from PSA progression (the product's nadir rule): the twins of the "
                "patients who were not on the control regimen, simulated under it "
                "(patient-matched synthetic control; posterior-median model time, censored at "
                "each patient's real follow-up), against the real patients on the control "
                "regimen (measured PSA, censored at the last record). Kaplan-Meier estimates.",
            )
    sens_table = ""
    uq_rows: list[dict[str, Any]] = []
    if sens is not None:
        contrast = next((k for k, v in sens["outputs"].items() if "S1" in v), None)
        if contrast is not None:
            add(
                "credibility",
                _sensitivity_figure(sens, contrast),
                f"Sobol sensitivity indices of the {contrast.replace('_', ' ')} (treatment minus "
                "control) to the uncertain typical values: first-order (share of variance from the "
                "parameter alone) and total (including interactions), with 95% bootstrap "
                "intervals as error bars.",
            )
            res = sens["outputs"][contrast]
            sens_table = _table(
                pd.DataFrame(
                    {
                        "parameter": [p["name"] for p in sens["parameters"]],
                        "typical": [p["typical"] for p in sens["parameters"]],
                        "range sampled (95%)": [
                            f"{p['low']:.3g} - {p['high']:.3g}" for p in sens["parameters"]
                        ],
                        "relative SE": [
                            f"{p['rse']:.2f}" + (" (assumed)" if p["rse_assumed"] else "")
                            for p in sens["parameters"]
                        ],
                        "S1": res["S1"],
                        "S1 95% ±": res["S1_conf"],
                        "ST": res["ST"],
                        "ST 95% ±": res["ST_conf"],
                    }
                )
            )
        for k, v in sens["outputs"].items():
            uq_rows.append(
                {"quantity": k.replace("_", " "), "mean": v["mean"], "SD": v["sd"],
                 "5th percentile": v["p05"], "95th percentile": v["p95"]}
            )  # fmt: skip
    oc_tables = [
        {"name": str(p.relative_to(archive)), "html": _table(pd.read_csv(p))} for p in oc_files
    ]
    if glucose_tables is not None:
        baseline_html = glucose_tables["baseline"]
        target_note = (
            "not declared: a glucose trial's patients are sampled around simglucose's virtual "
            "patients (glucose.patients), whose groups and settings are shown"
        )
    else:
        baseline_html, target_note = _baseline(protocol, cohort, summary)

    # Virtual share of the control arm: all virtual until a real data cut borrows from it;
    # taken from the latest cut with a decision (else the latest control refit).
    n_virtual = int(control.get("n", 0))
    if updates:
        from insilico_trials.run.update import control_composition

        last = next((u for u in reversed(updates) if u.get("effects")), updates[-1])
        comp = control_composition(last)
        virtual = {"share": comp["virtual_share"], "borrowed": comp["virtual_borrowed"],
                   "n_real": comp["real"], "unit": comp["unit"], "cut": last["cut"]}  # fmt: skip
    else:
        virtual = {"share": 1.0, "borrowed": float(n_virtual), "n_real": 0, "cut": None}

    latest = _latest_decision(protocol, updates, virtual)
    qrow = next((r for r in summary["posterior"] if r.get("param") == quantity), None)
    arms = []
    for arm in protocol.arms:
        reg = arm.regimen
        arms.append(
            {"name": arm.name, "n": arm.n, "control": arm.control,
             "regimen": "none (untreated)" if reg is None else
             f"{reg.drug} {reg.dose:g} {reg.unit} {reg.route} every {reg.interval_h:g} h, "
             f"{reg.n_doses} doses",
             "controller": _controller_text(arm.controller)}
        )  # fmt: skip
    verification = _verification(archive)
    # Every value is escaped; only the tables built above (cells escaped by pandas) are Markup.
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=True)
    env.filters["num"] = _fmt_num
    env.filters["days"] = _fmt_days
    tmpl = env.get_template("report.html.j2")
    posterior = pd.DataFrame(summary["posterior"])
    return tmpl.render(
        title=f"In-silico trial report: {meta.get('trial_id', '')}",
        protocol=protocol,
        meta=meta,
        summary=summary,
        qrow=qrow,
        control=control,
        prior=control.get("prior"),
        procova=procova,
        virtual_n=n_virtual,
        virtual=virtual,
        arms=arms,
        figures=figures,
        posterior_table=_table(posterior) if not posterior.empty else "",
        baseline_table=baseline_html,
        target_note=target_note,
        protocol_text=protocol_text,
        updates=updates,
        latest=latest,
        twins=twins,
        twin_skill_table=_table(twins["skill"]) if twins else "",
        twin_shared_table=_table(twins["shared"], floatfmt="{:.4g}") if twins else "",
        twin_cf_table=(
            _table(twins["counterfactual"]) if twins and twins["counterfactual"] is not None else ""
        ),
        oc_tables=oc_tables,
        sens=sens,
        sens_table=sens_table,
        uq_table=_table(pd.DataFrame(uq_rows)) if uq_rows else "",
        verification=verification,
        has_spider=sld is not None,
        has_profiles=has_profiles,
        glucose=glucose_tables,
        exposure_table=_table(exposure_summary),
        validation=_validation_rows(archive),
        generated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def _controller_text(c: Any) -> str:
    if c is None:
        return ""
    text = (
        f"{c.kind.replace('_', ' ')}: meal bolus carbs / CR, correction (CGM - "
        f"{c.target_mg_dl:g}) / CF above {c.correct_above_mg_dl:g} mg/dL"
    )
    if c.kind == "decision_support":
        text += (
            f"; basal, CR and CF revised every {c.every_days} days by steps of "
            f"{100 * c.step:g}%, within 1/{c.max_factor:g} to {c.max_factor:g} times the start"
        )
    return text


def _latest_decision(
    protocol: Any, updates: list[dict[str, Any]], virtual: dict[str, Any]
) -> dict[str, Any] | None:
    """The trial's decision as of the archive's latest real data cut: the protocol's analysis
    of the analysed treatment arm's real patients against the hybrid control (``effects`` of
    the last update that has them); None before any such update."""
    with_effects = [u for u in updates if u.get("effects")]
    if not with_effects:
        return None
    last = with_effects[-1]
    treat = protocol.analysis.treatment or protocol.treatment_arms[0].name
    effect = next((e for e in last["effects"] if e["treatment"] == treat), last["effects"][0])
    others = [e for e in last["effects"] if e is not effect]
    return {
        "cut": last["cut"],
        "effect": effect,
        "others": others,
        "reported": effect["probability"] == effect["probability"],
        "virtual": virtual,
        "sign": "<" if effect["direction"] == "less" else ">",
        "look": last.get("look"),
    }


def _validation_rows(archive: Path) -> list[dict[str, Any]]:
    """Reference comparisons archived with the run (``validation.json``): rows with
    ``kind, quantity, simulated, reference, unit, source, note``; empty when it has none.

    Archives made before the reproduction mode carry ``published`` (clinical figures) in
    place of ``reference``; they are shown as such, kind ``clinical (earlier archive)``.
    """
    path = archive / "validation.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text(encoding="utf-8"))
    for r in rows:
        if "reference" not in r:
            r["reference"] = r.get("published")
            r.setdefault("kind", "clinical (earlier archive)")
        sim, ref = r.get("simulated"), r.get("reference")
        # NaN simulated value: e.g. a Kaplan-Meier median not reached by the horizon.
        r["simulated_known"] = isinstance(sim, int | float) and sim == sim
        r["reference_known"] = isinstance(ref, int | float) and ref == ref
        # A clinical figure is not an output of this model: shown, never differenced.
        ok = r["simulated_known"] and r["reference_known"] and "published" not in r
        r["distance"] = sim - ref if ok else None
        both_never = isinstance(sim, float) and isinstance(ref, float) and sim != sim and ref != ref
        if both_never and "published" not in r:
            r["distance"] = 0.0  # not reached on either side: they agree
    return rows


def render_pdf(html_path: Path, pdf_path: Path, *, timeout: float = 120.0) -> Path:
    """Print the HTML report to PDF with headless Chromium (same content, A4).

    Raises ``RuntimeError`` naming what is missing when no Chromium is installed.
    """
    import shutil
    import subprocess
    import tempfile

    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    exe = next((shutil.which(n) for n in _CHROMIUM if shutil.which(n)), None)
    if exe is None:
        raise RuntimeError(
            "PDF needs headless Chromium: install it (Debian: apt-get install -y chromium)"
        )
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="insilico-chromium-") as profile:
        cmd = [exe, *chromium_flags(profile), "--no-pdf-header-footer",
               f"--print-to-pdf={pdf_path}", html_path.as_uri()]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not pdf_path.exists():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return pdf_path


_CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium_flags(profile_dir: str) -> list[str]:
    """Headless Chromium flags that make no network requests of its own."""
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={profile_dir}",
    ]  # fmt: skip

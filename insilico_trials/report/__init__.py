"""The run report: one self-contained HTML file built from an archive's files alone.

Figures are PNGs embedded as data URIs; there is no script and no external request, so the file
opens offline and renders the same anywhere. ``render_report(archive, meta)`` reads only the
archive (and the provenance ``meta`` that the manifest holds), so ``insilico-trials report``
rebuilds the same report from a copied archive.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from matplotlib.figure import Figure

__all__ = ["render_report"]

_TEMPLATES = Path(__file__).with_name("templates")


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


def _waterfall_figure(endpoints: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    offset = 0
    for arm, grp in endpoints.groupby("arm", sort=False):
        vals = np.sort(grp["best_pct_change"].dropna().to_numpy())[::-1]
        ax.bar(np.arange(offset, offset + vals.size), vals, width=1.0, label=str(arm))
        offset += vals.size + 2
    ax.axhline(20, color="k", lw=0.8, ls="--")
    ax.axhline(-30, color="k", lw=0.8, ls=":")
    ax.set_ylabel("best % change in SLD")
    ax.set_xticks([])
    ax.legend(fontsize=8)
    return fig


def _km_figure(endpoints: pd.DataFrame, time_col: str, event_col: str, label: str) -> Figure:
    from scipy.stats import CensoredData, ecdf

    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for arm, grp in endpoints.groupby("arm", sort=False):
        t = grp[time_col].to_numpy(dtype=float) / 30.4375
        e = grp[event_col].to_numpy().astype(bool)
        res = ecdf(CensoredData(uncensored=t[e], right=t[~e]))
        sf = res.sf
        x = np.concatenate([[0.0], sf.quantiles])
        y = np.concatenate([[1.0], sf.probabilities])
        ax.step(x, y, where="post", label=str(arm))
    ax.set_xlabel("time (months)")
    ax.set_ylabel(f"{label} probability")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _posterior_figure(draws: pd.DataFrame, column: str, summary: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(7, 3.0))
    ax = fig.subplots()
    vals = draws[column].to_numpy(dtype=float)
    ax.hist(vals, bins=60, density=True, alpha=0.7)
    ax.axvline(summary["delta"], color="k", ls="--", lw=1, label=f"delta = {summary['delta']}")
    ax.set_xlabel(column)
    ax.set_ylabel("posterior density")
    ax.legend(fontsize=8)
    return fig


def _table(frame: pd.DataFrame, *, floatfmt: str = "{:.3g}") -> str:
    return frame.to_html(
        index=False, border=0, classes="tbl", float_format=lambda v: floatfmt.format(v), na_rep=""
    )


def _baseline(cohort: pd.DataFrame) -> str:
    rows = []
    skip = {"patient", "candidate", "replicate", "weight"}
    for col in cohort.columns:
        if col in skip or col == "arm":
            continue
        series = cohort[col]
        for arm, grp in cohort.groupby("arm", sort=False):
            s = grp[col]
            if pd.api.types.is_numeric_dtype(s) and s.nunique() > 6:
                rows.append(
                    {"variable": col, "arm": arm, "summary": f"{s.mean():.3g} ({s.std():.3g})"}
                )
            else:
                counts = s.value_counts().sort_index()
                text = "; ".join(f"{k}: {v} ({100 * v / len(s):.0f}%)" for k, v in counts.items())
                rows.append({"variable": col, "arm": arm, "summary": text})
        del series
    frame = pd.DataFrame(rows)
    if frame.empty:
        return ""
    wide = frame.pivot(index="variable", columns="arm", values="summary").reset_index()
    return _table(wide)


def render_report(archive: Path, meta: dict[str, Any]) -> str:
    """Render the HTML report of an archive folder; ``meta`` is the manifest's provenance."""
    archive = Path(archive)
    summary = json.loads((archive / "summary.json").read_text(encoding="utf-8"))
    control = json.loads((archive / "synthetic_control.json").read_text(encoding="utf-8"))
    protocol_text = (archive / "protocol.yaml").read_text(encoding="utf-8")
    cohort = pd.read_parquet(archive / "cohort.parquet")
    endpoints = pd.read_parquet(archive / "endpoints.parquet")
    profiles = pd.read_parquet(archive / "profiles.parquet")
    draws = pd.read_parquet(archive / "posterior.parquet")

    figures: list[dict[str, str]] = []

    def add(section: str, fig: Figure, caption: str) -> None:
        figures.append({"section": section, "src": _png(fig), "caption": caption})

    add(
        "exposure",
        _exposure_figure(profiles),
        "Plasma concentration over the first two weeks of dosing: median (line) and 5th-95th "
        "percentile band (shaded) of the virtual patients in each treated arm.",
    )
    if "best_pct_change" in endpoints:
        add(
            "tumour",
            _waterfall_figure(endpoints),
            "Waterfall plot: best percentage change from baseline in the sum of longest "
            "diameters, one bar per virtual patient. Dashed line +20% (progression), dotted -30% (response).",
        )
    for tcol, ecol, label in (
        ("pfs_days", "pfs_event", "Progression-free survival"),
        ("os_days", "os_event", "Overall survival"),
    ):
        if tcol in endpoints and ecol in endpoints:
            add(
                "tumour",
                _km_figure(endpoints, tcol, ecol, label),
                f"Kaplan-Meier estimate of {label.lower()} per arm (censored patients contribute until censoring).",
            )
    quantity, delta = summary["quantity"], float(summary["delta"])
    if quantity in draws:
        add(
            "outcome",
            _posterior_figure(draws, quantity, {"delta": delta}),
            f"Posterior distribution of the {quantity.replace('_', ' ')}; the decision uses the "
            f"posterior probability on the favourable side of delta = {delta}.",
        )

    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html"]))
    tmpl = env.get_template("report.html.j2")
    posterior = pd.DataFrame(summary["posterior"])
    virtual_n = int(control.get("n", 0))
    return tmpl.render(
        title=f"In-silico trial report: {meta.get('trial_id', '')}",
        meta=meta,
        summary=summary,
        control=control,
        virtual_n=virtual_n,
        figures=figures,
        posterior_table=_table(posterior) if not posterior.empty else "",
        baseline_table=_baseline(cohort),
        protocol_text=html.escape(protocol_text),
        endpoint_counts=endpoints.groupby("arm", sort=False).size().to_dict(),
        generated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )

"""Report figures and tables of glucose trials: the ambulatory glucose profile (AGP).

The AGP (Battelino et al., Diabetes Care 2019;42:1593) pools every CGM reading of an arm by time
of day and draws the 5th, 25th, 50th, 75th and 95th percentiles over the 24 hours, with the
target range 70-180 mg/dL marked.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from insilico_trials.sim.glucose import agp_percentiles

__all__ = ["agp_percentiles", "agp_plot", "glucose_baseline", "metrics_table"]


def agp_plot(agp: pd.DataFrame, arm: str) -> Figure:
    """The AGP of one arm."""
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    d = agp[agp["arm"] == arm].sort_values("minute_of_day")
    t = d["minute_of_day"].to_numpy() / 60.0
    ax.axhspan(70, 180, color="#1a9850", alpha=0.08, label="target 70-180 mg/dL")
    ax.fill_between(t, d["p05"], d["p95"], color="#4575b4", alpha=0.18, label="5th-95th")
    ax.fill_between(t, d["p25"], d["p75"], color="#4575b4", alpha=0.38, label="25th-75th")
    ax.plot(t, d["p50"], color="#08306b", lw=1.6, label="median")
    for y in (54, 70, 180, 250):
        ax.axhline(y, color="#888888", lw=0.6, ls="--")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xlabel("time of day (h)")
    ax.set_ylabel("CGM glucose (mg/dL)")
    ax.set_title(f"Ambulatory glucose profile: {arm}")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    return fig


_METRICS = {
    "tir_pct": "time in range 70-180 (%)",
    "tbr70_pct": "time below 70 (%)",
    "tbr54_pct": "time below 54 (%)",
    "tar180_pct": "time above 180 (%)",
    "tar250_pct": "time above 250 (%)",
    "mean_glucose_mg_dl": "mean glucose (mg/dL)",
    "gmi_pct": "GMI (%)",
    "cv_pct": "CV (%)",
}


def metrics_table(endpoints: pd.DataFrame) -> pd.DataFrame:
    """Per arm, mean (SD) of each patient's consensus CGM metrics."""
    rows = []
    for arm, grp in endpoints.groupby("arm", sort=False):
        row = {"arm": arm, "patients": len(grp)}
        for col, label in _METRICS.items():
            v = grp[col].to_numpy(dtype=float)
            row[label] = f"{v.mean():.1f} ({v.std(ddof=1) if len(v) > 1 else 0.0:.1f})"
        rows.append(row)
    return pd.DataFrame(rows)


def glucose_baseline(cohort: pd.DataFrame) -> pd.DataFrame:
    """Per arm, the virtual patients at baseline: source groups, mean (SD) of body weight, age,
    and the starting pump settings."""
    rows = []
    cols = {"BW": "body weight (kg)", "AGE": "age of the source patient (years)",
            "TDI": "total daily insulin that fits (U/day)", "BASAL0": "starting basal (U/h)",
            "CR0": "starting CR (g/U)", "CF0": "starting CF (mg/dL per U)"}  # fmt: skip
    for arm, grp in cohort.groupby("arm", sort=False):
        row = {"arm": arm, "patients": len(grp)}
        groups = grp["source"].str.split("#").str[0].value_counts()
        row["source groups"] = ", ".join(f"{g} {n}" for g, n in groups.items())
        for col, label in cols.items():
            v = grp[col].to_numpy(dtype=float)
            row[label] = f"{v.mean():.1f} ({v.std(ddof=1) if len(v) > 1 else 0.0:.1f})"
        rows.append(row)
    return pd.DataFrame(rows)

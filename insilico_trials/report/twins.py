"""The report's digital-twin section, from the archive's twin updates (``updates/NNN/twins/``).

Figures: per-patient small multiples (data, the latest twins' fit with its 90 % band, each
earlier cut's fitted curve, and the records that arrived with the latest cut against the
previous twins' 90 % predictive interval); Kaplan-Meier curves of the patient-matched
synthetic control and the real control cohort. Tables: forecast skill and fit diagnostics per
cut, shared parameters per cut, and the counterfactual arms per patient.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["twin_section"]


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / "twins" / name
    return pd.read_parquet(path) if path.exists() else None


def _short(patient: str) -> str:
    return str(patient).rsplit("-", 1)[-1]


def _small_multiples(
    curves: list[tuple[int, pd.DataFrame]], forecast: pd.DataFrame | None, unit: str
) -> Figure:
    last_cut, last = curves[-1]
    patients = list(dict.fromkeys(last["patient"]))
    ncol = 6
    nrow = math.ceil(len(patients) / ncol)
    fig = Figure(figsize=(12, 1.9 * nrow))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    earlier = curves[:-1]
    for k, ax in enumerate(axes.ravel()):
        if k >= len(patients):
            ax.set_visible(False)
            continue
        p = patients[k]
        g = last[last["patient"] == p]
        ax.fill_between(g["day"], g["q05"], g["q95"], color="C0", alpha=0.25, lw=0)
        ax.plot(g["day"], g["median"], color="C0", lw=1.2)
        for j, (cut, c) in enumerate(earlier):
            h = c[c["patient"] == p]
            ax.plot(h["day"], h["median"], color=f"C{j + 2}", lw=0.8, ls="--",
                    label=f"twin at cut {cut}" if k == 0 else None)  # fmt: skip
        obs = g.dropna(subset=["value"])
        ax.plot(obs["day"], obs["value"], "k.", ms=3)
        if forecast is not None:
            f = forecast[forecast["patient"] == p]
            if len(f):
                ax.errorbar(f["day"], f["median"], yerr=[f["median"] - f["q05"],
                            f["q95"] - f["median"]], fmt="none", ecolor="C3", lw=0.8,
                            label="forecast 90% (previous cut)" if k == 0 else None)  # fmt: skip
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(_short(p), fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0, 0].plot([], [], color="C0", label=f"twin at cut {last_cut} (median, 90%)")
    axes[0, 0].plot([], [], "k.", label=f"measured {unit}")
    fig.legend(loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.02))
    fig.supxlabel("study day", fontsize=8)
    fig.supylabel(unit, fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _km_figure(km: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for j, (group, g) in enumerate(km.groupby("group", sort=False)):
        ax.step(g["day"], g["survival"], where="post", color=f"C{j}", label=group)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("study day")
    ax.set_ylabel("free of PSA progression")
    ax.legend(fontsize=8)
    return fig


def _interval(row: pd.Series, stem: str) -> str:
    med, lo, hi = (row.get(f"{stem}_{s}") for s in ("median_days", "q05_days", "q95_days"))

    def f(v: Any) -> str:
        return "> horizon" if v is None or not np.isfinite(v) else f"{v:.0f}"

    return f"{f(med)} ({f(lo)} to {f(hi)})"


def twin_section(archive: Path, updates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The twin section's figures (matplotlib) and tables (frames), or None without twins."""
    twin_updates = [u for u in updates if u.get("twins")]
    if not twin_updates:
        return None
    folders = {int(u["cut"]): archive / "updates" / f"{int(u['cut']):03d}" for u in twin_updates}
    cuts = sorted(folders)
    last = folders[cuts[-1]]
    curves = [(c, df) for c in cuts if (df := _read(folders[c], "curves.parquet")) is not None]
    forecast = _read(last, "forecast.parquet")
    km = _read(last, "km.parquet")
    cf = _read(last, "counterfactual.parquet")
    unit = "PSA (ng/mL)"
    skill_rows, shared_rows = [], []
    for u in twin_updates:
        t = u["twins"]
        f = t.get("forecast") or {}
        d = t.get("diagnostics") or {}
        skill_rows.append({
            "cut": u["cut"], "patients": t["n_patients"], "records": t["n_records"],
            "new records forecast": f.get("n_new_records"),
            "inside 50%": f.get("coverage50"), "inside 90%": f.get("coverage90"),
            "mean CRPS (ng/mL)": f.get("crps_mean"),
            "R-hat max": d.get("max_rhat"), "ESS bulk min": d.get("min_ess_bulk"),
            "divergences": d.get("divergences"), "converged": t["converged"],
        })  # fmt: skip
        for q, v in (t.get("shared") or {}).items():
            shared_rows.append({"cut": u["cut"], "parameter": q, **v})
    shared = pd.DataFrame(shared_rows)
    if not shared.empty:
        shared = shared.pivot_table(
            index="parameter", columns="cut", values="median", sort=False
        ).reset_index()
        shared.columns = [str(c) if c == "parameter" else f"cut {c}" for c in shared.columns]
    cf_table = None
    if cf is not None:
        rows = []
        for (p, arm), g in cf.groupby(["patient", "real_arm"], sort=False):
            row: dict[str, Any] = {"patient": _short(p), "real arm": arm}
            for _, r in g.iterrows():
                reg = r["regimen"]
                row[f"TTP on {reg}, days"] = _interval(r, "ttp")
                row[f"drug days on {reg}"] = (
                    f"{r['drug_days_median']:.0f} ({r['drug_days_q05']:.0f} to "
                    f"{r['drug_days_q95']:.0f})"
                )
            rows.append(row)
        cf_table = pd.DataFrame(rows)
    comp = twin_updates[-1]["twins"].get("synthetic_vs_real") or {}
    return {
        "cut": cuts[-1],
        "model": twin_updates[-1]["twins"]["model"],
        "figures": {
            "fits": _small_multiples(curves, forecast, unit) if curves else None,
            "km": _km_figure(km) if km is not None and len(km) else None,
        },
        "skill": pd.DataFrame(skill_rows),
        "shared": shared,
        "counterfactual": cf_table,
        "comparison": comp,
        "last": twin_updates[-1]["twins"],
        "skill_list": [r for r in skill_rows if r["new records forecast"]],
    }

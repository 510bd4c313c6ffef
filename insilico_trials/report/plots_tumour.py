"""Report figures for tumour endpoints: spider, waterfall and Kaplan-Meier plots.

Every function returns a :class:`matplotlib.figure.Figure` built directly (Agg canvas), never
through ``pyplot``, so no global figure state leaks between calls or threads.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from insilico_trials.sim.endpoints import kaplan_meier
from insilico_trials.units import DAYS_PER_MONTH

__all__ = ["kaplan_meier_plot", "spider_plot", "waterfall_plot"]

_RESPONSE_COLOURS = {
    "CR": "#1a9850",
    "PR": "#91cf60",
    "SD": "#fee08b",
    "PD": "#d73027",
    "NE": "#bdbdbd",
}


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def spider_plot(
    sld: np.ndarray,
    visit_days: np.ndarray,
    *,
    best_response: np.ndarray | None = None,
    max_patients: int = 200,
    seed: int = 0,
    title: str = "Change in tumour size from baseline",
) -> Figure:
    """Percent change of SLD from baseline over time, one line per patient.

    Parameters
    ----------
    sld
        SLD in mm, shape ``(n, K)``, column 0 baseline; ``nan`` where not assessed.
    visit_days
        Visit days, shape ``(K,)``; the x axis is in weeks.
    best_response
        Per-patient category (CR/PR/SD/PD/NE) used for colours.
    max_patients
        At most this many lines, a reproducible subsample (``seed``) if there are more.
    """
    y = np.asarray(sld, dtype=float)
    t = np.asarray(visit_days, dtype=float) / 7.0
    idx = np.arange(y.shape[0])
    if idx.size > max_patients:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_patients, replace=False))
    pct = (y[idx] / y[idx, :1] - 1.0) * 100.0
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    cats = None if best_response is None else np.asarray(best_response)[idx]
    for row in range(idx.size):
        colour = "#4575b4" if cats is None else _RESPONSE_COLOURS.get(str(cats[row]), "#4575b4")
        ax.plot(t, pct[row], color=colour, lw=0.8, alpha=0.7)
    ax.axhline(20, ls="--", color="#d73027", lw=0.8)
    ax.axhline(-30, ls="--", color="#1a9850", lw=0.8)
    ax.axhline(0, color="black", lw=0.5)
    if cats is not None:
        for name, colour in _RESPONSE_COLOURS.items():
            if np.any(cats == name):
                ax.plot([], [], color=colour, label=name)
        ax.legend(title="best response", fontsize=8, loc="upper left")
    ax.set_xlabel("weeks from start of treatment")
    ax.set_ylabel("change in SLD from baseline (%)")
    ax.set_title(title)
    return fig


def waterfall_plot(
    best_pct_change: np.ndarray,
    *,
    best_response: np.ndarray | None = None,
    clip_pct: float = 100.0,
    title: str = "Best percent change in SLD",
) -> Figure:
    """Waterfall of best percent change from baseline, sorted from largest to smallest.

    Patients without a post-baseline assessment (``nan``) are left out and counted in the
    title. Bars are clipped at ``clip_pct`` (marked) so one large progression does not hide the
    rest.
    """
    v = np.asarray(best_pct_change, dtype=float)
    keep = ~np.isnan(v)
    order = np.argsort(-v[keep], kind="stable")
    vals = v[keep][order]
    cats = None if best_response is None else np.asarray(best_response)[keep][order]
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    colours = (
        "#4575b4" if cats is None else [_RESPONSE_COLOURS.get(str(c), "#4575b4") for c in cats]
    )
    ax.bar(np.arange(vals.size), np.minimum(vals, clip_pct), width=1.0, color=colours)
    ax.axhline(20, ls="--", color="#d73027", lw=0.8)
    ax.axhline(-30, ls="--", color="#1a9850", lw=0.8)
    ax.set_xlim(-0.5, max(vals.size, 1) - 0.5)
    ax.set_xticks([])
    ax.set_xlabel("patients")
    ax.set_ylabel(f"best change from baseline (%), clipped at {clip_pct:g}%")
    missing = int((~keep).sum())
    ax.set_title(title + (f" ({missing} not assessable)" if missing else ""))
    if cats is not None:
        for name, colour in _RESPONSE_COLOURS.items():
            if np.any(cats == name):
                ax.bar([], [], color=colour, label=name)
        ax.legend(title="best response", fontsize=8)
    return fig


def kaplan_meier_plot(
    arms: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    time_unit: str = "months",
    days_per_unit: float = DAYS_PER_MONTH,
    confidence: bool = True,
    title: str = "Kaplan-Meier estimate",
    ylabel: str = "survival probability",
) -> Figure:
    """Kaplan-Meier curves per arm with pointwise 95% bands and censoring ticks.

    Parameters
    ----------
    arms
        ``{arm name: (time_days, event)}``.
    time_unit, days_per_unit
        x-axis unit and its length in days (default months).
    """
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    for k, (name, (time, event)) in enumerate(arms.items()):
        time = np.asarray(time, dtype=float)
        event = np.asarray(event).astype(bool)
        t, s, lo, hi = kaplan_meier(time, event)
        colour = f"C{k}"
        tt = np.concatenate([[0.0], t]) / days_per_unit
        ax.step(
            tt,
            np.concatenate([[1.0], s]),
            where="post",
            color=colour,
            label=f"{name} (n={time.size})",
        )
        if confidence:
            ax.fill_between(
                tt,
                np.concatenate([[1.0], lo]),
                np.concatenate([[1.0], hi]),
                step="post",
                color=colour,
                alpha=0.15,
                lw=0,
            )
        cens = np.unique(time[~event])
        if cens.size:
            s_at = np.concatenate([[1.0], s])[np.searchsorted(t, cens, side="right")]
            ax.plot(cens / days_per_unit, s_at, "|", color=colour, ms=6)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.set_xlabel(time_unit)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig

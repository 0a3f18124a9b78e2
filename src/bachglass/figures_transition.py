"""Figures of the transition: learning times, their critical fits, w_c(ε) → w_c* and the phase diagram.

docs/science.md §1.8 figures 3 to 6. A fitted line is solid over the widths the fit used (w_c < w ≤ the
widest width in its window) and dashed where it is extrapolated; a missing fit (NaN) draws nothing.
"""

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bachglass.figures_layout import (
    CENSORED,
    DEPTH_LABEL,
    DIVERGED,
    EPS_LABEL,
    INVERSE_TAU_LABEL,
    MARKERS,
    PHASE_COLOURS,
    PHASES,
    SMALL,
    TAU_LABEL,
    W_C_LABEL,
    WIDTH_LABEL,
    bars,
    edge,
    eps_colours,
    eps_handles,
    finite,
    nanmedian,
    panels,
    phase_handles,
    width_ticks,
)

EPS_LEGEND_TITLE = "ε: loss ≤ floor + ε\n(nats/note)"


def _fit_lines(
    ax: Axes, fits: xr.Dataset, depth: int, widths: np.ndarray, tau: np.ndarray, inverse: bool
) -> None:
    """τ = A/(w - w_c) (or 1/τ = (w - w_c)/A) for each ε with a fit; ``tau`` is (width, seed, eps)."""
    eps = fits["eps"].values
    cmap = eps_colours(eps.size)
    for k, e in enumerate(eps):
        fit = fits.sel(depth=depth, eps=e)
        w_c, A = float(fit["w_c"]), float(fit["A"])
        if not finite(w_c, A):
            continue
        top = float(fit["w_fit_max"])
        lo = w_c if inverse else w_c * 1.002  # τ diverges at w_c
        w = np.linspace(lo, max(widths.max(), top), 400)
        y = (w - w_c) / A if inverse else A / (w - w_c)
        inside = w <= top
        ax.plot(w[inside], y[inside], color=cmap(k), lw=1.4)
        ax.plot(w[~inside], y[~inside], color=cmap(k), lw=1, ls="--")


def _tau_points(
    ax: Axes, widths: np.ndarray, tau: np.ndarray, cmap: Colormap, inverse_step: float | None
) -> None:
    """Seeds as faint points, the seed median as a marker; ``tau`` is (width, seed, eps), +inf censored.

    On the τ axis (``inverse_step`` None) censored runs are open triangles at the top edge, one row
    per ε. On the 1/τ axis they sit in rows below 1/τ = 0, under the rows of the w_c marks
    (row height ``inverse_step``): their 1/τ is only known to be below 1/last step, i.e. about 0.
    """
    inverse = inverse_step is not None
    n_eps = tau.shape[-1]
    for k in range(n_eps):
        t, style = tau[..., k], {"color": cmap(k), "marker": MARKERS[k % len(MARKERS)]}
        ok = np.isfinite(t)
        y = 1.0 / t if inverse else t
        ax.plot(np.broadcast_to(widths[:, None], t.shape)[ok], y[ok], ls="none", alpha=0.35, ms=3.5, **style)
        median = nanmedian(t, axis=1)  # +inf when most seeds are censored: no point drawn
        median = np.where(np.isfinite(median), 1.0 / median if inverse else median, np.nan)
        ax.plot(widths, median, ls="none", ms=5.5, **style)
        censored = widths[np.isinf(t).any(axis=1)]
        if inverse:
            y_row = np.full(censored.size, -(n_eps + 1.5 + k) * inverse_step)
            ax.plot(censored, y_row, ls="none", ms=6, marker="v", mfc="none", mec=cmap(k))
        else:
            edge(ax, censored, 0.97 - 0.045 * k, marker="^", mfc="none", mec=cmap(k))
        edge(ax, widths[np.isnan(t).any(axis=1)], 0.97 if inverse else 0.03, marker="x", color="0.3")


def _tau_limits(tau: np.ndarray, last_step: float) -> tuple[float, float]:
    """Shared log-y limits with headroom at the top for the censored markers."""
    finite_tau = tau[np.isfinite(tau) & (tau > 0)]
    if finite_tau.size == 0:
        return 1.0, max(float(last_step), 10.0) * 4
    return float(finite_tau.min()) / 2, float(finite_tau.max()) * 6


def _tau_legend(fig: Figure, eps: np.ndarray, tau: np.ndarray, inverse: bool) -> None:
    """One legend for all panels: ε colours, censored and diverged markers, fit line styles."""
    handles = eps_handles(eps)
    marker = "v" if inverse else "^"
    edge_label = f"{CENSORED}\n(1/τ < 1/last step; bottom rows)" if inverse else CENSORED
    handles.append(Line2D([], [], color="0.3", marker=marker, mfc="none", ls="none", label=edge_label))
    if np.isnan(tau).any():
        handles.append(DIVERGED)
    fit = "(w - w_c)/A" if inverse else "A/(w - w_c)"
    handles.append(Line2D([], [], color="0.3", lw=1.4, label=f"fit {fit}, widths used"))
    handles.append(Line2D([], [], color="0.3", lw=1, ls="--", label="fit, extrapolated"))
    if inverse:
        handles.append(
            Line2D([], [], color="0.3", marker="|", ms=8, label="w_c(ε) and its CI\n(rows below 0)")
        )
    fig.legend(handles=handles, loc="outside right upper", fontsize=SMALL, title=EPS_LEGEND_TITLE)


def learning_times(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Learning time τ(ε) vs width, one panel per depth, one colour and marker per threshold ε.

    Critical slowing down makes τ blow up as w falls to w_c(ε), hence the log y axis; the lines
    are the fits τ = A/(w - w_c). Large markers are the median over seeds, faint points the seeds.
    A run that never reached ε (τ = +inf, right-censored) is an open triangle at the top edge, one
    row per ε; a diverged run (τ = NaN) a cross at the bottom edge.
    """
    depths, widths, eps = study["depth"].values, study["width"].values, study["eps"].values
    tau = study["tau"].transpose("depth", "width", "seed", "eps").values
    fig, axes = panels(depths.size)
    for ax, depth, tau_d in zip(axes[0], depths, tau, strict=True):
        _tau_points(ax, widths, tau_d, eps_colours(eps.size), None)
        _fit_lines(ax, fits, depth, widths, tau_d, inverse=False)
        ax.set(yscale="log", title=f"d = {depth}", xlabel=WIDTH_LABEL)
        if widths.size <= 6:  # few widths: label each; more would crowd the narrow end
            ax.set_xticks(widths, [str(w) for w in widths])
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].set_ylim(*_tau_limits(tau, float(study["step"].values[-1])))
    axes[0, 0].set_ylabel(TAU_LABEL)
    _tau_legend(fig, eps, tau, inverse=False)
    return fig


def _w_c_marks(ax: Axes, fits: xr.Dataset, depth: int, y_step: float) -> None:
    """w_c(ε) with its CI as a horizontal bar just below 1/τ = 0, one row per ε."""
    eps = fits["eps"].values
    cmap = eps_colours(eps.size)
    for k, e in enumerate(eps):
        fit = fits.sel(depth=depth, eps=e)
        w_c, lo, hi = (float(fit[name]) for name in ("w_c", "w_c_lo", "w_c_hi"))
        if finite(w_c, lo, hi):
            y = -(k + 1) * y_step
            ax.errorbar(
                w_c,
                y,
                xerr=[[max(w_c - lo, 0)], [max(hi - w_c, 0)]],
                color=cmap(k),
                marker="|",
                ms=9,
                capsize=3,
                lw=1.4,
            )


def inverse_learning_times(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """1/τ vs width on linear axes: the critical form makes it a straight line with x-intercept w_c(ε).

    Widths up to 2.5 x the largest fitted w_c are shown (far above w_c τ saturates and the line
    bends away). Lines are the fits 1/τ = (w - w_c)/A; below zero each ε's w_c with its bootstrap CI.
    Censored runs (1/τ below 1/last step) are open triangles near the bottom edge.
    """
    depths, widths, eps = study["depth"].values, study["width"].values, study["eps"].values
    tau = study["tau"].transpose("depth", "width", "seed", "eps").values
    w_c = fits["w_c"].values
    w_max = min(widths.max(), 2.5 * np.nanmax(w_c)) if np.isfinite(w_c).any() else widths.max()
    shown = widths <= w_max
    inv = 1.0 / tau[:, shown]
    reached = np.isfinite(inv) & (inv > 0)
    y_max = float(inv[reached].max()) if reached.any() else 1.0
    row = 0.035 * y_max  # height of one row of w_c marks or censored markers below 1/τ = 0
    fig, axes = panels(depths.size)
    for ax, depth, tau_d in zip(axes[0], depths, tau, strict=True):
        _tau_points(ax, widths[shown], tau_d[shown], eps_colours(eps.size), row)
        _fit_lines(ax, fits, depth, widths[shown], tau_d[shown], inverse=True)
        _w_c_marks(ax, fits, depth, row)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set(title=f"d = {depth}", xlabel=WIDTH_LABEL)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_xlim(0, w_max * 1.03)
    axes[0, 0].set_ylim(-row * (2 * eps.size + 2), y_max * 1.1)
    axes[0, 0].set_ylabel(INVERSE_TAU_LABEL)
    axes[0, 0].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _tau_legend(fig, eps, tau, inverse=True)
    return fig


def critical_widths(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """w_c(ε) vs ε per depth with bootstrap CIs, and its linear extrapolation to w_c* at ε = 0.

    The dashed line is w_c* + b ε; the star at ε = 0 is w_c* with its CI, the interpolation
    transition. The grey band spans the widest under- to the narrowest over-parametrized width
    classified from L_inf and t* (fits.phase): the two estimates of the transition should overlap.
    """
    depths, eps = fits["depth"].values, fits["eps"].values
    fig, axes = panels(depths.size)
    x = np.linspace(0, eps.max() * 1.05, 50)
    for ax, depth in zip(axes[0], depths, strict=True):
        fit = fits.sel(depth=depth)
        w_c, lo, hi = (fit[name].values for name in ("w_c", "w_c_lo", "w_c_hi"))
        err = bars(w_c, lo, hi)  # an unbounded interval (replicas without a fit) gets no bar
        ax.errorbar(eps, w_c, yerr=err, color="C0", marker="o", ls="none", capsize=3, label="w_c(ε), CI")
        star, slope = float(fit["w_c_star"]), float(fit["w_c_star_slope"])
        s_lo, s_hi = float(fit["w_c_star_lo"]), float(fit["w_c_star_hi"])
        if finite(star, slope):
            ax.plot(x, star + slope * x, color="C3", ls="--", lw=1.2, label="w_c* + b ε")
            yerr = [[max(star - s_lo, 0)], [max(s_hi - star, 0)]] if finite(s_lo, s_hi) else None
            ax.errorbar(
                0, star, yerr=yerr, color="C3", marker="*", ms=12, capsize=4, label="w_c* (ε → 0), CI"
            )
            ax.set_title(f"d = {depth}: w_c* = {star:.1f} [{s_lo:.1f}, {s_hi:.1f}]", fontsize="medium")
        else:
            ax.set_title(f"d = {depth}: no extrapolation", fontsize="medium")
        under, over = float(fit["w_under_max"]), float(fit["w_over_min"])
        if finite(under, over):
            ax.axhspan(
                under, over, color="0.6", alpha=0.2, lw=0, label="L_inf: widest under to narrowest over"
            )
        ax.set(xlabel=EPS_LABEL)
        ax.set_xlim(-0.05 * eps.max(), eps.max() * 1.08)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel(W_C_LABEL)
    handles, labels = [], []
    for ax in axes[0]:  # union of the panels' entries: a depth may lack a fit
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside right upper", fontsize=SMALL)
    return fig


def phase_diagram(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Draw the (w, d) plane: each grid point marked by its phase (fits.phase), and the boundary w_c*(d).

    w_c*(d) (stars, bootstrap CI as horizontal bars) is the ε → 0 limit of the critical widths;
    the line joins the depths. The paper expects it to fall with depth and to separate the filled
    (under-parametrized) from the open (over-parametrized) points. Each star is labelled with the
    parameters at the transition, N* = N(d, w_c*), and N*/P (P: scored notes of the training set).
    """
    depths, widths = fits["depth"].values, fits["width"].values
    fig = Figure(figsize=(9.0, 1.6 + 0.8 * depths.size), layout="constrained")
    ax = fig.subplots()
    phase = fits["phase"].transpose("depth", "width").values
    for flag, style in PHASES.items():
        d, w = np.nonzero(phase == flag)
        ax.plot(widths[w], depths[d], ls="none", ms=8, color=PHASE_COLOURS[flag], **{**style, "label": None})
    star, lo, hi = (fits[name].values for name in ("w_c_star", "w_c_star_lo", "w_c_star_hi"))
    ok = np.isfinite(star)
    ax.plot(star[ok], depths[ok], color="k", lw=1.2, zorder=3)
    err = [e[ok] for e in bars(star, lo, hi)]
    star_style = {"color": "k", "marker": "*", "ms": 13, "mfc": "gold"}
    ax.errorbar(star[ok], depths[ok], xerr=err, ls="none", capsize=4, zorder=4, **star_style)
    if "n_star" in fits:  # the transition counted in parameters (and per scored training note)
        per_note = (
            fits["n_per_note_star"].values if "n_per_note_star" in fits else np.full(star.shape, np.nan)
        )
        for w, d, n, r in zip(star[ok], depths[ok], fits["n_star"].values[ok], per_note[ok], strict=True):
            text = f"N* = {n:.0f}" + (f", N*/P = {r:.2f}" if np.isfinite(r) else "")
            ax.annotate(text, (w, d), xytext=(0, 10), textcoords="offset points", ha="center", fontsize=SMALL)
    handles = [
        *phase_handles(coloured=True),
        Line2D([], [], label="w_c*(d), CI: phase boundary", **star_style),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=SMALL)
    title = "phase diagram (phases from L_inf and t*; w_c*)"
    ax.set(xscale="log", xlabel=WIDTH_LABEL, ylabel=DEPTH_LABEL, title=title)
    width_ticks(ax, widths)
    ax.set_yticks(depths)
    ax.set_ylim(depths.min() - 0.5, depths.max() + 0.5)
    ax.grid(True, alpha=0.3)
    return fig

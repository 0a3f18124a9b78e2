"""Figures of the loss: the curves with their power-law fits, the fitted alpha and L_inf, and the SGD floor.

docs/science.md §1.8 figures 1, 2 and 9. The fitted curve is L(t) = L_inf + B (t/t_end)^-alpha with t_end the
last step of the run (the ``fits.B`` convention), drawn over the reported fit window only.
"""

import numpy as np
import xarray as xr
from matplotlib import patheffects
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bachglass.figures_layout import (
    DIVERGED,
    LOSS_LABEL,
    PHASES,
    SMALL,
    STEPS_LABEL,
    WIDTH_LABEL,
    depth_colour,
    diverged,
    finite,
    floor_factor,
    nanmax,
    nanmean,
    nanmedian,
    nanmin,
    panels,
    phase_handles,
    width_colourbar,
    width_colours,
    width_ticks,
)
from bachglass.fits import OVER

HALO = [patheffects.withStroke(linewidth=3, foreground="white")]  # a dashed fit stays visible on its data


def fitted_curve(step: np.ndarray, L_inf: float, B: float, alpha: float, t_end: float) -> np.ndarray:
    """L_inf + B (t/t_end)^-alpha at ``step`` (NaN where the fit is missing)."""
    return L_inf + B * (step / t_end) ** -alpha


def _median_fit(
    step: np.ndarray, loss: np.ndarray, fit: xr.Dataset, start: float
) -> tuple[np.ndarray, np.ndarray]:
    """Median over seeds of each seed's fitted curve, on the steps of the fit window.

    ``loss`` is (seed, time); a seed's t_end is its last finite loss. A median of curves, not a
    curve of median parameters: L_inf, B and alpha are correlated, their medians need not fit anything.
    """
    curves = []
    for s, run in enumerate(loss):
        ok = np.flatnonzero(np.isfinite(run))
        p = [float(fit[name].values[s]) for name in ("L_inf", "B", "alpha")]
        if ok.size and finite(*p):
            t_end = step[ok[-1]]
            t = np.where((step >= start) & (step <= t_end), step, np.nan)
            curves.append(fitted_curve(t, *p, t_end))
    if not curves:
        return step[:0], step[:0]
    median = nanmedian(np.asarray(curves), axis=0)
    keep = np.isfinite(median)
    return step[keep], median[keep]


def _loss_panel(ax: Axes, study: xr.Dataset, fits: xr.Dataset, depth: int, widths: np.ndarray) -> None:
    """Seeds thin, median thick, median fitted law dashed, for the given widths of one depth."""
    loss = study["loss"].where(study["step"] > 0, drop=True)
    step = loss["step"].values.astype(np.float64)
    flags = diverged(study)
    all_widths = study["width"].values
    cmap = width_colours(all_widths)
    start = float(fits["window"].values[0])
    for width in widths:
        colour = cmap(int(np.flatnonzero(all_widths == width)[0]))
        runs = loss.sel(depth=depth, width=width).transpose("seed", "time").values
        for seed, curve in enumerate(runs):
            ax.plot(step, curve, color=colour, lw=0.5, alpha=0.4)
            last = np.flatnonzero(np.isfinite(curve))
            if flags.sel(depth=depth, width=width).values[seed] and last.size:
                at = last[-1]  # NaN: its last finite loss; knocked back: where it went above its start
                if "diverged_step" in study:
                    first = int(study["diverged_step"].sel(depth=depth, width=width).values[seed])
                    at = min(at, int(np.searchsorted(step, first))) if first >= 0 else at
                ax.plot(step[at], curve[at], "x", color="0.15", ms=7, mew=1.5)
        ax.plot(step, nanmedian(runs, axis=0), color=colour, lw=1.6, alpha=0.8)
        t, fit = _median_fit(step, runs, fits.sel(depth=depth, width=width), start)
        ax.plot(t, fit, color=colour, lw=1.3, ls=(0, (4, 2)), path_effects=HALO)
    floor = float(study.attrs.get("data_floor", 0.0))
    if floor > 0:
        ax.axhline(floor, color="k", ls="-.", lw=1)
    ax.axvline(start, color="0.5", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", title=f"d = {depth}", xlabel=STEPS_LABEL)
    ax.grid(True, which="major", alpha=0.3)


def _loss_handles(study: xr.Dataset, fits: xr.Dataset, extra: list[Artist]) -> list[Artist]:
    """Legend entries of the line styles shared by the loss figures, then ``extra``."""
    floor = float(study.attrs.get("data_floor", 0.0))
    handles = [
        Line2D([], [], color="0.3", lw=1.6, label="median over seeds (thin: seeds)"),
        Line2D([], [], color="0.3", lw=1.3, ls=(0, (4, 2)), label=r"fit L_inf + B (t/t_end)$^{-\alpha}$"),
        Line2D(
            [], [], color="0.5", ls=":", label=f"fit window start ({int(fits['window'].values[0])} steps)"
        ),
    ]
    if floor > 0:
        handles.append(Line2D([], [], color="k", ls="-.", lw=1, label=f"data floor {floor:.3g}"))
    handles += extra
    if diverged(study).any():
        handles.append(DIVERGED)
    return handles


def loss_curves(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Training loss L(t) vs SGD steps, log-log, one panel per depth and one colour per width.

    The thick line is the median over seeds (robust to one diverged or unlucky seed), thin lines
    the seeds, the dashed line the median of the seeds' fitted power laws over the fit window.
    Step 0 has no place on a log axis and is dropped. The dashed grey line is the data floor, the
    loss of a perfect memoriser. A diverged seed ends in a cross.
    """
    depths, widths = study["depth"].values, study["width"].values
    fig, axes = panels(depths.size)
    for ax, depth in zip(axes[0], depths, strict=True):
        _loss_panel(ax, study, fits, depth, widths)
    axes[0, 0].set_ylabel(LOSS_LABEL)
    axes[0, 0].legend(handles=_loss_handles(study, fits, []), loc="lower left", fontsize=SMALL)
    width_colourbar(fig, axes, widths)
    return fig


def _seed_mean(fits: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Seed mean of a fitted quantity (depth, width) and its error bar.

    The error combines the seed scatter (std over seeds) with the typical curve-fit error in
    quadrature: with two seeds neither alone is an honest spread.
    """
    values = fits[name].transpose("depth", "width", "seed").values
    errors = fits[f"{name}_err"].transpose("depth", "width", "seed").values
    mean = nanmean(values, axis=-1)
    with np.errstate(invalid="ignore"):
        spread = np.sqrt(nanmean((values - mean[..., None]) ** 2, axis=-1) + nanmean(errors**2, axis=-1))
    return mean, spread


def _phase_points(ax: Axes, w: np.ndarray, y: np.ndarray, phase: np.ndarray, colour: str) -> None:
    """Markers by phase (shape and fill) in the depth's colour."""
    for flag, style in PHASES.items():
        pick = (phase == flag) & np.isfinite(y)
        ax.plot(w[pick], y[pick], ls="none", ms=6, color=colour, **{**style, "label": None})


def _floor_lines(ax: Axes, fits: xr.Dataset, bottom: float) -> list[Artist]:
    """Draw the phase levels (dotted, per depth) and the data floor on the L_inf panel; return entries."""
    floor, factor = float(fits.attrs["data_floor"]), floor_factor(fits)
    handles: list[Artist] = []
    for i, depth in enumerate(fits["depth"].values):
        level = factor * float(fits["floor_ref"].sel(depth=depth))
        ax.axhline(level, color=depth_colour(i), ls=":", lw=1.2)
        label = f"{factor:g} x floor_ref, d = {depth}: {level:.3g}"
        handles.append(Line2D([], [], color=depth_colour(i), ls=":", label=label))
    ax.axhline(floor, color="k", ls="-.", lw=1)
    handles.append(Line2D([], [], color="k", ls="-.", lw=1, label=f"data floor {floor:.3g}"))
    label = f"on bottom edge: L_inf < {bottom:.2g} (fit at 0)"
    handles.append(Line2D([], [], color="0.3", marker="o", ls="none", label=label))
    return handles


def power_laws(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Plot the fitted exponent alpha and asymptotic loss L_inf against width, one colour per depth.

    Points are seed means, the marker says the phase (fits.phase), and the depths sit side by side.
    alpha's bars combine the seed scatter and the fit error; L_inf's bars are the range over seeds,
    because its fit error is often larger than L_inf itself (the legend counts how often; fits.nc
    ``L_inf_err`` has each one). L_inf is on a log axis between the data floor and the
    under-parametrized plateaus; a fit whose L_inf is at the lower bound 0 sits on the bottom edge. The
    dotted lines are ``floor_factor`` x max(data floor, SGD floor) of each depth: L_inf above it is
    under-parametrized; at or below it, over-parametrized once every seed's loss has got there (t*).
    """
    depths, widths = fits["depth"].values, fits["width"].values.astype(np.float64)
    fig, axes = panels(2, sharey=False, width=4.4)
    ax_alpha, ax_inf = axes[0]
    floor = float(fits.attrs["data_floor"])
    bottom = floor / 4 if floor > 0 else 1e-4  # below the floor: room for error bars, none for 1e-20 fits
    for i, depth in enumerate(depths):
        colour, phase = depth_colour(i), fits["phase"].sel(depth=depth).values
        x = widths * 10 ** (0.012 * (i - (depths.size - 1) / 2))  # side by side: bars of one depth each
        mean, err = (v[i] for v in _seed_mean(fits, "alpha"))
        ax_alpha.errorbar(x, mean, yerr=err, color=colour, lw=1, capsize=2, label=f"d = {depth}")
        _phase_points(ax_alpha, x, mean, phase, colour)
        mean = np.maximum(_seed_mean(fits, "L_inf")[0][i], bottom)  # L_inf = 0: on the bottom edge
        values = np.maximum(fits["L_inf"].sel(depth=depth).transpose("width", "seed").values, bottom)
        low, high = nanmin(values, axis=1), nanmax(values, axis=1)
        ax_inf.errorbar(x, mean, yerr=[mean - low, high - mean], color=colour, lw=1, capsize=2)
        _phase_points(ax_inf, x, mean, phase, colour)
    extra = _floor_lines(ax_inf, fits, bottom)
    loose = fits["L_inf_err"] > fits["L_inf"]
    fitted = int(np.isfinite(fits["L_inf"]).sum())
    label = f"L_inf bars: seed range (fit error > L_inf in {int(loose.sum())} of {fitted} fits)"
    extra.append(Line2D([], [], color="0.3", lw=1, marker="|", ms=8, label=label))
    ax_inf.set_ylim(bottom=bottom * 0.9)
    ax_alpha.set(ylabel=r"power-law exponent $\alpha$", title=r"exponent $\alpha$ of L - L_inf")
    ax_inf.set(yscale="log", ylabel="asymptotic loss L_inf (nats/note)", title="asymptotic loss L_inf")
    for ax in axes[0]:
        ax.set(xscale="log", xlabel=WIDTH_LABEL)
        width_ticks(ax, widths)
        ax.grid(True, alpha=0.3)
    depth_handles = ax_alpha.get_legend_handles_labels()[0]
    fig.legend(handles=depth_handles + phase_handles() + extra, fontsize=SMALL, loc="outside right upper")
    return fig


def _t_star_marks(ax: Axes, study: xr.Dataset, fits: xr.Dataset, depth: int, widths: np.ndarray) -> None:
    """Mark each seed's t* on its loss curve and shade the times after the earliest t*."""
    step = study["step"].values.astype(np.float64)
    t_star = fits["t_star"].sel(depth=depth, width=widths).transpose("width", "seed").values
    for width, times in zip(widths, t_star, strict=True):
        loss = study["loss"].sel(depth=depth, width=width).transpose("seed", "time").values
        for seed, t in enumerate(times):
            if np.isfinite(t):
                ax.plot(t, loss[seed][np.searchsorted(step, t)], "D", color="k", ms=5, mfc="gold")
    if np.isfinite(t_star).any():
        ax.axvspan(np.min(t_star), step[-1] * 1.3, color="gold", alpha=0.15, lw=0)


def sgd_floor(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Loss of the over-parametrized widths near the floor, with t* where L first drops below it.

    The dotted line is ``floor_factor`` x floor_ref, the level that defines t* (fits.t_star); the
    diamond on each seed's curve is its t*. Beyond t* the loss sits at the SGD floor and the paper
    expects the τ/τ_w aging collapse to fail: the band shades t > the earliest t* of the panel.
    Depths without an over-parametrized width show their widest width instead.
    """
    depths = study["depth"].values
    fig, axes = panels(depths.size)
    factor = floor_factor(fits)
    last = float(study["step"].values[-1])
    drawn = set()
    for ax, depth in zip(axes[0], depths, strict=True):
        over = fits["width"].values[fits["phase"].sel(depth=depth).values == OVER]
        shown = over if over.size else fits["width"].values[-1:]
        drawn |= set(shown.tolist())
        _loss_panel(ax, study, fits, depth, shown)
        ax.axhline(factor * float(fits["floor_ref"].sel(depth=depth)), color="k", ls=":", lw=1.4)
        _t_star_marks(ax, study, fits, depth, shown)
        label = "over-parametrized" if over.size else "widest (none over-parametrized)"
        ax.set_title(f"d = {depth}: {label}\nw = {', '.join(str(w) for w in shown)}", fontsize=SMALL)
        if fits.attrs["data_floor"] > 0:
            ax.set_ylim(float(fits.attrs["data_floor"]) / 2, None)
        ax.set_xlim(float(fits["window"].values[0]) / 10, last * 1.3)  # late times: where the floor is
    axes[0, 0].set_ylabel(LOSS_LABEL)
    extra = [
        Line2D([], [], color="k", ls=":", lw=1.4, label=f"{factor:g} x floor_ref (defines t*)"),
        Line2D([], [], color="k", marker="D", mfc="gold", ls="none", label="t*: L first below it"),
        Patch(color="gold", alpha=0.3, label="t > t*: aging collapse expected to fail"),
    ]
    fig.legend(handles=_loss_handles(study, fits, extra), loc="outside lower center", ncols=4, fontsize=SMALL)
    widths = study["width"].values
    width_colourbar(fig, axes, widths, widths[np.isin(widths, sorted(drawn))])
    return fig

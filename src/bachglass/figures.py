"""The figure set, drawn from the study Dataset (``study.nc``).

Each function returns a ``matplotlib.figure.Figure`` built without pyplot: no global figure
state, no GUI backend (the Agg canvas renders it), safe in parallel workflow jobs. Saving is
``io.save_figure``'s job.
"""

import warnings

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, Colormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

LOSS_LABEL = "training loss (nats/note)"
STEPS_LABEL = "SGD steps"
WIDTH_LABEL = "width w (hidden units per layer)"
TAU_LABEL = "learning time τ (SGD steps)"
CENSORED = "not reached (censored)"
MARKERS = ("o", "s", "D", "v", "P", "X", "*", "h")
DIVERGED = Line2D([], [], color="0.3", marker="x", ls="none", label="diverged")


def _panels(n: int, sharey: bool = True) -> tuple[Figure, list[Axes]]:
    """One panel per depth, side by side, sharing axes so depths compare at a glance."""
    fig = Figure(figsize=(1.2 + 3.0 * n, 3.4), layout="constrained")
    axes = fig.subplots(1, n, sharex=True, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def _nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """Median over seeds ignoring NaN (diverged runs); all-NaN gives NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def _diverged(study: xr.Dataset) -> xr.DataArray:
    """Per-run divergence flag; all False when the study does not carry one."""
    if "diverged" in study:
        return study["diverged"]
    return xr.zeros_like(study["n_parameters"], dtype=bool)


def loss_curves(study: xr.Dataset) -> Figure:
    """Training loss L(t) vs SGD steps, log-log, one panel per depth and one colour per width.

    The line is the median over seeds (robust to one diverged or unlucky seed); thin lines are
    the seeds. Step 0 has no place on a log axis and is dropped. The dashed line is the data floor,
    the loss of a perfect memoriser: no width can go below it, so curves flatten above it.
    A diverged seed ends in a cross.
    """
    depths, widths = study["depth"].values, study["width"].values
    loss = study["loss"].where(study["step"] > 0, drop=True)
    step = loss["step"].values
    diverged = _diverged(study)
    cmap = colormaps["viridis"].resampled(widths.size)  # colour by rank: widths are log-ish spaced
    floor = float(study.attrs.get("data_floor", 0.0))
    fig, axes = _panels(depths.size)
    for ax, depth in zip(axes, depths, strict=True):
        for i, width in enumerate(widths):
            runs = loss.sel(depth=depth, width=width).transpose("seed", "time").values
            for seed, curve in enumerate(runs):
                ax.plot(step, curve, color=cmap(i), lw=0.5, alpha=0.4)
                last = np.flatnonzero(np.isfinite(curve))
                if diverged.sel(depth=depth, width=width).values[seed] and last.size:
                    ax.plot(step[last[-1]], curve[last[-1]], "x", color="0.15", ms=7, mew=1.5)
            ax.plot(step, _nanmedian(runs, axis=0), color=cmap(i), lw=1.6)
        if floor > 0:
            ax.axhline(floor, color="0.25", ls="--", lw=1, label=f"data floor {floor:.3g}")
        ax.set(xscale="log", yscale="log", title=f"d = {depth}", xlabel=STEPS_LABEL)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(LOSS_LABEL)
    handles = axes[0].get_legend_handles_labels()[0]
    if diverged.any():
        handles.append(DIVERGED)
    if handles:
        axes[0].legend(handles=handles, loc="lower left", fontsize="small")
    norm = BoundaryNorm(np.arange(widths.size + 1) - 0.5, widths.size)
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes, ticks=np.arange(widths.size))
    bar.ax.set_yticklabels([str(w) for w in widths])
    bar.set_label(WIDTH_LABEL)
    return fig


def _tau_limits(tau: np.ndarray, last_step: float) -> tuple[float, float]:
    """Shared log-y limits with headroom at the top for the censored markers."""
    finite = tau[np.isfinite(tau) & (tau > 0)]
    if finite.size == 0:
        return 1.0, max(float(last_step), 10.0) * 4
    return float(finite.min()) / 2, float(finite.max()) * 6


def _edge(ax: Axes, x: np.ndarray, height: float, **style: object) -> None:
    """Markers at a fixed height in axes fraction (top or bottom edge), at data x."""
    ax.plot(x, np.full(x.size, height), transform=ax.get_xaxis_transform(), ls="none", ms=6, **style)


def _tau_panel(ax: Axes, widths: np.ndarray, tau: np.ndarray, cmap: Colormap) -> None:
    """One depth: ``tau`` is (width, seed, eps) in SGD steps, +inf censored, NaN diverged."""
    for k in range(tau.shape[-1]):
        t, style = tau[..., k], {"color": cmap(k), "marker": MARKERS[k % len(MARKERS)]}
        ok = np.isfinite(t)
        ax.plot(np.broadcast_to(widths[:, None], t.shape)[ok], t[ok], ls="none", alpha=0.3, ms=3.5, **style)
        median = _nanmedian(t, axis=1)  # +inf when most seeds are censored: no point drawn
        ax.plot(widths, np.where(np.isfinite(median), median, np.nan), ms=5, **style)
        _edge(ax, widths[np.isinf(t).any(axis=1)], 0.97 - 0.045 * k, marker="^", mfc="none", mec=cmap(k))
        _edge(ax, widths[np.isnan(t).any(axis=1)], 0.03, marker="x", color="0.3")


def learning_times(study: xr.Dataset) -> Figure:
    """Learning time τ(ε) vs width, one panel per depth, one colour and marker per threshold ε.

    Critical slowing down makes τ blow up as w falls to w_c(ε), hence the log y axis. Lines are the
    median over seeds, faint points the seeds. A run that never reached ε (τ = +inf, right-censored)
    is an open triangle at the top edge, one row per ε; a diverged run (τ = NaN) a cross at the
    bottom edge. Neither is hidden: both say something about where w_c lies.
    """
    depths, widths, eps = study["depth"].values, study["width"].values, study["eps"].values
    tau = study["tau"].transpose("depth", "width", "seed", "eps").values
    cmap = colormaps["plasma"].resampled(eps.size + 1)  # +1: skip plasma's pale yellow end
    fig, axes = _panels(depths.size)
    for ax, depth, tau_d in zip(axes, depths, tau, strict=True):
        _tau_panel(ax, widths, tau_d, cmap)
        ax.set(yscale="log", title=f"d = {depth}", xlabel=WIDTH_LABEL)
        if widths.size <= 6:  # few widths: label each; more would crowd the narrow end
            ax.set_xticks(widths, [str(w) for w in widths])
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylim(*_tau_limits(tau, float(study["step"].values[-1])))
    axes[0].set_ylabel(TAU_LABEL)
    handles = [
        Line2D([], [], color=cmap(k), marker=MARKERS[k % len(MARKERS)], label=f"ε = {e:g}")
        for k, e in enumerate(eps)
    ]
    handles.append(Line2D([], [], color="0.3", marker="^", mfc="none", ls="none", label=CENSORED))
    if np.isnan(tau).any():
        handles.append(DIVERGED)
    fig.legend(
        handles=handles, loc="outside right upper", fontsize="small", title="ε: loss ≤ floor + ε\n(nats/note)"
    )
    return fig


# The figure set drawn by the plot_figures rule: file stem -> drawing function of the study.
FIGURES = {"loss_curves": loss_curves, "learning_times": learning_times}

"""Figures of the glassy-dynamics observables beyond the paper (docs/science.md Part 2 and §4).

- ``two_time``: overlap Q, non-Gaussian parameter α₂ and cosine correlation C against τ/τ_w for an
  under-parametrized, a near-critical and an over-parametrized net, and the relaxation times
  τ_e, τ_90 against τ_w (simple aging: τ ∝ τ_w);
- ``sharpness``: the top Hessian eigenvalue λ_max(t) against the gradient-descent stability bound 2/η;
- ``accuracy`` and ``generalisation_phases``: next-note accuracy on the training and held-out
  chorales, and the comprehension / grokking / memorisation / confusion map over (d, w);
- ``langevin_tts``: the Langevin sweep's Q(t) at each temperature, the same against t/τ_e(T)
  (time-temperature superposition), and τ_e(T) with the slope fitted in fits.nc.

Curves are seed means over the runs that did not diverge.
"""

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bachglass.figures_aging import Example, examples
from bachglass.figures_layout import (
    DEPTH_LABEL,
    SMALL,
    STEPS_LABEL,
    WIDTH_LABEL,
    diverged,
    nanmean,
    panels,
    width_colourbar,
    width_colours,
)
from bachglass.observables import LAG_COORD

TWO_TIME = {  # variable: (axis label, y scale)
    "overlap": ("overlap Q(τ_w, τ_w + τ)", "linear"),
    "alpha2": ("non-Gaussian parameter α₂", "linear"),
    "cosine": ("1 − C(τ_w, τ_w + τ)", "log"),
}
RATIO_LABEL = "τ / τ_w"
# undetermined, comprehension, grokking, memorisation, confusion (phases.py's codes -1 ... 3, in order)
PHASE_COLOURS = ("0.92", "C2", "C1", "C0", "0.55")


def _linear_when_empty(fig: Figure) -> Figure:
    """Turn a log axis with no positive data back to linear (every seed diverged: nothing to span)."""
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_transform() == ax.transData]  # no axhline
        for axis, scale, data in (("x", ax.get_xscale(), "get_xdata"), ("y", ax.get_yscale(), "get_ydata")):
            values = np.concatenate([np.asarray(getattr(line, data)(), float) for line in lines] or [[]])
            if scale in ("log", "symlog") and not (np.isfinite(values) & (values > 0)).any():
                getattr(ax, f"set_{axis}scale")("linear")
    return fig


def _seed_mean(ds: xr.Dataset, name: str, depth: int, width: int) -> np.ndarray:
    """Seed mean of ``name`` at (depth, width) over runs that did not diverge; seed axis dropped."""
    var = ds[name].sel(depth=depth, width=width)
    ok = ~diverged(ds).sel(depth=depth, width=width)
    return nanmean(var.where(ok).transpose("seed", ...).values, axis=0)


def _ratio(ds: xr.Dataset) -> np.ndarray:
    """τ/τ_w on the (tau_w, time) grid; NaN where τ <= 0."""
    lag = ds[LAG_COORD].transpose("tau_w", "time").values.astype(float)
    tau_w = ds["tau_w"].values.astype(float)[:, None]
    return np.where(lag > 0, lag / tau_w, np.nan)


def _two_time_row(axes: np.ndarray, ds: xr.Dataset, ex: Example) -> None:
    """One net: Q, α₂, 1 − C against τ/τ_w (one colour per τ_w), then τ_e and τ_90 against τ_w."""
    ratio, tau_w = _ratio(ds), ds["tau_w"].values
    cmap = colormaps["cividis"].resampled(tau_w.size)
    for ax, (name, (label, scale)) in zip(axes, TWO_TIME.items(), strict=False):
        values = _seed_mean(ds, name, ex.depth, ex.width)
        for j in range(tau_w.size):
            y = 1 - values[j] if name == "cosine" else values[j]
            ax.plot(ratio[j], y, color=cmap(j), lw=1.2, label=f"{tau_w[j]}")
        ax.set(xscale="log", yscale=scale, ylabel=label)
    ax = axes[3]
    for name, marker in (("tau_e", "o"), ("tau_90", "s")):
        tau = _seed_mean(ds, name, ex.depth, ex.width)
        ax.plot(tau_w, np.where(np.isfinite(tau), tau, np.nan), marker=marker, label=f"τ_{name[4:]}")
    ax.plot(tau_w, tau_w, color="0.5", ls=":", label="τ = τ_w (simple aging)")
    ax.set(xscale="log", yscale="log", xlabel="τ_w (SGD steps)", ylabel="relaxation time (SGD steps)")
    ratio_text = f"w/w_c* = {ex.ratio:.2f}" if np.isfinite(ex.ratio) else "w_c* not determined"
    axes[0].set_title(f"d = {ex.depth}, w = {ex.width} ({ratio_text})", loc="left", fontsize=SMALL)


def two_time(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Q, α₂ and C against τ/τ_w, and τ_e, τ_90 against τ_w, for three nets across the transition."""
    chosen = list({(ex.depth, ex.width): ex for ex in examples(study, fits)}.values())
    fig, axes = panels(4, rows=len(chosen), sharex=False, sharey=False, height=2.8)
    for row, ex in zip(axes, chosen, strict=True):
        _two_time_row(row, study, ex)
    for ax in axes[-1, :3]:
        ax.set_xlabel(RATIO_LABEL)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=SMALL, title="τ_w (SGD steps)")
    axes[0, 3].legend(fontsize=SMALL)
    eps = f"ε = std(θ(τ_w)) / {study['overlap'].attrs.get('overlap_f', 'f'):g}"
    fig.suptitle(f"Two-time observables (seed means; Q with {eps})")
    return _linear_when_empty(fig)


def sharpness(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """λ_max(t) per width, one panel per depth, with the stability bound 2/η of gradient descent."""
    depths, widths = study["depth"].values, study["width"].values
    fig, axes = panels(depths.size, sharey=True)
    cmap = width_colours(widths)
    step = study["step"].values
    bound = 2 / float(study.attrs["lr"]) if "lr" in study.attrs else np.nan
    for ax, depth in zip(axes[0], depths, strict=True):
        for k, width in enumerate(widths):
            lam = _seed_mean(study, "sharpness", int(depth), int(width))
            keep = np.isfinite(lam) & (step > 0)
            ax.plot(step[keep], lam[keep], color=cmap(k), marker=".", lw=1)
        ax.axhline(bound, color="k", ls="--", lw=1, label=f"2/η = {bound:g}")
        ax.set(xscale="log", yscale="log", xlabel=STEPS_LABEL, title=f"d = {depth}")
    axes[0, 0].set_ylabel("sharpness λ_max (top Hessian eigenvalue)")
    axes[0, 0].legend(fontsize=SMALL)
    width_colourbar(fig, axes, widths)
    return _linear_when_empty(fig)


def accuracy(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Next-note accuracy on the training (top) and held-out chorales (bottom), per depth and width."""
    depths, widths = study["depth"].values, study["width"].values
    fig, axes = panels(depths.size, rows=2, sharey="row")
    cmap = width_colours(widths)
    step = study["step"].values
    for col, depth in enumerate(depths):
        for row, name in enumerate(("accuracy", "heldout_accuracy")):
            ax = axes[row, col]
            for k, width in enumerate(widths):
                acc = _seed_mean(study, name, int(depth), int(width))
                ax.plot(step[step > 0], acc[step > 0], color=cmap(k), lw=1)
            ax.set(xscale="log", title=f"d = {depth}" if row == 0 else None)
        axes[1, col].set_xlabel(STEPS_LABEL)
    if "heldout_threshold" in fits:
        for ax in axes[1]:
            ax.axhline(float(fits["heldout_threshold"]), color="k", ls=":", lw=1)
    if "generalisation_phase" in fits:
        for ax in axes[0]:
            ax.axhline(float(fits["generalisation_phase"].attrs["train_accuracy"]), color="k", ls=":", lw=1)
    axes[0, 0].set_ylabel("training accuracy (next note)")
    axes[1, 0].set_ylabel("held-out accuracy (next note)")
    width_colourbar(fig, axes, widths)
    return _linear_when_empty(fig)


def generalisation_phases(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Draw the phase of each (d, w) from the seed-mean accuracy curves (Liu et al. 2022 rule)."""
    phase = fits["generalisation_phase"].transpose("depth", "width")
    names = str(phase.attrs["flag_meanings"]).split()
    codes = np.asarray(phase.attrs["flag_values"])
    fig = Figure(
        figsize=(1.5 + 0.45 * phase.sizes["width"], 1.6 + 0.6 * phase.sizes["depth"]), layout="constrained"
    )
    ax = fig.subplots()
    index = np.searchsorted(codes, np.nan_to_num(phase.values, nan=-1).astype(int))
    cmap = ListedColormap(PHASE_COLOURS[: len(names)])
    ax.pcolormesh(
        np.arange(phase.sizes["width"] + 1),
        np.arange(phase.sizes["depth"] + 1),
        index,
        cmap=cmap,
        vmin=-0.5,
        vmax=len(names) - 0.5,
        edgecolors="white",
        linewidth=2,
    )
    ax.set_xticks(np.arange(phase.sizes["width"]) + 0.5, [str(w) for w in phase["width"].values])
    ax.set_yticks(np.arange(phase.sizes["depth"]) + 0.5, [str(d) for d in phase["depth"].values])
    ax.set(xlabel=WIDTH_LABEL, ylabel=DEPTH_LABEL)
    handles = [  # the phases that occur, each swatch edged so that a pale one shows
        Line2D(
            [], [], ls="none", marker="s", ms=12, mfc=PHASE_COLOURS[k], mec="0.3", label=n.replace("_", " ")
        )
        for k, n in enumerate(names)
        if (index == k).any()
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=SMALL + 1)
    ax.set_title("generalisation phase (seed-mean accuracy)")
    return fig


def _geometric_mean(values: np.ndarray) -> float:
    """Geometric mean of the finite positive values (τ_e over seeds; +inf = not reached, left out)."""
    values = np.asarray(values, float).ravel()
    keep = np.isfinite(values) & (values > 0)
    return float(np.exp(np.log(values[keep]).mean())) if keep.any() else np.nan


def _tts_panel(ax: Axes, sweep: xr.Dataset, scaled: bool) -> None:
    """Q(τ_w, τ_w + t) of each temperature against t, or t / τ_e(T) when ``scaled``."""
    temperatures = sweep["temperature"].values
    cmap = colormaps["coolwarm"].resampled(temperatures.size)
    tau_w = int(sweep["tau_w"].values[0])
    for k, temperature in enumerate(temperatures):
        one = sweep.sel(temperature=temperature, tau_w=tau_w)
        lag = one[LAG_COORD].values.astype(float)
        q = nanmean(one["overlap"].transpose(..., "time").values.reshape(-1, lag.size), axis=0)
        tau_e = _geometric_mean(one["tau_e"].values) if scaled else 1.0
        keep = lag > 0
        ax.plot(lag[keep] / tau_e, q[keep], color=cmap(k), label=f"T = {temperature:g}")
    ax.set(
        xscale="log",
        xlabel="t / τ_e(T)" if scaled else "t (SGD steps)",
        ylabel=f"Q(τ_w, τ_w + t), τ_w = {tau_w}",
    )


def langevin_tts(sweep: xr.Dataset | None, fits: xr.Dataset | None = None) -> Figure:
    """Time-temperature superposition of the overlap in the Langevin sweep; τ_e(T) with its fitted slope."""
    fig, axes = panels(3, sharex=False, sharey=False)
    if sweep is None:
        axes[0, 0].text(0.5, 0.5, "no Langevin sweep (params.yaml langevin lists empty)", ha="center")
        return fig
    _tts_panel(axes[0, 0], sweep, scaled=False)
    _tts_panel(axes[0, 1], sweep, scaled=True)
    axes[0, 0].legend(fontsize=SMALL)
    ax, temperatures = axes[0, 2], sweep["temperature"].values
    for j, tau_w in enumerate(sweep["tau_w"].values):
        tau = sweep["tau_e"].sel(tau_w=tau_w)
        mean = [_geometric_mean(tau.sel(temperature=t).values) for t in temperatures]
        label = f"τ_w = {tau_w}"
        if fits is not None and "langevin_tau_e_exponent" in fits:
            label += f": slope {float(fits['langevin_tau_e_exponent'].sel(langevin_tau_w=tau_w)):.2f}"
        ax.plot(temperatures, mean, marker="os"[j % 2], label=label)
    ax.set(xscale="log", yscale="log", xlabel="temperature T (nats/note)", ylabel="τ_e (SGD steps)")
    ax.legend(fontsize=SMALL)
    d, w = (", ".join(str(v) for v in sweep[k].values.ravel()) for k in ("depth", "width"))
    fig.suptitle(f"Langevin sweep (d = {d}, w = {w}): full-batch GD + noise √(2Tη/P)")
    return _linear_when_empty(fig)

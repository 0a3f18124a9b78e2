"""Figures of aging: Δ(τ_w, τ) for three example nets, raw and rescaled by τ_w or τ_w^μ.

docs/science.md §1.8 figures 7 and 8. The examples are one depth's widths nearest 0.6, 1 and 2 x w_c*:
under-parametrized, near-critical and over-parametrized. Δ is averaged over the seeds that did
not diverge. Waiting times below the first one the fits used are drawn faint (inside the early
plateau of the loss they are left out of the collapse).
"""

from dataclasses import dataclass

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bachglass.figures_layout import LAG_LABEL, MSD_LABEL, SMALL, diverged, finite, nanmean, nanmedian, panels

EXAMPLE_RATIOS = (0.6, 1.0, 2.0)  # w / w_c*: under-parametrized, near-critical, over-parametrized


@dataclass(frozen=True)
class Example:
    """One (depth, width) shown in the aging figures, with what its title says."""

    depth: int
    width: int
    ratio: float  # w / w_c*, NaN without w_c*
    final_loss: float


def example_depth(depths: np.ndarray) -> int:
    """Depth 2 when the grid has it (the paper's deep case at moderate cost), else the middle depth."""
    return 2 if 2 in depths else int(depths[depths.size // 2])


def examples(study: xr.Dataset, fits: xr.Dataset) -> list[Example]:
    """Pick the widths nearest 0.6, 1 and 2 x w_c* at the example depth.

    Without w_c* (no extrapolation) the middle of the L_inf phase boundary stands in, and without
    that the median width: the figure still shows three nets, only its title loses the ratio.
    """
    depth = example_depth(study["depth"].values)
    widths = study["width"].values
    fit = fits.sel(depth=depth)
    w_c = float(fit["w_c_star"])
    centre = w_c if finite(w_c) else 0.5 * (float(fit["w_under_max"]) + float(fit["w_over_min"]))
    if not finite(centre):
        centre = float(np.median(widths))
    loss = study["loss"].sel(depth=depth).where(~diverged(study).sel(depth=depth))
    out = []
    for r in EXAMPLE_RATIOS:
        width = int(widths[np.argmin(np.abs(widths - r * centre))])
        last = loss.sel(width=width).transpose("seed", "time").values
        final = [run[np.isfinite(run)][-1] for run in last if np.isfinite(run).any()]
        out.append(
            Example(depth, width, width / w_c if finite(w_c) else np.nan, float(np.median(final or [np.nan])))
        )
    return out


def _title(ex: Example, fits: xr.Dataset) -> str:
    """d, w, w/w_c*, phase and final loss of an example."""
    ratio = f" = {ex.ratio:.2f} w_c*" if finite(ex.ratio) else ""
    phase = {1: "under", 0: "over", -1: "undetermined"}[
        int(fits["phase"].sel(depth=ex.depth, width=ex.width))
    ]
    return f"d = {ex.depth}, w = {ex.width}{ratio} ({phase})\nL(end) = {ex.final_loss:.3g} nats/note"


def tau_w_min(fits: xr.Dataset) -> float:
    """Return the shortest waiting time the collapse used (params.yaml fits.aging_tau_w_min)."""
    return float(fits.attrs["aging_tau_w_min"])


def _mean_msd(study: xr.Dataset, ex: Example) -> xr.DataArray:
    """Δ (tau_w, lag) of one example, averaged over its non-diverged seeds."""
    msd = study["msd_lag"].sel(depth=ex.depth, width=ex.width)
    msd = msd.where(~diverged(study).sel(depth=ex.depth, width=ex.width)).transpose("tau_w", "seed", "lag")
    return xr.DataArray(
        nanmean(msd.values, axis=1), dims=("tau_w", "lag"), coords={"tau_w": msd["tau_w"], "lag": msd["lag"]}
    )


def _msd_panel(ax: Axes, delta: xr.DataArray, t_star: float, tw_min: float, mu: float | None) -> None:
    """Δ of each waiting time against τ/τ_w^mu (mu None: against τ), with t* as a gold diamond."""
    tau_w, lag = delta["tau_w"].values.astype(np.float64), delta["lag"].values.astype(np.float64)
    if not (delta.values > 0).any():  # every seed diverged: a log axis would have nothing to span
        ax.text(0.5, 0.5, "no data (diverged)", transform=ax.transAxes, ha="center", va="center")
        return
    cmap = colormaps["magma"].resampled(tau_w.size + 1)  # +1: skip magma's pale end
    for j, tw in enumerate(tau_w):
        y = delta.values[j]
        ok = np.isfinite(y) & (y > 0)
        x = lag if mu is None else lag / tw**mu
        used = tw >= tw_min
        ax.plot(
            x[ok],
            y[ok],
            color=cmap(j),
            lw=1.4 if used else 0.8,
            ls="-" if used else ":",
            alpha=1 if used else 0.6,
        )
        if finite(t_star) and t_star > tw:
            k = np.searchsorted(lag, t_star - tw)
            if k < lag.size and ok[k]:
                ax.plot(x[k], y[k], "D", color="k", mfc="gold", ms=5, zorder=3)
    ax.set(xscale="log", yscale="log")
    ax.grid(True, which="major", alpha=0.3)


def _tau_w_legend(fig: Figure, tau_w: np.ndarray, tw_min: float) -> None:
    """Legend: one colour per waiting time, faint ones not used by the fits, and the t* marker."""
    cmap = colormaps["magma"].resampled(tau_w.size + 1)
    handles = [
        Line2D(
            [],
            [],
            color=cmap(j),
            ls="-" if tw >= tw_min else ":",
            label=f"τ_w = {tw:g}" + ("" if tw >= tw_min else " (not fitted)"),
        )
        for j, tw in enumerate(tau_w)
    ]
    handles.append(
        Line2D([], [], color="k", mfc="gold", marker="D", ls="none", label="τ_w + τ = t* (loss at floor)")
    )
    fig.legend(handles=handles, loc="outside right upper", fontsize=SMALL, title="waiting time (SGD steps)")


def _t_star(fits: xr.Dataset, ex: Example) -> float:
    """Median t* over seeds (+inf: the loss never reached the floor)."""
    return float(nanmedian(fits["t_star"].sel(depth=ex.depth, width=ex.width).values, axis=0))


def aging_msd(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Δ(τ_w, τ) vs the lag τ, log-log, one colour per waiting time τ_w, for three example nets.

    Aging means Δ grows more slowly the older the net (larger τ_w). The gold diamond marks where
    τ_w + τ reaches t*, the time the loss first sits at the SGD floor.
    """
    exs = examples(study, fits)
    fig, axes = panels(len(exs))
    tau_w, tw_min = study["tau_w"].values, tau_w_min(fits)
    for ax, ex in zip(axes[0], exs, strict=True):
        _msd_panel(ax, _mean_msd(study, ex), _t_star(fits, ex), tw_min, None)
        ax.set_title(_title(ex, fits), fontsize=SMALL)
        ax.set_xlabel(LAG_LABEL)
    axes[0, 0].set_ylabel(MSD_LABEL, fontsize=SMALL)
    _tau_w_legend(fig, tau_w, tw_min)
    return fig


def _note(ax: Axes, text: str) -> None:
    """Write a small boxed note in the panel's upper left corner."""
    ax.text(
        0.03,
        0.97,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=SMALL,
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9},
    )


def aging_collapse(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Plot the aging examples against τ/τ_w (top, simple aging) and τ/τ_w^μ with the fitted μ (bottom).

    Curves that fall on one another collapse; S is their spread in decades of Δ (mean std over
    τ_w at fixed x), S(τ) the spread without rescaling. The paper expects simple aging (good
    collapse in τ/τ_w) below w_c and collapse only at short τ/τ_w near and above w_c.
    """
    exs = examples(study, fits)
    fig, axes = panels(len(exs), rows=2, sharex=False, sharey=True, height=3.3)
    tau_w, tw_min = study["tau_w"].values, tau_w_min(fits)
    for col, ex in enumerate(exs):
        f = fits.sel(depth=ex.depth, width=ex.width)
        delta, t_star = _mean_msd(study, ex), _t_star(fits, ex)
        mu, lo, hi = (float(f[name]) for name in ("mu", "mu_lo", "mu_hi"))
        top, bottom = axes[0, col], axes[1, col]
        _msd_panel(top, delta, t_star, tw_min, 1.0)
        _note(top, f"S(τ/τ_w) = {float(f['S_simple']):.2f} decades\nS(τ) = {float(f['S_raw']):.2f} decades")
        top.set_title(_title(ex, fits), fontsize=SMALL)
        top.set_xlabel("τ/τ_w")
        if finite(mu):
            _msd_panel(bottom, delta, t_star, tw_min, mu)
            _note(bottom, f"μ = {mu:.2f} [{lo:.2f}, {hi:.2f}]\nS(τ/τ_w^μ) = {float(f['S_mu']):.2f} decades")
        else:
            _note(bottom, "no μ fit")
        bottom.set_xlabel(f"τ/τ_w^μ (SGD steps^{1 - mu:.2f})" if finite(mu) else "τ/τ_w^μ")
    for row in axes:
        row[0].set_ylabel("Δ(τ_w, τ)", fontsize=SMALL)
    _tau_w_legend(fig, tau_w, tw_min)
    return fig

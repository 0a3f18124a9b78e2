"""The SGD dynamics itself: where unclipped constant-η SGD is stable, and the floor its noise sets.

- ``stability``: one panel per (depth, width); in it, one column per learning rate η and one row per
  (recurrent-weight initialisation, batch size B). A cell's colour is the largest λ_max η/2 measured
  before any divergence (> 1: beyond the edge of stability 2/η); its text gives the runs that
  diverged (✗ k) and the share of steps whose gradient norm passed the safety norm.
- ``sgd_floor_scaling``: the measured floor above the data floor against η/B, with the fitted power
  law (η/B)^κ, and the floors after a restart at η/2, η/4 (check 7's restart test).
"""

import numpy as np
import xarray as xr
from matplotlib.axis import Axis
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from bachglass.figures_layout import LOSS_LABEL, SMALL, panels


def stability(scan: xr.Dataset | None) -> Figure:
    """Draw λ_max η/2 over (η, init × B), one map per (depth, width), with divergences and unsafe shares."""
    if scan is None:
        fig, axes = panels(1)
        axes[0, 0].text(0.5, 0.5, "no stability scan (params.yaml stability lists empty)", ha="center")
        return fig
    depths, widths = scan["depth"].values, scan["width"].values
    lrs = scan["lr"].values
    rows = [(init, b) for init in scan["init"].values for b in scan["batch_size"].values]
    fig, axes = panels(len(widths), rows=len(depths), sharex=True, sharey=True, height=1.2 + 0.5 * len(rows))
    norm = LogNorm(0.1, 10)
    image = None
    for i, depth in enumerate(depths):
        for j, width in enumerate(widths):
            ax = axes[i, j]
            cell = (
                scan.sel(depth=depth, width=width)
                .stack(row=("init", "batch_size"))
                .transpose("row", "lr", ...)
            )
            ratio = np.clip(np.nan_to_num(cell["sharpness_ratio"].values, nan=0.1), 0.1, 10)
            image = ax.imshow(ratio, cmap="RdYlBu_r", norm=norm, aspect="auto", origin="lower")
            for r in range(len(rows)):
                for k in range(len(lrs)):
                    n = int(cell["n_diverged"].values[r, k])
                    share = float(cell["over_share"].values[r, k])
                    text = (f"✗{n}\n" if n else "") + _share_text(share)
                    ax.text(
                        *(k, r, text),
                        ha="center",
                        va="center",
                        fontsize=SMALL,
                        weight="bold" if n else None,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
                    )
            ax.set_title(f"d = {depth}, w = {width}", fontsize=SMALL + 1)
            ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs], fontsize=SMALL)
            ax.set_yticks(range(len(rows)), [f"{init}, {b}" for init, b in rows], fontsize=SMALL)
    fig.supxlabel("learning rate η")
    fig.supylabel("recurrent init, batch size B (chorales per step)")
    bar = fig.colorbar(image, ax=axes, shrink=0.9)
    bar.set_label("max λ_max·η/2 (> 1: past 2/η)")
    steps, n = int(scan.attrs.get("steps", 0)), scan.sizes["seed"]
    fig.suptitle(
        f"Unclipped constant-η SGD, {steps} steps, {n} seeds per cell\n✗k: k runs diverged; "
        f"%: steps with gradient norm > {scan.attrs.get('safety_norm', float('nan')):g}",
        fontsize=SMALL + 1,
    )
    return fig


def data_ticks(axis: Axis, values: np.ndarray) -> None:
    """Tick a log axis at the measured values only (a few, under a decade: log ticks would crowd)."""
    axis.set_ticks(values, [f"{v:g}" for v in values])
    axis.set_minor_locator(NullLocator())


def _share_text(share: float) -> str:
    """Write a share of unsafe steps for a heat-map cell: "-" not measured, "0" none, "<1%" some."""
    if not np.isfinite(share):
        return "-"
    return f"{share:.0%}" if share >= 0.005 else "<1%" if share > 0 else "0"


def sgd_floor_scaling(study: xr.Dataset, fits: xr.Dataset) -> Figure:
    """Draw the SGD floor above the data floor against η/B (log-log), its κ fit and the restarts' floors."""
    fig, axes = panels(2, sharex=False, sharey=False)
    if "sgd_floor_measured" not in fits:
        axes[0, 0].text(0.5, 0.5, "no floor runs (params.yaml sgd_floor settings empty)", ha="center")
        axes[0, 1].set_visible(False)  # no restarts without a parent run
        return fig
    data_floor = float(fits.attrs["data_floor"])
    ax = axes[0, 0]
    ratio = fits["lr_over_batch"].values
    for b, marker in zip(np.unique(fits["batch_size"].values), "osD^v", strict=False):
        sel = fits["batch_size"].values == b
        y = fits["sgd_floor_measured"].values[sel] - data_floor
        lo = y - (fits["sgd_floor_measured_lo"].values[sel] - data_floor)
        hi = fits["sgd_floor_measured_hi"].values[sel] - data_floor - y
        bars = [np.clip(lo, 0, None), np.clip(hi, 0, None)]
        ax.errorbar(ratio[sel], y, yerr=bars, marker=marker, ls="none", capsize=3, label=f"B = {int(b)}")
    kappa = float(fits["sgd_floor_kappa"])
    excess = fits["sgd_floor_excess"].values
    keep = np.isfinite(excess) & (excess > 0)
    if np.isfinite(kappa) and keep.any():
        x = np.geomspace(ratio.min() / 1.3, ratio.max() * 1.3, 20)
        anchor = np.exp(np.mean(np.log(excess[keep]) - kappa * np.log(ratio[keep])))
        lo, hi = float(fits["sgd_floor_kappa_lo"]), float(fits["sgd_floor_kappa_hi"])
        ax.plot(x, anchor * x**kappa, "k--", lw=1, label=f"κ = {kappa:.2f} [{lo:.2f}, {hi:.2f}]")
    ax.set(xscale="log", yscale="log", xlabel="η / B", ylabel="floor − data floor (nats/note)")
    data_ticks(ax.xaxis, np.unique(ratio))
    ax.legend(fontsize=SMALL)
    ax.set_title(f"d = {fits.attrs.get('floor_depth')}, w = {fits.attrs.get('floor_width')}")
    ax = axes[0, 1]
    if "restart_floor" in fits:
        parent = float(fits["sgd_floor_measured"].values[0])
        factors = np.concatenate([[1.0], fits["restart"].values])
        floors = np.concatenate([[parent], fits["restart_floor"].values])
        ax.plot(factors, floors, "o-", label="floor after the restart")
        ax.axhline(data_floor, color="0.5", ls=":", label="data floor")
        ax.set(xscale="log", yscale="log", xlabel="η after restart / η", ylabel=LOSS_LABEL)
        data_ticks(ax.xaxis, factors)
        ax.legend(fontsize=SMALL)
        ax.set_title(f"restart at step {fits.attrs.get('restart_step', '?')}", fontsize=SMALL + 1)
    else:
        ax.text(0.5, 0.5, "no restarts", ha="center")
    return fig

"""The common look of the figure set: axis labels with units, panels per depth, colours and phases.

Every figure module draws with these, so that a width, a threshold ε or a phase has the same colour
or marker in every figure, and an axis that means the same thing has the same label.
"""

import warnings
from collections.abc import Callable

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bachglass.fits import OVER, UNDER, UNDETERMINED

LOSS_LABEL = "training loss (nats/note)"
STEPS_LABEL = "SGD steps"
WIDTH_LABEL = "width w (hidden units per layer)"
DEPTH_LABEL = "depth d (layers)"
TAU_LABEL = "learning time τ (SGD steps)"
INVERSE_TAU_LABEL = "1/τ (per SGD step)"
EPS_LABEL = "threshold ε (nats/note)"
W_C_LABEL = "critical width w_c (hidden units)"
MSD_LABEL = "Δ(τ_w, τ): mean-square weight change per parameter"
LAG_LABEL = "lag τ (SGD steps)"
SMALL = 9  # points: the smallest text of any figure (legends, ticks, annotations), readable on a slide
CENSORED = "not reached (censored)"
MARKERS = ("o", "s", "D", "v", "P", "X", "*", "h")
DIVERGED = Line2D([], [], color="0.3", marker="x", ls="none", label="diverged")

# Phase (fits.phase) as marker shape and fill, so that colour stays free for the depth: filled = a
# plateau above the floors, open = reaches them, half = seeds or windows disagree, or not there yet.
PHASES = {
    UNDER: {"marker": "o", "fillstyle": "full", "label": "under-parametrized (L_inf above floor)"},
    OVER: {"marker": "s", "fillstyle": "none", "label": "over-parametrized (loss reached the floor)"},
    UNDETERMINED: {
        "marker": "D",
        "fillstyle": "bottom",
        "label": "undetermined (disagree, or not yet)",
    },
}
PHASE_COLOURS = {UNDER: "C3", OVER: "C0", UNDETERMINED: "0.45"}


def panels(
    n: int,
    rows: int = 1,
    sharex: bool | str = True,
    sharey: bool | str = True,
    height: float = 3.4,
    width: float = 3.2,
) -> tuple[Figure, np.ndarray]:
    """Make a grid of ``rows`` x ``n`` panels (one column per depth or example), sharing axes."""
    fig = Figure(figsize=(1.2 + width * n, height * rows), layout="constrained")
    axes = fig.subplots(rows, n, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, axes


def _ignoring_nan(reduce: Callable[..., np.ndarray]) -> Callable[[np.ndarray, int], np.ndarray]:
    """``reduce`` (np.nanmedian, ...) over an axis; all-NaN gives NaN without a RuntimeWarning."""

    def quiet(values: np.ndarray, axis: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return reduce(values, axis=axis)

    return quiet


# over seeds, ignoring the NaN of diverged runs
nanmedian, nanmean = _ignoring_nan(np.nanmedian), _ignoring_nan(np.nanmean)
nanmin, nanmax = _ignoring_nan(np.nanmin), _ignoring_nan(np.nanmax)


def diverged(study: xr.Dataset) -> xr.DataArray:
    """Per-run divergence flag; all False when the study does not carry one."""
    if "diverged" in study:
        return study["diverged"].astype(bool)
    return xr.zeros_like(study["n_parameters"], dtype=bool)


def floor_factor(fits: xr.Dataset) -> float:
    """Return the factor that defines "at the floor" (t*, phases): params.yaml fits.floor_factor."""
    return float(fits.attrs["floor_factor"])


def width_ticks(ax: Axes, widths: np.ndarray, fraction: float = 0.1) -> None:
    """Tick every width on a log x axis; label only widths at least ``fraction`` of the axis apart.

    Greedy from the narrowest, so a grid dense near the transition (10, 11, 12, 13 ...) keeps a label on
    every other tick or so instead of labels run together; the unlabelled ticks stay as marks.
    """
    logs = np.log10(np.asarray(widths, float))
    gap = fraction * 1.1 * max(float(logs.max() - logs.min()), 0.1)  # the axis adds ~5 % each side
    labels, last = [], -np.inf
    for width, value in zip(widths, logs, strict=True):
        keep = value - last >= gap
        labels.append(f"{width:g}" if keep else "")
        last = value if keep else last
    ax.set_xticks(widths, labels, fontsize=SMALL)
    ax.minorticks_off()


def width_colours(widths: np.ndarray) -> Colormap:
    """One colour per width, by rank: the grid is log-ish spaced, so rank spreads the colours evenly."""
    return colormaps["viridis"].resampled(widths.size)


def width_colourbar(
    fig: Figure, axes: np.ndarray, widths: np.ndarray, drawn: np.ndarray | None = None
) -> None:
    """Add a discrete colour bar naming each width (of ``drawn`` only, in their colours among ``widths``)."""
    drawn = widths if drawn is None else np.asarray(drawn)
    cmap = width_colours(widths)
    colours = ListedColormap([cmap(int(np.flatnonzero(widths == w)[0])) for w in drawn])
    norm = BoundaryNorm(np.arange(drawn.size + 1) - 0.5, drawn.size)
    bar = fig.colorbar(ScalarMappable(norm, colours), ax=axes, ticks=np.arange(drawn.size))
    bar.ax.set_yticklabels([str(w) for w in drawn])
    bar.set_label(WIDTH_LABEL)


def eps_colours(n: int) -> Colormap:
    """One colour per threshold ε; +1 skips plasma's pale yellow end."""
    return colormaps["plasma"].resampled(n + 1)


def depth_colour(i: int) -> str:
    """Return the colour of the i-th depth in figures that overlay depths."""
    return f"C{i}"


def eps_handles(eps: np.ndarray) -> list[Line2D]:
    """Legend entries, one colour and marker per threshold ε."""
    cmap = eps_colours(eps.size)
    return [
        Line2D([], [], color=cmap(k), marker=MARKERS[k % len(MARKERS)], label=f"ε = {e:g}")
        for k, e in enumerate(eps)
    ]


def phase_handles(coloured: bool = False) -> list[Line2D]:
    """Legend entries of the three phase markers, in black or in their phase colours."""
    return [
        Line2D([], [], ls="none", ms=7, color=PHASE_COLOURS[phase] if coloured else "0.15", **style)
        for phase, style in PHASES.items()
    ]


def edge(ax: Axes, x: np.ndarray, height: float, **style: object) -> None:
    """Markers at a fixed height in axes fraction (top or bottom edge), at data x."""
    ax.plot(x, np.full(np.size(x), height), transform=ax.get_xaxis_transform(), ls="none", ms=6, **style)


def bars(value: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """Error bars [value - lo, hi - value]; NaN (no bar) where a bound is not finite (unbounded CI)."""
    below, above = np.asarray(value) - np.asarray(lo), np.asarray(hi) - np.asarray(value)
    return [np.where(np.isfinite(e), np.clip(e, 0, None), np.nan) for e in (below, above)]


def finite(*values: float) -> bool:
    """Whether every value is a finite number (a fit that exists)."""
    return bool(np.all(np.isfinite(values)))

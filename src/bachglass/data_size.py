"""How the transition moves with the data: N* = N(d, w_c*) against P, the training set's scored notes.

One study per training-set size (``configs/data_size/n*.yaml``, each run in a clone of its own,
since ``results/`` holds one study) gives N* with its seed-bootstrap replicas in its ``fits.nc``.
This module gathers them and fits N* ∝ P^γ per depth: γ by least squares of ln N* on ln P over
the sizes with N*, its interval from the replicas (the b-th replica of every study; each size's
config bootstraps with a seed of its own, so they are independent). A replica in which one of
those studies has no N* (no w_c*) has no γ and counts as unbounded
(:func:`bachglass.critical.counted_interval`), as w_c* itself does.

``python -m bachglass.data_size clone_n4/results/fits.nc clone_n8/results/fits.nc ...
--out results/data_size.nc --figure results/figures/data_size.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from bachglass.critical import counted_interval
from bachglass.errors import DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

N_STAR = ("n_star", "n_star_lo", "n_star_hi")
MIN_SIZES = 3  # a slope through two points has no scatter to judge it by


def collect(paths: Sequence[str | Path]) -> xr.Dataset:
    """N* (and interval, replicas) of each study's fits.nc on a ``scored_notes`` dim (P), sorted by P."""
    parts = []
    for path in paths:
        with xr.open_dataset(path) as fits:
            if not fits.attrs.get("n_scored_notes"):
                raise DataError(f"{path}: no n_scored_notes attribute (a fits.nc from before N*/P)")
            missing = [v for v in (*N_STAR, "n_star_boot") if v not in fits]
            if missing:
                raise DataError(f"{path}: no {', '.join(missing)} (a fits.nc from before N*)")
            part = fits[[*N_STAR, "n_star_boot"]].load()
            part = part.expand_dims(scored_notes=[int(fits.attrs["n_scored_notes"])])
            parts.append(part.assign_coords(source=("scored_notes", [str(path)])))
    if len({int(p["scored_notes"][0]) for p in parts}) < len(parts):
        raise DataError("two fits.nc have the same number of scored notes: one training-set size each")
    n_boot = min(p.sizes["boot"] for p in parts)
    parts = [p.isel(boot=slice(n_boot)) for p in parts]
    return xr.concat(parts, "scored_notes", join="outer").sortby("scored_notes")


def _slope(ln_p: np.ndarray, ln_n: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of ln N on ln P; NaN unless every point is finite."""
    if ln_p.size < MIN_SIZES or not np.all(np.isfinite(ln_n)):
        return np.nan, np.nan
    slope, intercept = np.polyfit(ln_p, ln_n, 1)
    return float(slope), float(intercept)


def fit_gamma(sizes: xr.Dataset, ci: float = 0.95) -> xr.Dataset:
    """γ and c of ln N* = γ ln P + c per depth, with the counted bootstrap interval of γ.

    Fitted over the sizes where the depth has N* (at least ``MIN_SIZES`` of them, else γ is NaN);
    each replica over the same sizes, and a replica in which one of them has no N* counts as
    unbounded.
    """
    all_p = np.log(sizes["scored_notes"].values.astype(np.float64))
    out = {k: [] for k in ("gamma", "gamma_lo", "gamma_hi", "log_prefactor", "gamma_fraction")}
    boots = []
    for d in sizes["depth"].values:
        at = sizes.sel(depth=d)
        used = np.isfinite(at["n_star"].values)  # the sizes with a transition at this depth
        ln_p = all_p[used]
        gamma, intercept = _slope(ln_p, np.log(at["n_star"].values[used]))
        replicas = at["n_star_boot"].transpose("boot", ...).values[:, used]
        boot = np.array([_slope(ln_p, np.log(row))[0] for row in replicas])
        lo, hi = counted_interval(boot, ci)
        for key, value in zip(out, (gamma, lo, hi, intercept, np.isfinite(boot).mean()), strict=True):
            out[key].append(value)
        boots.append(boot)
    ds = xr.Dataset(
        {k: ("depth", np.asarray(v, dtype=np.float64)) for k, v in out.items()}
        | {"gamma_sizes": ("depth", np.isfinite(sizes["n_star"].transpose("depth", ...).values).sum(1))}
        | {"gamma_boot": (("boot", "depth"), np.stack(boots, axis=1))},
        coords={"depth": sizes["depth"].values, "boot": sizes["boot"].values},
    )
    ds["gamma"].attrs = {
        "long_name": "exponent of N* = N(d, w_c*) in P (scored training notes)",
        "units": "1",
    }
    ds["gamma_lo"].attrs = {"long_name": "lower bound of gamma (a replica without N* counts as -inf)"}
    ds["gamma_hi"].attrs = {"long_name": "upper bound of gamma (a replica without N* counts as +inf)"}
    ds["log_prefactor"].attrs = {"long_name": "c of ln N* = gamma ln P + c", "units": "1"}
    ds["gamma_fraction"].attrs = {"long_name": "fraction of bootstrap replicas with a gamma", "units": "1"}
    ds["gamma_sizes"].attrs = {"long_name": "sizes with N* (gamma is fitted over them)", "units": "1"}
    return ds.assign_attrs(ci=ci, min_sizes=MIN_SIZES)


def data_size(paths: Sequence[str | Path], ci: float = 0.95) -> xr.Dataset:
    """Gather N*(P) of each study and fit γ per depth: the training-set-size study."""
    sizes = collect(paths)
    return xr.merge([sizes, fit_gamma(sizes, ci)], combine_attrs="drop_conflicts")


def figure(ds: xr.Dataset) -> Figure:
    """N* against P per depth on log axes, with the fitted P^γ and the line N* = P."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from bachglass.figures_layout import bars, depth_colour

    fig, ax = plt.subplots(figsize=(5.0, 4.0), layout="constrained")
    p = ds["scored_notes"].values.astype(np.float64)
    for i, d in enumerate(ds["depth"].values):
        at = ds.sel(depth=d)
        colour = depth_colour(i)
        y = at["n_star"].values
        yerr = bars(y, at["n_star_lo"].values, at["n_star_hi"].values)
        label = f"d = {int(d)}"
        if np.isfinite(float(at["gamma"])):
            label += (
                f": γ = {float(at['gamma']):.2f} [{float(at['gamma_lo']):.2f}, {float(at['gamma_hi']):.2f}]"
            )
            ax.plot(p, np.exp(float(at["log_prefactor"])) * p ** float(at["gamma"]), color=colour, lw=1)
        ax.errorbar(p, y, yerr=yerr, fmt="o", color=colour, capsize=3, label=label)
    ax.plot(p, p, color="0.5", ls=":", lw=1, label="N* = P")
    ax.set(xscale="log", yscale="log", xlabel="P, scored notes of the training set", ylabel="N* = N(d, w_c*)")
    lo, hi = ax.get_ylim()  # plain numbers, 1-2-5 on the count axis: P and N* are counts
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xticks(p, [str(int(v)) for v in p])
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=9)
    ax.set_title("the transition in parameters against the data", fontsize=10)
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    """Gather the studies' fits.nc, fit γ, write data_size.nc (atomically) and the figure."""
    from bachglass.io import provenance, save_figure, write_netcdf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fits", nargs="+", type=Path, help="fits.nc of each training-set size")
    parser.add_argument("--out", type=Path, default=Path("results/data_size.nc"))
    parser.add_argument("--figure", type=Path, default=None, help="also draw N*(P) as FIGURE.png, .pdf")
    parser.add_argument("--ci", type=float, default=0.95)
    args = parser.parse_args(argv)
    ds = data_size(args.fits, args.ci)
    ds.attrs |= provenance({"fits": [str(path) for path in args.fits], "ci": args.ci}, __file__)
    write_netcdf(ds.drop_vars("source"), args.out)
    for d in ds["depth"].values:
        at = ds.sel(depth=d)
        pairs = zip(at["scored_notes"].values, at["n_star"].values, strict=True)
        stars = ", ".join(f"P {int(p)}: N* {float(n):.0f}" for p, n in pairs)
        print(
            f"d{int(d)}: {stars}; gamma {float(at['gamma']):.2f} [{float(at['gamma_lo']):.2f}, "
            f"{float(at['gamma_hi']):.2f}] ({float(at['gamma_fraction']):.0%} of replicas)"
        )
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        save_figure(figure(ds), args.figure, ["png", "pdf"], dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

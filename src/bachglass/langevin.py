"""The Langevin temperature sweep: its runs tiled along ``temperature``, and time-temperature scaling.

Kerr Winter & Janssen (arXiv 2405.13098) train with full-batch gradient descent plus noise at a
temperature T and find that the overlap Q(t_0, t_0 + t) of different T collapses onto one curve
against t / τ_e(T) (time-temperature superposition), with τ_e(T) a power law in T and no divergence
at T > 0. The noise itself is added in ``bachglass.sgd``; this module reads what the observables
step measured on each run.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from bachglass.errors import DataError
from bachglass.observables import combine_runs


def combine_sweep(datasets: Sequence[xr.Dataset], provenance: dict[str, Any]) -> xr.Dataset:
    """Tile per-run observables of several temperatures along (temperature, depth, width, seed).

    Each temperature's runs must form the full (depth, width, seed) grid, as in ``combine_runs``.
    """
    if not datasets:
        raise DataError("langevin: no runs to combine; list langevin.temperature, depth, width and seed")
    by_temperature: dict[float, list[xr.Dataset]] = {}
    for ds in datasets:
        if "temperature" not in ds.attrs:
            raise DataError("langevin: a run's observables carry no temperature; re-create them")
        by_temperature.setdefault(float(ds.attrs["temperature"]), []).append(ds)
    temperatures = sorted(by_temperature)
    parts = [combine_runs(by_temperature[t], provenance) for t in temperatures]
    for part in parts:
        part.attrs.pop("temperature", None)
    sweep = xr.concat(
        parts,
        dim=xr.DataArray(temperatures, dims="temperature", name="temperature"),
        data_vars="all",
        coords="minimal",
        compat="override",
        join="outer",
        combine_attrs="drop_conflicts",
    )
    sweep["temperature"].attrs = {"long_name": "Langevin temperature T", "units": "nat per note"}
    return sweep


def relaxation_power_law(tau: xr.DataArray) -> tuple[float, float]:
    """Slope and intercept of log10 τ against log10 T (a power law τ ∝ T^slope) over finite τ.

    ``tau`` has a ``temperature`` dim and may have others, which are averaged in log first.
    """
    other = [d for d in tau.dims if d != "temperature"]
    logt = np.log10(tau.where(np.isfinite(tau) & (tau > 0)))
    mean = logt.mean(other) if other else logt
    keep = np.isfinite(mean.values)
    if keep.sum() < 2:
        return float("nan"), float("nan")
    x = np.log10(mean["temperature"].values[keep])
    slope, intercept = np.polyfit(x, mean.values[keep], 1)
    return float(slope), float(intercept)


# name: (long_name, units) of the fits.nc variables of the sweep, on dim ``langevin_tau_w``
FIT_ATTRS = {
    "langevin_tau_e_exponent": ("slope of log10 tau_e against log10 T (tau_e ~ T^slope)", "1"),
    "langevin_tau_e_log10_prefactor": ("intercept of log10 tau_e against log10 T", "log10 SGD steps"),
    "langevin_tau_w": ("waiting time of the Langevin relaxation-time fit", "SGD steps"),
}


def relaxation_fits(sweep: xr.Dataset) -> xr.Dataset:
    """Fit the power law τ_e(T) ∝ T^slope at each waiting time of the sweep (fits.nc's ``langevin_*``).

    τ_e of every (depth, width, seed) at one temperature is averaged in log (:func:`relaxation_power_law`);
    a waiting time with finite τ_e at fewer than two temperatures gets NaN.
    """
    tau_w = sweep["tau_w"].values
    fits = [relaxation_power_law(sweep["tau_e"].sel(tau_w=t)) for t in tau_w]
    ds = xr.Dataset(
        {
            "langevin_tau_e_exponent": ("langevin_tau_w", [slope for slope, _ in fits]),
            "langevin_tau_e_log10_prefactor": ("langevin_tau_w", [intercept for _, intercept in fits]),
        },
        coords={"langevin_tau_w": tau_w},
    )
    for name, (long_name, units) in FIT_ATTRS.items():
        ds[name].attrs = {"long_name": long_name, "units": units}
    return ds

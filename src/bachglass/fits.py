"""Fits of the study: floors and phases, and the assembly of ``fits.nc``.

``study.nc`` (observables over depth, width, seed) in, the numbers of docs/science.md §1.7 and §5.3 out:
this module measures the floors, classifies each (depth, width) and assembles fits.nc; the power
laws of each run's loss live in :mod:`bachglass.loss_fits`, the critical fits in
:mod:`bachglass.critical` and the aging collapse in :mod:`bachglass.aging`.
"""

import logging
from dataclasses import asdict

import numpy as np
import xarray as xr

from bachglass.aging import collapse
from bachglass.critical import critical
from bachglass.fits_config import FitsConfig
from bachglass.loss_fits import POWER_LAW_VARS, power_laws, tail_fits
from bachglass.observables import NATS, smoothed_loss

log = logging.getLogger(__name__)

UNDER, OVER, UNDETERMINED = 1, 0, -1  # phase flags (CF flag_values)
FLAG_MEANINGS = "over under undetermined"
STUDY_VARIABLES = ("loss", "clip_fraction", "tau", "msd_lag", "diverged")  # what fit_study reads


def sgd_floor(L_inf: xr.DataArray) -> xr.DataArray:
    """Estimate the loss floor of the widest nets per depth: median over seeds of their fitted L_inf.

    docs/science.md §1.7 g: the late plateau of the widest nets. With full-batch steps there is no
    minibatch noise, so this is the floor of plain gradient descent on this budget; it is reported
    as measured and compared with the data floor, not assumed.
    """
    return L_inf.isel(width=-1).median("seed")


def classify(
    fit: xr.Dataset, floor_ref: xr.DataArray, factor: float, t_star: xr.DataArray | None = None
) -> xr.DataArray:
    """Phase of each (depth, width): under-parametrized, over-parametrized or undetermined.

    With the level ``factor`` x floor (max of data floor and SGD floor): under when L_inf lies
    above it in every seed and every fit window (clearly above both floors), over when it lies at or
    below it in every seed and window **and** every seed's loss came down to it within the budget
    (``t_star`` finite), otherwise undetermined. A net still falling far above the floor has its
    L_inf on the data-floor bound, an extrapolation: it is undetermined, not over. Without
    ``t_star``, the first studies' rule (the legacy ``phase_legacy``). The spread over seeds and
    windows is the uncertainty here, not the curve-fit sigma: late residuals are correlated and
    L_inf often sits on its bound, where a covariance says little. Diverged runs (NaN) are left
    out; a width with no valid run is undetermined.
    """
    level = factor * floor_ref
    valid = fit["L_inf"].notnull()
    under = ((fit["L_inf"] > level) | ~valid).all(("seed", "window"))
    below = (fit["L_inf"] <= level) | ~valid
    if t_star is not None:
        below = below & (np.isfinite(t_star) | ~valid)
    over = below.all(("seed", "window"))
    any_valid = valid.any(("seed", "window"))
    phase = xr.where(under & any_valid, UNDER, xr.where(over & any_valid, OVER, UNDETERMINED))
    return phase.astype(np.int8).rename("phase")


def crossing_time(smooth: xr.DataArray, level: xr.DataArray) -> xr.DataArray:
    """First step at which the smoothed loss is ≤ ``level``; +inf when never (t*, docs/science.md §1.7 g)."""
    reached = smooth <= level
    return smooth["step"].astype(np.float64).where(reached).min("time").fillna(np.inf)


def clipped_fraction(clip_fraction: xr.DataArray) -> xr.DataArray:
    """Fraction of all SGD steps of a run whose gradient was clipped (from the per-interval record)."""
    steps = np.diff(clip_fraction["step"].values, prepend=0).astype(np.float64)
    weights = xr.DataArray(steps, dims="time", coords={"time": clip_fraction["time"]})
    return (clip_fraction.fillna(0) * weights).sum("time") / steps.sum()


ATTRS = {  # name: (long_name, units)
    "alpha": ("power-law exponent of L - L_inf over the reported window", "1"),
    "L_inf": ("asymptotic loss of the power-law fit", NATS),
    "B": ("power-law amplitude at the end of the window: L = L_inf + B (t/t_end)^-alpha", NATS),
    "alpha_err": ("curve-fit standard error of alpha", "1"),
    "L_inf_err": ("curve-fit standard error of L_inf", NATS),
    "B_err": ("curve-fit standard error of B", NATS),
    "fit_rms": ("rms residual of ln L about the power-law fit", "1"),
    "alpha_windows": ("alpha for each fit window", "1"),
    "L_inf_windows": ("L_inf for each fit window", NATS),
    "alpha_window_spread": ("max - min of alpha over the fit windows", "1"),
    "grad_norm_peak": ("largest gradient norm of the run (before any clip)", "1"),
    "sgd_floor": ("SGD floor: measured at the study's (lr, batch size), else the widest nets' L_inf", NATS),
    "floor_ref": ("max(data floor, SGD floor)", NATS),
    "phase": ("phase from L_inf and t_star: 1 under-, 0 over-parametrized, -1 undetermined", "1"),
    "phase_legacy": ("phase from L_inf alone (the first rule: an unfinished net can be over)", "1"),
    "w_under_max": ("widest under-parametrized width", "1"),
    "w_over_min": ("narrowest over-parametrized width", "1"),
    "t_star": ("first step with smoothed loss <= floor_factor * floor_ref", "SGD steps"),
    "clipped_fraction": ("fraction of all SGD steps with a clipped gradient", "1"),
    "eps_valid": ("eps far enough above the floors for a learning time", "1"),
    "r2": ("R^2 of the linear fit of 1/tau in w (reached runs), weighted as the fit", "1"),
    "n_widths": ("widths that reached eps used in the critical fit", "1"),
    "w_fit_max": ("widest width inside the critical fit's window", "1"),
    "fit_fraction": ("fraction of bootstrap replicas with a critical fit", "1"),
    "w_c_star": ("interpolation transition: w_c extrapolated to eps -> 0", "1"),
    "w_c_star_lo": ("lower bound of w_c_star (a replica without a fit counts as -inf)", "1"),
    "w_c_star_hi": ("upper bound of w_c_star (a replica without a fit counts as +inf)", "1"),
    "w_c_star_slope": ("slope b of w_c(eps) = w_c_star + b eps", "1/(" + NATS + ")"),
    "w_c_star_boot": ("seed-bootstrap replicas of w_c_star", "1"),
    "window": ("start of the power-law fit window", "SGD steps"),
    "has_tail": ("the tail window (tail_factor tau(largest eps) to the end) spans tail_min_decades", "1"),
    "tail_start": ("start of the run's tail window", "SGD steps"),
    "tail_L_inf": ("asymptotic loss of the power-law fit over the run's tail window", NATS),
    "tail_alpha": ("power-law exponent of L - L_inf over the run's tail window", "1"),
    "tail_alpha_err": ("curve-fit standard error of tail_alpha", "1"),
    "tail_fit_rms": ("rms residual of ln L about the power law over the run's tail window", "1"),
    "tail_exp_rms": ("rms residual of ln L about an exponential approach over the same window", "1"),
    "r2_plain": ("unweighted R^2 of the linear fit of 1/tau in w (the legacy criterion's)", "1"),
    "tau_scatter": ("standard deviation of ln tau: seed scatter pooled over width and eps, and grid", "1"),
    "extrapolation_eps": ("eps used for w_c_star at every depth and replica", "1"),
    "nu_chi2": ("profile chi^2 of nu in tau = A (w - w_c)^-nu (w_c, A minimised)", "1"),
    "nu_grid": ("exponent nu of the profile", "1"),
    "nu_profile": ("best nu of the profile summed over the extrapolation eps", "1"),
    "nu_profile_lo": ("lower end of the 95% profile interval of nu", "1"),
    "nu_profile_hi": ("upper end of the 95% profile interval of nu", "1"),
    "nu_dchi2_1": ("profile chi^2 at nu = 1 minus its minimum (likelihood ratio of nu = 1)", "1"),
    "nu_dchi2_2": ("profile chi^2 at nu = 2 minus its minimum (likelihood ratio of nu = 2)", "1"),
    "w_c_star_fraction": ("fraction of bootstrap replicas with a w_c_star", "1"),
    "w_c_star_legacy": ("legacy w_c_star: each depth over its own 3 smallest fitted eps", "1"),
    "w_c_star_legacy_lo": ("lower bound of the legacy w_c_star (replicas with a fit only)", "1"),
    "w_c_star_legacy_hi": ("upper bound of the legacy w_c_star (replicas with a fit only)", "1"),
    "w_c_star_legacy_slope": ("slope of the legacy extrapolation", "1/(" + NATS + ")"),
    "w_c_star_legacy_boot": ("seed-bootstrap replicas of the legacy w_c_star", "1"),
    "n_star": ("parameters at the transition, N(d, w_c_star)", "1"),
    "n_star_lo": ("lower bound of N(d, w_c_star)", "1"),
    "n_star_hi": ("upper bound of N(d, w_c_star)", "1"),
    "n_star_boot": ("seed-bootstrap replicas of N(d, w_c_star)", "1"),
    "n_per_note_star": ("parameters per scored training note at the transition, N*/P", "1"),
    "n_per_note_star_lo": ("lower bound of N*/P", "1"),
    "n_per_note_star_hi": ("upper bound of N*/P", "1"),
    "n_per_note_star_boot": ("seed-bootstrap replicas of N*/P", "1"),
    "boot": ("seed-bootstrap replica", "1"),
}


def fit_study(
    study: xr.Dataset,
    config: FitsConfig,
    smoothing_decades: float,
    aging: xr.Dataset | None = None,
    measured_floor: float | None = None,
    n_scored_notes: int | None = None,
) -> xr.Dataset:
    """Every fit of the study (the ``fits.nc`` layout; docs/results.md).

    Diverged runs are left out of every fit. The floors are measured first because they bound the
    rest: a threshold ε closer to them than ``floor_factor`` is not used for learning times, and
    the phase of a net is judged against them. ``aging``, the longer runs of the aging subset, adds
    ``aging_*`` variables on their own ``aging_depth``, ``aging_width`` (``aging_seed``) dims.
    ``measured_floor``, the SGD floor measured at the study's own (η, B) (:mod:`bachglass.sgd_floor`),
    is the floor reference at every depth when given; without it the widest nets' asymptote is.
    ``n_scored_notes`` (P, the scored notes of the training set) adds N*/P.
    """
    diverged = study["diverged"].astype(bool)
    smooth = smoothed_loss(study["loss"].where(~diverged), smoothing_decades)
    data_floor = float(study.attrs["data_floor"])
    windows = power_laws(smooth, config.window_start, config.ci, data_floor)
    reported = windows.isel(window=0, drop=True)
    sgd = sgd_floor(reported["L_inf"])
    if measured_floor is not None and np.isfinite(measured_floor):
        sgd = xr.full_like(sgd, measured_floor)
    floor_ref = np.fmax(sgd, data_floor)  # NaN SGD floor (widest nets all diverged): the data floor
    t_star = crossing_time(smooth, config.floor_factor * floor_ref)
    phase = classify(windows, floor_ref, config.floor_factor, t_star)
    eps_valid = (data_floor + study["eps"] >= config.floor_factor * floor_ref).transpose("depth", "eps")
    widths = study["width"].astype(np.float64)
    ds = xr.Dataset(
        {
            **{name: reported[name] for name in POWER_LAW_VARS},
            "alpha_windows": windows["alpha"],
            "L_inf_windows": windows["L_inf"],
            "alpha_window_spread": windows["alpha"].max("window") - windows["alpha"].min("window"),
            "sgd_floor": sgd,
            "floor_ref": floor_ref,
            "phase": phase,
            "phase_legacy": classify(windows, floor_ref, config.floor_factor),
            "w_under_max": widths.where(phase == UNDER).max("width"),
            "w_over_min": widths.where(phase == OVER).min("width"),
            "t_star": t_star,
            "clipped_fraction": clipped_fraction(study["clip_fraction"]).where(~diverged),
            "eps_valid": eps_valid,
            "diverged": diverged,
        }
    )
    if "grad_norm_max" in study:  # logged by the trainer whether or not a clip acts; kept for a
        ds["grad_norm_peak"] = study["grad_norm_max"].max("time")  # diverged run: its spike is the news
    tau_drop = study["tau"].sel(eps=study["eps"].max(), drop=True)  # the run's own learning drop
    parts = [
        ds,
        tail_fits(smooth, tau_drop, config, data_floor),
        critical(study, eps_valid, config, n_scored_notes),
        collapse_aging(study, config),
    ]
    if aging is not None:
        parts.append(
            fit_aging_subset(aging, floor_ref.reindex(depth=aging["depth"]), config, smoothing_decades)
        )
    ds = xr.merge(parts)
    for name, (long_name, units) in ATTRS.items():
        if name in ds.variables:
            ds[name].attrs = {"long_name": long_name, "units": units}
    for name in ("phase", "phase_legacy"):
        ds[name].attrs |= {"flag_values": [OVER, UNDER, UNDETERMINED], "flag_meanings": FLAG_MEANINGS}
    excluded = diverged_runs(study) + [
        f"aging {run}" for run in ([] if aging is None else diverged_runs(aging))
    ]
    if excluded:
        log.warning("%d runs diverged and are left out of every fit: %s", len(excluded), "; ".join(excluded))
    ds.attrs = {"data_floor": data_floor, "smoothing_decades": smoothing_decades}
    if n_scored_notes:
        ds.attrs["n_scored_notes"] = int(n_scored_notes)
    ds.attrs["excluded_runs"] = "; ".join(excluded) or "none"  # netCDF attrs hold no empty list
    ds.attrs |= {k: v for k, v in asdict(config).items() if k != "window_start"}  # the fits' settings
    ds.attrs |= {k: study.attrs[k] for k in ("lr", "batch_size", "clip_norm", "steps") if k in study.attrs}
    return ds


def diverged_runs(study: xr.Dataset) -> list[str]:
    """Name the diverged runs (NaN, or back above the initial loss) as ``d1_w8_s0 (diverged at step 123)``."""
    flags = study["diverged"].astype(bool).stack(run=("depth", "width", "seed"))
    steps = study["diverged_step"].stack(run=("depth", "width", "seed")) if "diverged_step" in study else None
    runs = []
    for k in np.flatnonzero(flags.values):
        d, w, s = (int(v) for v in flags["run"].values[k])
        where = "" if steps is None else f" at step {int(steps.values[k])}"
        runs.append(f"d{d}_w{w}_s{s} (diverged{where})")
    return runs


def fit_aging_subset(
    aging: xr.Dataset, floor_ref: xr.DataArray, config: FitsConfig, smoothing_decades: float
) -> xr.Dataset:
    """Phase, t* and aging collapse of the longer runs; dims and variables prefixed ``aging_``.

    Judged against the floors of the main grid at the same depth (``floor_ref``; the data floor
    where the grid lacks that depth), so that a net's phase means the same in both.
    """
    diverged = aging["diverged"].astype(bool)
    smooth = smoothed_loss(aging["loss"].where(~diverged), smoothing_decades)
    windows = power_laws(smooth, config.window_start, config.ci, float(aging.attrs["data_floor"]))
    floor_ref = floor_ref.fillna(float(aging.attrs["data_floor"]))
    t_star = crossing_time(smooth, config.floor_factor * floor_ref)
    reported = windows.isel(window=0, drop=True)
    ds = xr.Dataset(
        {
            **{name: reported[name] for name in ("L_inf", "alpha", "fit_rms")},
            "phase": classify(windows, floor_ref, config.floor_factor, t_star),
            "phase_legacy": classify(windows, floor_ref, config.floor_factor),
            "t_star": t_star,
            "clipped_fraction": clipped_fraction(aging["clip_fraction"]).where(~diverged),
            "steps": xr.DataArray(int(aging["step"].values[-1])),
        }
    )
    ds = xr.merge([ds, collapse_aging(aging, config)])
    for name in ds.data_vars:
        if name in ATTRS:
            long_name, units = ATTRS[name]
            ds[name].attrs = {"long_name": f"{long_name} (aging subset)", "units": units}
    ds["steps"].attrs = {"long_name": "SGD steps of each aging-subset run", "units": "SGD steps"}
    dims = {d: f"aging_{d}" for d in ("depth", "width", "seed", "tau_w_pair")}
    return ds.rename({**{v: f"aging_{v}" for v in ds.data_vars}, **dims})


def aging_view(fits: xr.Dataset) -> xr.Dataset | None:
    """Rename the aging subset's fits to the grid's names (depth, width, mu, ...); None without one.

    The grid's transition (w_c*, the phase boundary, the floors) is added for the subset's depths,
    so that code written for the grid's fits reads the subset's unchanged.
    """
    if not fits.sizes.get("aging_width", 0) or not fits.sizes.get("aging_depth", 0):
        return None
    names = [str(v) for v in fits.data_vars if str(v).startswith("aging_")]
    view = fits[names].rename({v: v.removeprefix("aging_") for v in names})
    view = view.rename({d: d.removeprefix("aging_") for d in view.dims if d.startswith("aging_")})
    grid = ("w_c_star", "w_c_star_lo", "w_c_star_hi", "w_under_max", "w_over_min", "sgd_floor", "floor_ref")
    main = fits[list(grid)].reindex(depth=view["depth"].values)
    return xr.merge([view, main]).assign_attrs(fits.attrs)


def collapse_aging(study: xr.Dataset, config: FitsConfig) -> xr.Dataset:
    """Compute the aging collapse metrics of :func:`bachglass.aging.collapse` with this config.

    For Δ as it is (``mu``, ``S_*``) and, where the study has it, for Δ normalised by |θ(τ_w)|²/N
    (``mu_norm``, ``S_*_norm``): under cross-entropy the weights grow, which alone makes Δ age.
    """
    diverged, args = study["diverged"].astype(bool), (config.aging_tau_w_min, config.mu_max, config.ci)
    raw = collapse(study["msd_lag"], diverged, *args)
    if "msd_normalised_lag" not in study:
        return raw
    norm = collapse(study["msd_normalised_lag"], diverged, *args)
    norm = norm.rename({name: f"{name}_norm" for name in norm.data_vars})
    for name in norm.data_vars:
        norm[name].attrs["long_name"] += ", of Delta normalised by |theta(tau_w)|^2/N"
    return xr.merge([raw, norm])


def json_number(value: float) -> float | str | None:
    """Make a JSON-safe number, rounded to 5 significant digits.

    None for NaN (no fit); "inf" or "-inf" for an unbounded interval end: JSON has no infinity, and
    an unbounded bound is not a missing one.
    """
    value = float(value)
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(f"{value:.5g}") if np.isfinite(value) else None


def metrics(fits: xr.Dataset) -> dict:
    """Collect the headline numbers for ``dvc metrics``: per depth w_c*, nu, floors and collapse metrics.

    nu is the free exponent at the smallest threshold with a fit; collapse metrics are medians over
    the (depth, width) of one phase (under: below the transition, over: above it).
    """
    out: dict = {"data_floor": json_number(fits.attrs["data_floor"])}
    excluded = str(fits.attrs.get("excluded_runs", "none"))
    out["excluded_runs"] = [] if excluded == "none" else excluded.split("; ")  # diverged: in no fit
    for d in fits["depth"].values:
        f = fits.sel(depth=d)
        fitted = f["eps"].values[np.isfinite(f["w_c"].values)]
        keys = ("w_c_star", "w_c_star_lo", "w_c_star_hi", "sgd_floor", "nu_profile", "nu_dchi2_1")
        keys += tuple(k for k in ("n_star", "n_star_lo", "n_star_hi", "n_per_note_star") if k in f)
        row = {k: json_number(f[k]) for k in keys}
        row["w_c"] = {f"eps_{e:g}": json_number(f["w_c"].sel(eps=e)) for e in f["eps"].values}
        if fitted.size:
            e = fitted.min()
            row |= {
                "nu_eps": json_number(e),
                **{k: json_number(f[k].sel(eps=e)) for k in ("nu", "nu_lo", "nu_hi", "r2")},
            }
        for name, flag in (("under", UNDER), ("over", OVER)):
            sel = f.where(f["phase"] == flag)
            for k in ("mu", "S_simple", "S_mu", "S_short", "S_long", "mu_norm"):
                if k in sel:
                    row[f"{k}_{name}"] = json_number(sel[k].median()) if sel[k].notnull().any() else None
        row["clipped_fraction_max"] = json_number(f["clipped_fraction"].max())
        if "grad_norm_peak" in f:
            row["grad_norm_max"] = json_number(f["grad_norm_peak"].max())
        out[f"d{int(d)}"] = row
    return out

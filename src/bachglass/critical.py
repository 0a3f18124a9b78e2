"""Critical slowing down: w_c(d, ε) from 1/τ = (w - w_c)/A, and w_c* at ε → 0 (nu: :mod:`bachglass.exponent`).

Learning times τ(ε) that were never reached are right-censored (+inf), not dropped: they bound the
line from below. Each τ is uncertain by the checkpoint grid and by the seed-to-seed scatter of the
run's time scale; both enter the weights (``tau_scatter`` is the scatter, pooled over the study).
Confidence intervals come from a bootstrap over seeds, resampled independently per width (runs of
different widths are independent). A replica without a fit is counted, not dropped: it makes an
interval unbounded on that side (``_counted_quantiles``), so that "no fit in 30 % of the replicas"
reads as "not determined", not as a narrow interval from the lucky 70 %.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from scipy.optimize import least_squares

from bachglass.exponent import NU_GRID, free_exponent_fit, nu_profile, pooled_profile

if TYPE_CHECKING:
    from bachglass.fits_config import FitsConfig


@dataclass(frozen=True)
class CriticalFit:
    """1/τ = (w - w_c)/A over the widths ``used``; R² of the uncensored points, weighted as the fit."""

    w_c: float
    A: float
    r2: float
    n_widths: int
    n_censored: int
    w_max: float
    r2_plain: float = np.nan  # unweighted R² (the legacy criterion's)


NO_FIT = CriticalFit(np.nan, np.nan, np.nan, 0, 0, np.nan)


def _linear_censored(
    w: np.ndarray, tau: np.ndarray, t_max: float, rel_err: float
) -> tuple[float, float] | None:
    """Weighted least squares of 1/τ = s (w - w_c), with censored points as one-sided constraints.

    sigma(1/τ) = rel_err/τ: τ is known to a relative error (checkpoint grid and seed scatter). A
    censored point (τ = +inf: not reached by t_max) says only 1/τ < 1/t_max; it adds a residual only
    when the line predicts a learning time shorter than the run (a Tobit-like hinge), measured
    relative to the prediction like the reached points' errors: one seed stuck on a plateau then
    weighs like one outlier (at most 1/rel_err), instead of overruling every reached run. The
    solution does not depend on the value of ``rel_err``, only on its being relative. Returns (w_c, s).
    """
    done = np.isfinite(tau)
    y, sig = 1.0 / tau[done], rel_err / tau[done]
    wt = 1.0 / sig**2
    X = np.stack([np.ones(done.sum()), w[done]], axis=1)
    c0, c1 = np.linalg.solve(X.T @ (X * wt[:, None]), X.T @ (wt * y))
    if c1 <= 0:
        return None
    w_c, s = -c0 / c1, c1
    cens_w, y_c = w[~done], 1.0 / t_max
    if not np.any(s * (cens_w - w_c) > y_c):
        return w_c, s

    def residual(p: np.ndarray) -> np.ndarray:
        on = (p[1] * (w[done] - p[0]) - y) / sig
        pred = p[1] * (cens_w - p[0])
        off = np.where(pred > y_c, (pred - y_c) / (rel_err * np.maximum(pred, y_c)), 0.0)
        return np.concatenate([on, off])

    fit = least_squares(residual, [w_c, s], bounds=([-np.inf, 1e-15], [np.inf, np.inf]), x_scale="jac")
    return float(fit.x[0]), float(fit.x[1])


def _r2(y: np.ndarray, y_hat: np.ndarray, wt: np.ndarray) -> float:
    """R² = 1 - Σ wt (y - ŷ)² / Σ wt (y - ȳ)², ȳ the weighted mean."""
    mean = np.sum(wt * y) / np.sum(wt)
    return float(1.0 - np.sum(wt * (y - y_hat) ** 2) / np.sum(wt * (y - mean) ** 2))


def critical_fit(
    w: np.ndarray, tau: np.ndarray, t_max: float, rel_err: float, ratio: float, min_widths: int
) -> CriticalFit:
    """w_c and A from the lowest widths that reached ε, as many as lie within ``ratio`` x w_c.

    ``w`` and ``tau`` are one point per run (seeds flattened); τ = +inf is censored, NaN (diverged)
    is dropped. Far above w_c the learning time saturates at the time the loss needs to fall at
    all, so 1/τ is linear in w only near w_c: windows [lowest reached width, k-th] are tried for
    k = min_widths, … and the largest one whose top width is ≤ ratio x its own w_c is kept
    (self-consistent; no width is dropped by hand). Censored runs up to the window top constrain
    the line from below (see :func:`_linear_censored`). R² is weighted as the fit is (1/τ² x const).
    """
    keep = ~np.isnan(tau)
    w, tau = w[keep], tau[keep]
    reached = np.unique(w[np.isfinite(tau)])
    best = NO_FIT
    for k in range(min_widths, reached.size + 1):
        top = reached[k - 1]
        window = w <= top
        if np.unique(w[window & np.isfinite(tau)]).size < min_widths:
            continue
        fit = _linear_censored(w[window], tau[window], t_max, rel_err)
        if fit is None or top > ratio * fit[0]:
            continue
        w_c, s = fit
        done = window & np.isfinite(tau)
        y, y_hat = 1.0 / tau[done], s * (w[done] - w_c)
        r2, r2_plain = _r2(y, y_hat, tau[done] ** 2), _r2(y, y_hat, np.ones(y.size))
        n_cens = int(np.sum(window & ~np.isfinite(tau)))
        best = CriticalFit(w_c, 1.0 / s, r2, k, n_cens, float(top), r2_plain)
    return best


def extrapolate(eps: np.ndarray, w_c: np.ndarray, n: int) -> tuple[float, float]:
    """Legacy w_c* (kept for the old criteria): a line over the ``n`` smallest ε with a finite w_c.

    Which ε enter depends on which fits succeeded, so it differs between depths and replicas; the
    current estimate is :func:`extrapolate_fixed`.
    """
    ok = np.isfinite(w_c)
    e, y = eps[ok], w_c[ok]
    order = np.argsort(e)[:n]
    if order.size < 2:
        return np.nan, np.nan
    slope, intercept = np.polyfit(e[order], y[order], 1)
    return float(intercept), float(slope)


def extrapolation_set(eps: np.ndarray, eps_valid: np.ndarray, n: int) -> np.ndarray:
    """Pick the ``n`` smallest ε valid at every depth (a mask over ``eps``): one set for the study.

    Fixed by the floors alone, before any fit: every depth and every bootstrap replica extrapolates
    over the same thresholds.
    """
    valid = np.asarray(eps_valid, dtype=bool).reshape(-1, eps.size).all(axis=0)
    chosen = np.flatnonzero(valid)[np.argsort(eps[valid], kind="stable")][:n]
    mask = np.zeros(eps.size, dtype=bool)
    mask[chosen] = True
    return mask


def extrapolate_fixed(eps: np.ndarray, w_c: np.ndarray, use: np.ndarray) -> tuple[float, float]:
    """w_c* and slope of w_c(ε) = w_c* + b ε over the ε of ``use``: NaN unless every one has a fit.

    Linear in ε over the smallest thresholds (docs/science.md §1.7 e): with two to four thresholds
    a free exponent would not be determined. Fewer than two thresholds: NaN.
    """
    if use.sum() < 2 or not np.isfinite(w_c[use]).all():
        return np.nan, np.nan
    slope, intercept = np.polyfit(eps[use], w_c[use], 1)
    return float(intercept), float(slope)


FIELDS = ("w_c", "A", "nu", "r2", "n_widths", "w_fit_max", "r2_plain")


def _critical_all(
    widths: np.ndarray,
    tau: np.ndarray,
    eps: np.ndarray,
    use: np.ndarray,
    t_max: float,
    sigma: np.ndarray,
    config: FitsConfig,
    profile: bool = False,
) -> dict[str, np.ndarray]:
    """Fit every (depth, ε) of τ (depth, width, seed, eps) with ln-τ scatter ``sigma`` per depth.

    Returns arrays (depth, eps) named :data:`FIELDS`, the per-depth w_c* and its slope (over the ε of
    ``use``, and the legacy ones), and with ``profile`` χ²(nu) (depth, eps, nu grid).
    """
    n_depth, _, n_seed, n_eps = tau.shape
    out = {name: np.full((n_depth, n_eps), np.nan) for name in FIELDS}
    for name in ("w_c_star", "w_c_star_slope", "w_c_star_legacy", "w_c_star_legacy_slope"):
        out[name] = np.full(n_depth, np.nan)
    if profile:
        out["nu_chi2"] = np.full((n_depth, n_eps, NU_GRID.size), np.nan)
    w = np.repeat(widths, n_seed)
    for d in range(n_depth):
        rel = float(np.expm1(sigma[d]))
        for e in range(n_eps):
            t = tau[d, :, :, e].ravel()
            lin = critical_fit(w, t, t_max, rel, config.max_width_ratio, config.min_widths)
            values = (lin.w_c, lin.A, np.nan, lin.r2, lin.n_widths, lin.w_max, lin.r2_plain)
            for name, value in zip(FIELDS, values, strict=True):
                out[name][d, e] = value
            out["nu"][d, e] = free_exponent_fit(w, t, t_max, rel, lin.w_max, lin)[2]
            if profile:
                out["nu_chi2"][d, e] = nu_profile(w, t, t_max, float(sigma[d]), lin.w_max, lin)
        out["w_c_star"][d], out["w_c_star_slope"][d] = extrapolate_fixed(eps, out["w_c"][d], use)
        legacy = extrapolate(eps, out["w_c"][d], config.extrapolation_eps)
        out["w_c_star_legacy"][d], out["w_c_star_legacy_slope"][d] = legacy
    return out


def _quantiles(boot: np.ndarray, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bootstrap quantiles along the first axis over the replicas with a fit (legacy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no fit in any replica
        lo, hi = np.nanquantile(boot, q, axis=0)
    return lo, hi


def _counted_quantiles(boot: np.ndarray, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap quantiles along the first axis with a replica without a fit counted as unbounded.

    A NaN replica is -inf for the lower bound and +inf for the upper one: when more than (1 - ci)/2
    of the replicas have no fit, that side of the interval is infinite. Order statistics, no
    interpolation (which would turn -inf into NaN).
    """
    lo = np.quantile(np.where(np.isnan(boot), -np.inf, boot), q[0], axis=0, method="lower")
    hi = np.quantile(np.where(np.isnan(boot), np.inf, boot), q[1], axis=0, method="higher")
    return lo, hi


def counted_interval(boot: np.ndarray, ci: float) -> tuple[float, float]:
    """Return the ``ci`` interval of 1-D replicas, a replica without a value counted (see above)."""
    lo, hi = _counted_quantiles(np.asarray(boot, dtype=np.float64), [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def _bootstrap_seeds(tau: np.ndarray, rng: np.random.Generator, per_decade: float) -> np.ndarray:
    """τ with seeds resampled with replacement per (depth, width), and placed inside its grid interval.

    A learning time is the first checkpoint past the threshold: the crossing lies anywhere in the
    log interval before it (1/``per_decade`` decade). Drawing it there (log-uniform) puts the
    checkpoint-grid resolution into the interval; seeds that crossed at the same checkpoint would
    otherwise give a zero-width interval. (The point fit uses the log-middle of the interval.)
    """
    n_depth, n_width, n_seed, _ = tau.shape
    pick = rng.integers(0, n_seed, size=(n_depth, n_width, n_seed))
    resampled = np.take_along_axis(tau, pick[..., None], axis=2)
    return resampled * 10 ** (-rng.random(resampled.shape) / per_decade)


def tau_scatter(tau: np.ndarray, per_decade: float) -> np.ndarray:
    """Estimate the sd of ln τ per depth: seed scatter pooled over (width, ε), plus the grid's.

    The seed part is the pooled within-(width, ε) standard deviation over the seeds that reached ε
    (Σ (ln τ - mean)² / Σ (n - 1)); the grid part is that of a log-uniform position inside one
    checkpoint interval, ln 10 / (per_decade √12). A depth with no two seeds reaching the same ε
    gets the grid part only.
    """
    ln = np.log(np.where(np.isfinite(tau) & (tau > 0), tau, np.nan))  # (depth, width, seed, eps)
    n = np.isfinite(ln).sum(axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ss = np.nansum((ln - np.nanmean(ln, axis=2, keepdims=True)) ** 2, axis=2)
    dof = np.clip(n - 1, 0, None).sum(axis=(1, 2))
    seed = np.where(dof > 0, ss.sum(axis=(1, 2)) / np.maximum(dof, 1), 0.0)
    grid = np.log(10) / (per_decade * np.sqrt(12))
    return np.sqrt(seed + grid**2)


CRITICAL_VARS = {
    "w_c": ("critical width: 1/tau = (w - w_c)/A", "1"),
    "A": ("critical amplitude A in tau = A/(w - w_c)", "SGD steps"),
    "nu": ("free exponent in tau = A (w - w_c)^-nu", "1"),
}


def _n_at(widths: np.ndarray, n_params: np.ndarray, w: np.ndarray) -> np.ndarray:
    """N(d, w) at real widths: the exact quadratic through the grid's counts (N is quadratic in w).

    ±inf (an unbounded interval) maps to ±inf; NaN stays NaN. A width below 0 (an interval that
    extrapolates that far) counts as 0, where N is smallest, so that N stays monotone in w.
    """
    coeffs = np.polyfit(widths, n_params, min(2, widths.size - 1))
    finite = np.isfinite(w)
    return np.where(finite, np.polyval(coeffs, np.clip(np.where(finite, w, 0.0), 0.0, None)), w)


def critical(
    study: xr.Dataset, eps_valid: xr.DataArray, config: FitsConfig, n_scored_notes: int | None = None
) -> xr.Dataset:
    """w_c(d, ε), A, nu with seed-bootstrap CIs, the profile of nu, w_c*(d) and N(d, w_c*).

    Invalid thresholds (too close to a floor, ``eps_valid`` false) get no fit. w_c* extrapolates
    over one set of ε (:func:`extrapolation_set`) at every depth and in every replica; the legacy
    w_c* (each depth its own fitted ε) is kept for the old criteria. The bootstrap replicas are
    kept (``*_boot``) so that differences (w_c at two ε, w_c* at two depths) get their own CIs
    downstream. With ``study["n_parameters"]`` the transition is also counted in parameters,
    N* = N(d, w_c*), and with ``n_scored_notes`` (P, the training set's scored notes) as N*/P.
    """
    diverged = study["diverged"].astype(bool) if "diverged" in study else False
    tau = study["tau"].where(~diverged)  # a diverged run is left out, not censored
    valid = xr.DataArray(eps_valid).broadcast_like(study["tau"].isel(width=0, seed=0, drop=True))
    valid = valid.transpose("depth", "eps")
    tau = tau.transpose("depth", "width", "seed", "eps").where(valid).values  # NaN: not fitted
    widths, eps = study["width"].values.astype(np.float64), study["eps"].values
    t_max = float(study["step"].values[-1])
    per_decade = float(study.attrs["checkpoints_per_decade"])
    sigma = tau_scatter(tau, per_decade)
    use = extrapolation_set(eps, valid.values, config.extrapolation_eps)
    # the crossing lies in the grid interval before the checkpoint τ: its log-middle for the point fit
    fit = (widths, eps, use, t_max, sigma, config)
    point = _critical_all(widths, tau * 10 ** (-0.5 / per_decade), *fit[1:], profile=True)
    rng = np.random.default_rng(config.seed)
    reps = [
        _critical_all(widths, _bootstrap_seeds(tau, rng, per_decade), *fit[1:]) for _ in range(config.n_boot)
    ]
    boot = {name: np.stack([r[name] for r in reps]) for name in reps[0]}
    q = [(1 - config.ci) / 2, (1 + config.ci) / 2]
    dims, coords = ("depth", "eps"), {"depth": study["depth"], "eps": study["eps"]}
    ds = xr.Dataset(coords=coords)
    for name in CRITICAL_VARS:
        ds[name] = (dims, point[name])
        ds[f"{name}_boot"] = (("boot", *dims), boot[name])
        lo, hi = (_quantiles if name == "nu" else _counted_quantiles)(boot[name], q)
        no_fit = ~np.isfinite(point[name])  # no interval around a fit the data do not give
        ds[f"{name}_lo"] = (dims, np.where(no_fit, np.nan, lo))
        ds[f"{name}_hi"] = (dims, np.where(no_fit, np.nan, hi))
    ds["r2"] = (dims, point["r2"])
    ds["r2_plain"] = (dims, point["r2_plain"])
    ds["fit_fraction"] = (dims, np.isfinite(boot["w_c"]).mean(axis=0))
    ds["n_widths"] = (dims, np.nan_to_num(point["n_widths"]).astype(np.int64))
    ds["w_fit_max"] = (dims, point["w_fit_max"])
    ds["tau_scatter"] = ("depth", sigma)
    ds["extrapolation_eps"] = ("eps", use)
    ds["nu_chi2"] = ((*dims, "nu_grid"), point["nu_chi2"])
    pooled = np.array([pooled_profile(point["nu_chi2"][d][use]) for d in range(sigma.size)])
    for k, name in enumerate(("nu_profile", "nu_profile_lo", "nu_profile_hi", "nu_dchi2_1", "nu_dchi2_2")):
        ds[name] = ("depth", pooled[:, k])
    for name, counted in (("w_c_star", True), ("w_c_star_legacy", False)):
        ds[name] = ("depth", point[name])
        ds[f"{name}_slope"] = ("depth", point[f"{name}_slope"])
        ds[f"{name}_boot"] = (("boot", "depth"), boot[name])
        lo, hi = (_counted_quantiles if counted else _quantiles)(boot[name], q)
        no_fit = ~np.isfinite(point[name])
        ds[f"{name}_lo"] = ("depth", np.where(no_fit, np.nan, lo))
        ds[f"{name}_hi"] = ("depth", np.where(no_fit, np.nan, hi))
    ds["w_c_star_fraction"] = ("depth", np.isfinite(boot["w_c_star"]).mean(axis=0))
    if "n_parameters" in study:
        ds = ds.merge(_parameter_counts(study, ds, n_scored_notes))
    for name, (long_name, units) in CRITICAL_VARS.items():
        ds[name].attrs = {"long_name": long_name, "units": units}
        for suffix, what in (("_lo", "lower bound of"), ("_hi", "upper bound of"), ("_boot", "replicas of")):
            ds[name + suffix].attrs = {"long_name": f"seed-bootstrap {what} {name}", "units": units}
    return ds.assign_coords(boot=np.arange(config.n_boot), nu_grid=NU_GRID)


def _parameter_counts(study: xr.Dataset, ds: xr.Dataset, n_scored_notes: int | None) -> xr.Dataset:
    """N* = N(d, w_c*) with its interval and replicas, and N*/P when P is known (dims depth, boot)."""
    counts = study["n_parameters"]
    counts = counts.max("seed") if "seed" in counts.dims else counts
    widths = study["width"].values.astype(np.float64)
    out = xr.Dataset()
    n = {k: np.full(ds.sizes["depth"], np.nan) for k in ("", "_lo", "_hi")}
    n_boot = np.full(ds["w_c_star_boot"].shape, np.nan)
    for d in range(ds.sizes["depth"]):
        row = counts.isel(depth=d).values.astype(np.float64)
        for suffix in n:
            n[suffix][d] = _n_at(widths, row, np.array([float(ds[f"w_c_star{suffix}"][d])]))[0]
        n_boot[:, d] = _n_at(widths, row, ds["w_c_star_boot"].values[:, d])
    for suffix, values in n.items():
        out[f"n_star{suffix}"] = ("depth", values)
    out["n_star_boot"] = (("boot", "depth"), n_boot)
    if n_scored_notes:
        for suffix in ("", "_lo", "_hi"):
            out[f"n_per_note_star{suffix}"] = out[f"n_star{suffix}"] / float(n_scored_notes)
        out["n_per_note_star_boot"] = out["n_star_boot"] / float(n_scored_notes)
    return out

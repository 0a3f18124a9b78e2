"""Critical slowing down: w_c(d, ε) from 1/τ = (w - w_c)/A, the free exponent nu, and w_c* at ε → 0.

Learning times τ(ε) that were never reached are right-censored (+inf), not dropped: they bound the
line from below. Confidence intervals come from a bootstrap over seeds, resampled independently per
width (runs of different widths are independent), so they include the seed-to-seed scatter that a
curve-fit covariance misses.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from scipy.optimize import least_squares

if TYPE_CHECKING:
    from bachglass.fits import FitsConfig


@dataclass(frozen=True)
class CriticalFit:
    """1/τ = (w - w_c)/A over the widths ``used``; R² of the uncensored points."""

    w_c: float
    A: float
    r2: float
    n_widths: int
    n_censored: int
    w_max: float


NO_FIT = CriticalFit(np.nan, np.nan, np.nan, 0, 0, np.nan)


def _linear_censored(
    w: np.ndarray, tau: np.ndarray, t_max: float, rel_err: float
) -> tuple[float, float] | None:
    """Weighted least squares of 1/τ = s (w - w_c), with censored points as one-sided constraints.

    sigma(1/τ) = rel_err/τ: τ is known to one checkpoint interval of a log grid. A censored point (τ =
    +inf: not reached by t_max) says only 1/τ < 1/t_max; it adds a residual only when the line
    predicts a learning time shorter than the run (a Tobit-like hinge), measured relative to the
    prediction like the reached points' errors: one seed stuck on a plateau then weighs like one
    outlier (at most 1/rel_err), instead of overruling every reached run. Returns (w_c, s).
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


def critical_fit(
    w: np.ndarray, tau: np.ndarray, t_max: float, rel_err: float, ratio: float, min_widths: int
) -> CriticalFit:
    """w_c and A from the lowest widths that reached ε, as many as lie within ``ratio`` x w_c.

    ``w`` and ``tau`` are one point per run (seeds flattened); τ = +inf is censored, NaN (diverged)
    is dropped. Far above w_c the learning time saturates at the time the loss needs to fall at
    all, so 1/τ is linear in w only near w_c: windows [lowest reached width, k-th] are tried for
    k = min_widths, … and the largest one whose top width is ≤ ratio x its own w_c is kept
    (self-consistent; no width is dropped by hand). Censored runs up to the window top constrain
    the line from below (see :func:`_linear_censored`).
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
        r2 = 1.0 - np.sum((y - y_hat) ** 2) / np.sum((y - y.mean()) ** 2)
        n_cens = int(np.sum(window & ~np.isfinite(tau)))
        best = CriticalFit(w_c, 1.0 / s, float(r2), k, n_cens, float(top))
    return best


def free_exponent_fit(
    w: np.ndarray, tau: np.ndarray, t_max: float, rel_err: float, w_max: float, start: CriticalFit
) -> tuple[float, float, float]:
    """τ = A (w - w_c)^-nu with nu free, in log τ, over the widths ≤ ``w_max``: (w_c, A, nu).

    Starts from the linear fit (nu = 1). w_c stays below the smallest width that reached ε (else its
    τ would be infinite); censored runs add a residual only if predicted to finish within t_max.
    """
    keep = ~np.isnan(tau) & (w <= w_max)
    w, tau = w[keep], tau[keep]
    done = np.isfinite(tau)
    if np.unique(w[done]).size < 3 or not np.isfinite(start.w_c):
        return np.nan, np.nan, np.nan
    ln_tau, sig = np.log(tau[done]), np.log1p(rel_err)
    w_top = float(w[done].min()) - 1e-6
    ln_tmax = np.log(t_max)

    def residual(p: np.ndarray) -> np.ndarray:
        gap = np.maximum(w - p[0], 1e-12)
        pred = p[1] - p[2] * np.log(gap)
        off = np.where(w[~done] > p[0], np.maximum(ln_tmax - pred[~done], 0.0), 0.0)
        return np.concatenate([(pred[done] - ln_tau) / sig, off / sig])

    w_c0 = min(start.w_c, w_top - 0.5)
    p0 = [w_c0, np.log(start.A), 1.0]
    lower, upper = [-np.inf, -np.inf, 0.05], [w_top, np.inf, 10.0]
    fit = least_squares(residual, p0, bounds=(lower, upper), x_scale="jac")
    return float(fit.x[0]), float(np.exp(fit.x[1])), float(fit.x[2])


def extrapolate(eps: np.ndarray, w_c: np.ndarray, n: int) -> tuple[float, float]:
    """w_c* and slope of w_c(ε) = w_c* + b ε over the ``n`` smallest ε with a finite w_c.

    Linear in ε over the smallest thresholds (docs/science.md §1.7 e, the default form): with three or
    four thresholds a free exponent gamma would not be determined. NaN when fewer than two points.
    """
    ok = np.isfinite(w_c)
    e, y = eps[ok], w_c[ok]
    order = np.argsort(e)[:n]
    if order.size < 2:
        return np.nan, np.nan
    slope, intercept = np.polyfit(e[order], y[order], 1)
    return float(intercept), float(slope)


def _critical_all(
    widths: np.ndarray, tau: np.ndarray, eps: np.ndarray, t_max: float, rel_err: float, config: FitsConfig
) -> np.ndarray:
    """Fit every (depth, ε) of τ (depth, width, seed, eps).

    Returns (depth, eps, 8): [w_c, A, nu, R², n_widths, w_c*, slope of w_c(ε), widest width fitted];
    w_c* and the slope are the same for every ε of a depth.
    """
    n_depth, _, n_seed, n_eps = tau.shape
    out = np.full((n_depth, n_eps, 8), np.nan)
    w = np.repeat(widths, n_seed)
    for d in range(n_depth):
        for e in range(n_eps):
            t = tau[d, :, :, e].ravel()
            lin = critical_fit(w, t, t_max, rel_err, config.max_width_ratio, config.min_widths)
            nu = free_exponent_fit(w, t, t_max, rel_err, lin.w_max, lin)[2]
            out[d, e, :5] = lin.w_c, lin.A, nu, lin.r2, lin.n_widths
            out[d, e, 7] = lin.w_max
        out[d, :, 5:7] = extrapolate(eps, out[d, :, 0], config.extrapolation_eps)
    return out


def _quantiles(boot: np.ndarray, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bootstrap quantiles along the first axis; NaN where no replica has a fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no fit in any replica
        lo, hi = np.nanquantile(boot, q, axis=0)
    return lo, hi


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


CRITICAL_VARS = {
    "w_c": ("critical width: 1/tau = (w - w_c)/A", "1"),
    "A": ("critical amplitude A in tau = A/(w - w_c)", "SGD steps"),
    "nu": ("free exponent in tau = A (w - w_c)^-nu", "1"),
}


def critical(study: xr.Dataset, eps_valid: xr.DataArray, config: FitsConfig) -> xr.Dataset:
    """w_c(d, ε), A, nu with seed-bootstrap CIs, and the extrapolated w_c*(d) (dims depth, eps, boot).

    Invalid thresholds (too close to a floor, ``eps_valid`` false) get no fit. The bootstrap
    replicas are kept (``*_boot``) so that differences (w_c at two ε, w_c* at two depths) get
    their own CIs downstream.
    """
    diverged = study["diverged"].astype(bool) if "diverged" in study else False
    tau = study["tau"].where(~diverged)  # a diverged run is left out, not censored
    tau = tau.transpose("depth", "width", "seed", "eps").where(eps_valid).values  # NaN: not fitted
    widths, eps = study["width"].values.astype(np.float64), study["eps"].values
    t_max = float(study["step"].values[-1])
    rel_err = 10 ** (1 / float(study.attrs["checkpoints_per_decade"])) - 1
    per_decade = float(study.attrs["checkpoints_per_decade"])
    # the crossing lies in the grid interval before the checkpoint τ: its log-middle for the point fit
    point = _critical_all(widths, tau * 10 ** (-0.5 / per_decade), eps, t_max, rel_err, config)
    rng = np.random.default_rng(config.seed)
    boot = np.stack(
        [
            _critical_all(widths, _bootstrap_seeds(tau, rng, per_decade), eps, t_max, rel_err, config)
            for _ in range(config.n_boot)
        ]
    )
    q = [(1 - config.ci) / 2, (1 + config.ci) / 2]
    dims, coords = ("depth", "eps"), {"depth": study["depth"], "eps": study["eps"]}
    ds = xr.Dataset(coords=coords)
    for i, name in enumerate(CRITICAL_VARS):
        ds[name] = (dims, point[..., i])
        ds[f"{name}_boot"] = (("boot", *dims), boot[..., i])
        lo, hi = _quantiles(boot[..., i], q)
        no_fit = ~np.isfinite(point[..., i])  # no interval around a fit the data do not give
        ds[f"{name}_lo"], ds[f"{name}_hi"] = (
            (dims, np.where(no_fit, np.nan, lo)),
            (dims, np.where(no_fit, np.nan, hi)),
        )
    ds["r2"] = (dims, point[..., 3])
    ds["fit_fraction"] = (dims, np.isfinite(boot[..., 0]).mean(axis=0))
    ds["n_widths"] = (dims, np.nan_to_num(point[..., 4]).astype(np.int64))
    ds["w_fit_max"] = (dims, point[..., 7])
    ds["w_c_star"] = ("depth", point[:, 0, 5])
    ds["w_c_star_slope"] = ("depth", point[:, 0, 6])
    ds["w_c_star_boot"] = (("boot", "depth"), boot[:, :, 0, 5])
    lo, hi = _quantiles(boot[:, :, 0, 5], q)
    no_fit = ~np.isfinite(point[:, 0, 5])
    ds["w_c_star_lo"], ds["w_c_star_hi"] = (
        ("depth", np.where(no_fit, np.nan, lo)),
        ("depth", np.where(no_fit, np.nan, hi)),
    )
    for name, (long_name, units) in CRITICAL_VARS.items():
        ds[name].attrs = {"long_name": long_name, "units": units}
        for suffix, what in (("_lo", "lower bound of"), ("_hi", "upper bound of"), ("_boot", "replicas of")):
            ds[name + suffix].attrs = {"long_name": f"seed-bootstrap {what} {name}", "units": units}
    return ds.assign_coords(boot=np.arange(config.n_boot))

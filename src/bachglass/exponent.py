"""The critical exponent nu of τ = A (w - w_c)^-nu: a free fit and its profile likelihood.

The linear fits of :mod:`bachglass.critical` assume nu = 1; here nu is free. The profile χ²(nu)
(w_c and A minimised at each nu) gives a likelihood-ratio test of nu = 1 against free nu, and of
nu = 2, which is how check 3 judges "τ ∝ 1/(w - w_c)" (docs/calibration.md gives its power).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import chi2


class LinearFit(Protocol):
    """The linear fit (nu = 1) a free fit starts from: :class:`bachglass.critical.CriticalFit`."""

    w_c: float
    A: float


NU_GRID = np.round(np.arange(0.25, 4.0001, 0.05), 2)  # the profile of nu is tabulated here
LEVEL = 0.95  # of the profile test of nu
DCHI2 = float(chi2.ppf(LEVEL, 1))  # 3.84: a nu is rejected when its profile lies this far above the best


def _power_law_residual(
    w: np.ndarray, tau: np.ndarray, t_max: float, sigma: float
) -> tuple[np.ndarray, float]:
    """Build the residual function of ln τ = ln A - nu ln(w - w_c) over (w_c, ln A, nu), and w_c's bound.

    Reached runs: (prediction - ln τ)/sigma. Censored runs: a residual only where the model predicts
    them to finish within t_max (w above w_c, predicted τ < t_max). w_c stays below the smallest
    width that reached ε (else its τ would be infinite).
    """
    done = np.isfinite(tau)
    ln_tau, ln_tmax = np.log(tau[done]), np.log(t_max)
    w_top = float(w[done].min()) - 1e-6

    def residual(p: np.ndarray) -> np.ndarray:
        gap = np.maximum(w - p[0], 1e-12)
        pred = p[1] - p[2] * np.log(gap)
        off = np.where(w[~done] > p[0], np.maximum(ln_tmax - pred[~done], 0.0), 0.0)
        return np.concatenate([(pred[done] - ln_tau) / sigma, off / sigma])

    return residual, w_top


def _window(w: np.ndarray, tau: np.ndarray, w_max: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Select a critical fit's window of runs (diverged dropped); None with under 3 reached widths."""
    keep = ~np.isnan(tau) & (w <= w_max)
    w, tau = w[keep], tau[keep]
    return (w, tau) if np.unique(w[np.isfinite(tau)]).size >= 3 else None


def free_exponent_fit(
    w: np.ndarray, tau: np.ndarray, t_max: float, rel_err: float, w_max: float, start: LinearFit
) -> tuple[float, float, float]:
    """τ = A (w - w_c)^-nu with nu free, in log τ, over the widths ≤ ``w_max``: (w_c, A, nu).

    Starts from the linear fit (nu = 1); see :func:`_power_law_residual`.
    """
    runs = _window(w, tau, w_max)
    if runs is None or not np.isfinite(start.w_c):
        return np.nan, np.nan, np.nan
    residual, w_top = _power_law_residual(*runs, t_max, np.log1p(rel_err))
    p0 = [min(start.w_c, w_top - 0.5), np.log(start.A), 1.0]
    lower, upper = [-np.inf, -np.inf, 0.05], [w_top, np.inf, 10.0]
    fit = least_squares(residual, p0, bounds=(lower, upper), x_scale="jac")
    return float(fit.x[0]), float(np.exp(fit.x[1])), float(fit.x[2])


def nu_profile(
    w: np.ndarray, tau: np.ndarray, t_max: float, sigma: float, w_max: float, start: LinearFit
) -> np.ndarray:
    """χ²(nu) on :data:`NU_GRID`, minimised over w_c and A at each nu (the profile), in ln τ.

    ``sigma`` is the standard deviation of ln τ (grid and seed scatter). χ²(nu) - min χ² is the
    likelihood-ratio statistic of that nu against free nu (χ²₁ under the null, asymptotically; the
    calibration harness measures its real rates at the study's design). NaN without a linear fit
    or with fewer than 3 reached widths in its window.
    """
    out = np.full(NU_GRID.size, np.nan)
    runs = _window(w, tau, w_max)
    if runs is None or not np.isfinite(start.w_c):
        return out
    residual, w_top = _power_law_residual(*runs, t_max, sigma)
    order = np.argsort(np.abs(NU_GRID - 1.0), kind="stable")  # walk out from nu = 1, warm-started
    starts = {1.0: np.array([min(start.w_c, w_top - 0.5), np.log(start.A)])}
    for i in order:
        nu = float(NU_GRID[i])
        near = min(starts, key=lambda k: abs(k - nu))
        fit = least_squares(
            lambda p, nu=nu: residual(np.array([p[0], p[1], nu])),
            starts[near],
            bounds=([-np.inf, -np.inf], [w_top, np.inf]),
            x_scale="jac",
        )
        starts[nu] = fit.x
        out[i] = 2 * fit.cost
    return out


def pooled_profile(chi2_table: np.ndarray) -> tuple[float, float, float, float, float]:
    """Best nu, its profile interval and Δχ² at nu = 1 and 2, from the χ²(nu) rows averaged.

    One row per ε of the extrapolation set; all NaN unless every row has a profile (one set of ε
    for the whole study, as for w_c*). The ε of one depth share their runs (a run's learning times
    at all thresholds move together), so their χ² are averaged, not summed: a sum would count the
    same scatter once per ε and reject a true nu too often.
    """
    rows = np.asarray(chi2_table, dtype=np.float64)
    if rows.shape[0] == 0 or not np.isfinite(rows).all():
        return (np.nan,) * 5
    total = rows.mean(axis=0)
    delta = total - total.min()
    inside = NU_GRID[delta <= DCHI2]
    at = {nu: float(delta[np.argmin(np.abs(NU_GRID - nu))]) for nu in (1.0, 2.0)}
    return float(NU_GRID[np.argmin(delta)]), float(inside.min()), float(inside.max()), at[1.0], at[2.0]

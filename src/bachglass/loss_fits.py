"""Power laws of each run's loss: L(t) = L_inf + B (t/t_end)^-alpha over fixed windows and over its tail.

The fixed windows (``fits.window_start``) are the first studies' (and the legacy check 1's); the
tail window starts after the run's own learning drop (check 1's, :func:`tail_fits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from scipy.optimize import least_squares
from scipy.stats import f as f_dist

if TYPE_CHECKING:
    from bachglass.fits_config import FitsConfig


def _window(
    step: np.ndarray, loss: np.ndarray, start: float, floor: float
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Return the finite, positive points at ``step >= start`` (None with < 6) and the L_inf floor.

    L_inf lies in [floor, min L]; a loss that reached the floor has the floor itself, just below
    min L, as its bound.
    """
    keep = (step >= start) & np.isfinite(loss) & (loss > 0)
    if int(keep.sum()) < 6:
        return None
    t, y = step[keep].astype(np.float64), loss[keep].astype(np.float64)
    lowest = float(y.min())
    return t, y, 0.999999 * lowest if floor >= lowest else floor


def fit_power_law(
    step: np.ndarray, loss: np.ndarray, start: float, level: float = 0.95, floor: float = 0.0
) -> np.ndarray:
    """Fit L(t) = L_inf + B (t/t_end)^-alpha to ``loss`` at ``step >= start``, in log L.

    Returns [L_inf, B, alpha, sigma(L_inf), sigma(B), sigma(alpha), rms of ln-residuals] (NaN when
    fewer than 6 finite points). B is the amplitude at the end of the window, t_end, which decouples
    it from alpha (B t^-alpha of the paper has B_paper = B t_end^alpha). Least squares in log L
    because the loss spans decades. L_inf lies in [floor, min L]: no loss goes below the data floor
    (the perfect memoriser), and a floor above the data is no floor.
    Several starts (alpha 0.1 ... 2, L_inf 0 ... 0.9 min L) guard against the shallow valleys of this
    model. On a plateau L_inf and B are degenerate (alpha -> 0 makes them one constant), so the
    constant L = L_inf is fitted too and kept unless the power law is better by an F-test at
    ``level``: a flat loss then has its plateau as L_inf, not an arbitrary split. sigma are curve-fit
    standard errors (inf where the fit cannot tell a parameter); late residuals are correlated, so
    the window sensitivity and the seed scatter are reported beside them.
    """
    out = np.full(7, np.nan)
    points = _window(step, loss, start, floor)
    if points is None:
        return out
    t, y, floor = points
    n = t.size
    x, ln_y, floor_max = t / t[-1], np.log(y), float(y.min())

    def residual(p: np.ndarray) -> np.ndarray:
        return np.log(p[0] + p[1] * x ** -p[2]) - ln_y

    lower, upper = [floor, 1e-12, 0.0], [floor_max, np.inf, 10.0]
    best = None
    for alpha0 in (0.1, 0.5, 2.0):
        for frac in (0.0, 0.5, 0.9):
            start_inf = floor + frac * (floor_max - floor)
            p0 = [start_inf, max(y[-1] - start_inf, 1e-9), alpha0]
            fit = least_squares(residual, p0, bounds=(lower, upper), x_scale="jac")
            if best is None or fit.cost < best.cost:
                best = fit
    rss_pl, rss_const = 2 * best.cost, float(np.sum((ln_y - ln_y.mean()) ** 2))
    f_stat = (rss_const - rss_pl) / 2 / max(rss_pl / (n - 3), 1e-300)
    if f_dist.sf(f_stat, 2, n - 3) > 1 - level:  # the decay is not significant: a plateau
        out[:6] = np.exp(ln_y.mean()), 0.0, 0.0, np.exp(ln_y.mean()) * ln_y.std(ddof=1) / np.sqrt(n), 0.0, 0.0
        out[6] = np.sqrt(rss_const / n)
        return out
    jtj = best.jac.T @ best.jac
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = (
            np.linalg.inv(jtj) * (rss_pl / (n - 3)) if np.linalg.cond(jtj) < 1e12 else np.full((3, 3), np.inf)
        )
    out[:3], out[3:6] = best.x, np.sqrt(np.clip(np.diag(cov), 0, None))
    out[6] = np.sqrt(rss_pl / n)
    return out


POWER_LAW_VARS = ("L_inf", "B", "alpha", "L_inf_err", "B_err", "alpha_err", "fit_rms")


def fit_exponential(step: np.ndarray, loss: np.ndarray, start: float, floor: float = 0.0) -> float:
    """Return the rms of ln-residuals of the best L(t) = L_inf + B exp(-(t - t_0)/T) over ``step >= start``.

    The rival of :func:`fit_power_law` on the same window (same bounds on L_inf, fitted in log L):
    a tail that is a power law fits it worse, an exponential approach fits it better. t_0 is the
    window's start; T starts at 0.1, 0.3, 1 and 3 windows and is bounded to [0.01, 10] windows. NaN
    with fewer than 6 finite points.
    """
    points = _window(step, loss, start, floor)
    if points is None:
        return np.nan
    t, y, floor = points
    span = max(t[-1] - t[0], 1.0)
    x, ln_y, floor_max = (t - t[0]) / span, np.log(y), float(y.min())

    def residual(p: np.ndarray) -> np.ndarray:
        return np.log(p[0] + p[1] * np.exp(-x / p[2])) - ln_y

    best = np.inf
    for scale in (0.1, 0.3, 1.0, 3.0):
        for frac in (0.0, 0.5, 0.9):
            start_inf = floor + frac * (floor_max - floor)
            p0 = [start_inf, max(y[0] - start_inf, 1e-9), scale]
            fit = least_squares(residual, p0, bounds=([floor, 1e-12, 0.01], [floor_max, np.inf, 10.0]))
            best = min(best, 2 * fit.cost)
    return float(np.sqrt(best / x.size))


def power_laws(
    loss: xr.DataArray, starts: Sequence[int], level: float = 0.95, floor: float = 0.0
) -> xr.Dataset:
    """Power-law fits of every run's (smoothed) loss, for each window start: dims (..., window)."""
    step = loss["step"].values

    def fit_all(values: np.ndarray) -> np.ndarray:  # (..., time) -> (..., window, 7)
        flat = values.reshape(-1, values.shape[-1])
        fits = [[fit_power_law(step, run, s, level, floor) for s in starts] for run in flat]
        return np.asarray(fits).reshape(*values.shape[:-1], len(starts), 7)

    fits = xr.apply_ufunc(
        fit_all,
        loss,
        input_core_dims=[["time"]],
        output_core_dims=[["window", "quantity"]],
        dask_gufunc_kwargs={"output_sizes": {"window": len(starts), "quantity": 7}},
    )
    fits = fits.assign_coords(window=np.asarray(starts, dtype=np.int64), quantity=list(POWER_LAW_VARS))
    return fits.to_dataset("quantity")


TAIL_VARS = ("L_inf", "alpha", "alpha_err", "fit_rms")  # of fit_power_law, kept as tail_*; and
TAIL_RIVAL = "tail_exp_rms"  # the exponential's rms over the same window


def tail_fits(
    smooth: xr.DataArray, tau_drop: xr.DataArray, config: FitsConfig, floor: float = 0.0
) -> xr.Dataset:
    """Power laws over each run's own tail: from ``tail_factor`` x τ(largest ε) to the end.

    A fixed window would contain the learning drop of the nets that learn late and fit the drop,
    not the tail. A run whose window [max(window_start[0], tail_factor τ), t_end] spans fewer than
    ``tail_min_decades`` (or that never dropped: τ = inf, or diverged: NaN) has **no tail** within
    the budget (``has_tail`` false, its tail fit NaN): not a misfit, a run too short to tell.
    Beside the power law, an exponential approach is fitted to the same window (``tail_exp_rms``).
    """
    step = smooth["step"].values
    first = float(config.window_start[0])
    start = np.fmax(config.tail_factor * tau_drop.astype(np.float64), first).where(tau_drop.notnull())
    has_tail = (start * 10**config.tail_min_decades <= float(step[-1])).rename("has_tail")
    picked = [POWER_LAW_VARS.index(v) for v in TAIL_VARS]

    def fit_one(loss: np.ndarray, begin: float, tail: bool) -> np.ndarray:
        if not tail:
            return np.full(len(TAIL_VARS) + 1, np.nan)
        out = fit_power_law(step, loss, begin, floor=floor)
        return np.append(out[picked], fit_exponential(step, loss, begin, floor))

    fitted = xr.apply_ufunc(
        fit_one,
        smooth,
        start,
        has_tail,
        input_core_dims=[["time"], [], []],
        output_core_dims=[["quantity"]],
        vectorize=True,
        dask_gufunc_kwargs={"output_sizes": {"quantity": len(TAIL_VARS) + 1}},
    ).assign_coords(quantity=[f"tail_{v}" for v in TAIL_VARS] + [TAIL_RIVAL])
    return fitted.to_dataset("quantity").assign(has_tail=has_tail, tail_start=start.where(has_tail))

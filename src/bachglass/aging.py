"""Aging: how well Δ(τ_w, τ) for different waiting times collapses onto one function of τ/τ_w^μ.

Simple aging (paper: "a single function of τ/τ_w") is μ = 1; μ < 1 is sub-aging, μ = 0 no aging
at all (Δ depends on the lag τ only). The collapse metric S is the spread, in decades, of log10 Δ
across waiting times at a fixed scaled lag x = τ/τ_w^μ (docs/science.md §1.7 f, 5.3), averaged over the
x where at least two waiting times overlap.
"""

import itertools
import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

GRID_DECADES = 0.05  # spacing of the common log10 x grid; fine against the 25/decade checkpoints
MU_STEP = 0.01


def _curves(delta: np.ndarray, tau_w: np.ndarray, lag: np.ndarray, mu: float) -> list[tuple]:
    """(log10 x, log10 Δ) of each waiting time's finite, positive part."""
    out = []
    for j, tw in enumerate(tau_w):
        ok = np.isfinite(delta[j]) & (delta[j] > 0)
        if ok.sum() >= 2:
            out.append((np.log10(lag[ok]) - mu * np.log10(tw), np.log10(delta[j, ok])))
    return out


def spread(delta: np.ndarray, tau_w: np.ndarray, lag: np.ndarray, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """S(x): std over waiting times of log10 Δ at x = τ/τ_w^μ, on a common log10 x grid.

    ``delta`` is (tau_w, lag). Each curve is interpolated linearly in log-log inside its own
    measured range only (no extrapolation); S is NaN where fewer than two curves overlap.
    Returns (log10 x grid, S).
    """
    curves = _curves(delta, tau_w, lag, mu)
    if len(curves) < 2:
        return np.array([]), np.array([])
    lo, hi = min(c[0][0] for c in curves), max(c[0][-1] for c in curves)
    grid = np.arange(math.floor(lo / GRID_DECADES), math.ceil(hi / GRID_DECADES) + 1) * GRID_DECADES
    table = np.full((len(curves), grid.size), np.nan)
    for i, (x, y) in enumerate(curves):
        inside = (grid >= x[0]) & (grid <= x[-1])
        table[i, inside] = np.interp(grid[inside], x, y)
    count = np.isfinite(table).sum(axis=0)
    s = np.full(grid.size, np.nan)
    s[count >= 2] = np.nanstd(table[:, count >= 2], axis=0)
    return grid, s


def mean_spread(delta: np.ndarray, tau_w: np.ndarray, lag: np.ndarray, mu: float, part: str = "all") -> float:
    """S averaged over the overlap; ``part`` "short" keeps x ≤ 1 only, "long" x > 1 only."""
    grid, s = spread(delta, tau_w, lag, mu)
    if part != "all":
        s = s[grid <= 0] if part == "short" else s[grid > 0]
    return float(np.nanmean(s)) if np.isfinite(s).any() else np.nan


def best_mu(delta: np.ndarray, tau_w: np.ndarray, lag: np.ndarray, mu_max: float) -> float:
    """Find the μ in [0, mu_max] (step 0.01) that minimises the mean spread; NaN without an overlap."""
    mus = np.arange(0.0, mu_max + MU_STEP / 2, MU_STEP)
    s = np.array([mean_spread(delta, tau_w, lag, mu) for mu in mus])
    return float(mus[np.nanargmin(s)]) if np.isfinite(s).any() else np.nan


def seed_resamples(n: int) -> list[tuple[tuple[int, ...], float]]:
    """Every distinct bootstrap resample of ``n`` seeds (a multiset) with its probability.

    With few seeds the bootstrap distribution can be enumerated exactly instead of sampled:
    C(2n-1, n) multisets (3 for 2 seeds, 126 for 5), each with multinomial weight n!/∏k!/nⁿ.
    """
    out = []
    for combo in itertools.combinations_with_replacement(range(n), n):
        counts = np.bincount(combo, minlength=n)
        weight = math.factorial(n) / math.prod(math.factorial(int(k)) for k in counts) / n**n
        out.append((combo, weight))
    return out


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Quantiles of a discrete distribution (the smallest value whose cumulative weight ≥ q)."""
    ok = np.isfinite(values)
    if not ok.any():
        return np.full(len(q), np.nan)
    order = np.argsort(values[ok])
    v, cum = values[ok][order], np.cumsum(weights[ok][order]) / weights[ok].sum()
    return np.array([v[min(np.searchsorted(cum, p - 1e-12), v.size - 1)] for p in q])


AGING_VARS = {
    "mu": ("sub-aging exponent: best collapse of Delta in tau/tau_w^mu (1 = simple aging)", "1"),
    "mu_lo": ("lower bound of the seed-bootstrap interval of mu", "1"),
    "mu_hi": ("upper bound of the seed-bootstrap interval of mu", "1"),
    "S_mu": ("collapse spread of log10 Delta across tau_w at tau/tau_w^mu, mu = mu", "decade"),
    "S_simple": ("collapse spread at mu = 1 (simple aging, tau/tau_w)", "decade"),
    "S_raw": ("collapse spread at mu = 0 (no scaling, tau)", "decade"),
    "S_short": ("collapse spread at mu = 1 for tau <= tau_w", "decade"),
    "S_long": ("collapse spread at mu = 1 for tau > tau_w", "decade"),
}


def _collapse_one(
    delta: np.ndarray, tau_w: np.ndarray, lag: np.ndarray, mu_max: float, ci: float
) -> np.ndarray:
    """[mu, lo, hi, S(mu), S(1), S(0), S_short, S_long, mu per adjacent τ_w pair...] of one (d, w).

    ``delta`` is (seed, tau_w, lag) with diverged seeds already removed (all NaN).
    """
    valid = np.isfinite(delta).any(axis=(1, 2))
    d = delta[valid]
    n_pairs = tau_w.size - 1
    out = np.full(8 + n_pairs, np.nan)
    if d.shape[0] == 0:
        return out
    mean = d.mean(axis=0)
    mu = best_mu(mean, tau_w, lag, mu_max)
    resamples = seed_resamples(d.shape[0])
    mus = np.array([best_mu(d[list(c)].mean(axis=0), tau_w, lag, mu_max) for c, _ in resamples])
    weights = np.array([w for _, w in resamples])
    lo, hi = weighted_quantiles(mus, weights, [(1 - ci) / 2, (1 + ci) / 2])
    out[:8] = (
        mu,
        lo,
        hi,
        mean_spread(mean, tau_w, lag, mu),
        mean_spread(mean, tau_w, lag, 1.0),
        mean_spread(mean, tau_w, lag, 0.0),
        mean_spread(mean, tau_w, lag, 1.0, part="short"),
        mean_spread(mean, tau_w, lag, 1.0, part="long"),
    )
    for j in range(n_pairs):
        out[8 + j] = best_mu(mean[j : j + 2], tau_w[j : j + 2], lag, mu_max)
    return out


def collapse(
    msd_lag: xr.DataArray, diverged: xr.DataArray, tau_w_min: int, mu_max: float, ci: float
) -> xr.Dataset:
    """Aging collapse metrics of every (depth, width), from Δ on the common lag grid averaged over seeds.

    Waiting times below ``tau_w_min`` (inside the initial plateau of the loss) are left out. The
    μ interval is the exact seed bootstrap (see :func:`seed_resamples`). ``mu_pair`` is μ fitted to
    each pair of adjacent waiting times: a drift with τ_w means the scaling is not yet asymptotic.
    """
    m = msd_lag.where(~diverged).sel(tau_w=msd_lag["tau_w"] >= tau_w_min)
    m = m.transpose("depth", "width", "seed", "tau_w", "lag")
    tau_w, lag = m["tau_w"].values.astype(np.float64), m["lag"].values.astype(np.float64)
    values = np.array(
        [
            [_collapse_one(m.values[i, j], tau_w, lag, mu_max, ci) for j in range(m.sizes["width"])]
            for i in range(m.sizes["depth"])
        ]
    )
    coords = {"depth": m["depth"], "width": m["width"]}
    ds = xr.Dataset(
        {name: (("depth", "width"), values[..., k]) for k, name in enumerate(AGING_VARS)}, coords=coords
    )
    ds["mu_pair"] = (("depth", "width", "tau_w_pair"), values[..., 8:])
    ds = ds.assign_coords(tau_w_pair=tau_w[:-1].astype(np.int64))
    ds["tau_w_pair"].attrs = {
        "long_name": "smaller waiting time of a pair of adjacent ones",
        "units": "SGD steps",
    }
    for name, (long_name, units) in AGING_VARS.items():
        ds[name].attrs = {"long_name": long_name, "units": units}
    ds["mu_pair"].attrs = {
        "long_name": "mu that collapses tau_w_pair with the next waiting time",
        "units": "1",
    }
    return ds

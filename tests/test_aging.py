"""Aging collapse on Delta(tau_w, tau) = f(tau / tau_w^mu) with known f and mu."""

import math

import numpy as np
import pytest
import xarray as xr

from bachglass.aging import best_mu, collapse, mean_spread, seed_resamples, spread, weighted_quantiles

T_END = 4e4
LAG = np.unique(np.round(np.logspace(0, np.log10(T_END), int(25 * np.log10(T_END)) + 1)))  # 25/decade
TAU_W = np.array([100.0, 300.0, 1000.0, 3000.0, 10000.0])


def f(x):
    """A crossover from x^0.7 (tau << tau_w^mu) to x^0.4 (tau >> tau_w^mu)."""
    return x**0.7 / (1 + x) ** 0.3


def delta(mu, tau_w=TAU_W, lag=LAG):
    """Delta (tau_w, lag) = f(lag / tau_w^mu), NaN where tau_w + lag runs past the end of training."""
    out = f(lag[None, :] / tau_w[:, None] ** mu)
    out[tau_w[:, None] + lag[None, :] > T_END] = np.nan
    return out


# best_mu scans mu in steps of 0.01 and the log-log interpolation on 25 points/decade leaves a spread
# of ~1e-5 decades at the true mu: 0.02 is two scan steps
@pytest.mark.parametrize("mu", [1.0, 0.5])
def test_best_mu_recovers_mu_within_0_02(mu):
    assert best_mu(delta(mu), TAU_W, LAG, mu_max=2.0) == pytest.approx(mu, abs=0.02)


@pytest.mark.parametrize("mu", [1.0, 0.5])
def test_mean_spread_vanishes_at_the_true_mu_and_not_without_scaling(mu):
    assert mean_spread(delta(mu), TAU_W, LAG, mu) < 1e-3  # decades
    assert mean_spread(delta(mu), TAU_W, LAG, 0.0) > 0.1


def test_mean_spread_of_lag_only_data_is_zero_at_mu_0():
    assert mean_spread(delta(0.0), TAU_W, LAG, 0.0) < 1e-12
    assert best_mu(delta(0.0), TAU_W, LAG, mu_max=2.0) == 0.0


def test_mean_spread_parts_split_at_x_1():
    # Delta = x^0.5 up to x = tau/tau_w = 1, then x^(0.5 + 0.1 log10 tau_w): collapses at short x only
    x = LAG[None, :] / TAU_W[:, None]
    d = np.where(x <= 1, x**0.5, x ** (0.5 + 0.1 * np.log10(TAU_W[:, None])))
    d[TAU_W[:, None] + LAG[None, :] > T_END] = np.nan
    assert mean_spread(d, TAU_W, LAG, 1.0, part="short") < 1e-3
    assert mean_spread(d, TAU_W, LAG, 1.0, part="long") > 0.02  # 0.04 decades


def test_spread_needs_two_overlapping_curves():
    one = delta(1.0)
    one[1:] = np.nan
    grid, s = spread(one, TAU_W, LAG, 1.0)
    assert grid.size == 0 and s.size == 0
    assert np.isnan(mean_spread(one, TAU_W, LAG, 1.0)) and np.isnan(best_mu(one, TAU_W, LAG, 2.0))


def test_seed_resamples_of_two_seeds_are_three_multisets_with_binomial_weights():
    assert seed_resamples(2) == [((0, 0), 0.25), ((0, 1), 0.5), ((1, 1), 0.25)]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_seed_resamples_enumerate_every_multiset_once_with_weights_summing_to_1(n):
    resamples = seed_resamples(n)
    assert len(resamples) == math.comb(2 * n - 1, n)  # 1, 10, 126
    assert len({combo for combo, _ in resamples}) == len(resamples)
    assert sum(w for _, w in resamples) == pytest.approx(1.0)
    weights = dict(resamples)
    assert weights[(0,) * n] == pytest.approx(n**-n)  # all draws the same seed
    assert weights[tuple(range(n))] == pytest.approx(math.factorial(n) / n**n)  # every seed once


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.0, 1.0), (0.1, 1.0), (0.11, 2.0), (0.3, 2.0), (0.5, 3.0), (0.6, 3.0), (0.61, 4.0), (1.0, 4.0)],
)
def test_weighted_quantiles_are_the_smallest_value_with_cumulative_weight_at_least_q(q, expected):
    # P(1) = 0.1, P(2) = 0.2, P(3) = 0.3, P(4) = 0.4, given out of order and unnormalised
    values, weights = np.array([3.0, 1.0, 4.0, 2.0]), np.array([3.0, 1.0, 4.0, 2.0])
    assert weighted_quantiles(values, weights, [q])[0] == expected


def test_weighted_quantiles_ignore_nan_values_and_are_nan_without_any():
    values, weights = np.array([3.0, np.nan, 1.0]), np.array([1.0, 5.0, 1.0])
    np.testing.assert_array_equal(weighted_quantiles(values, weights, [0.25, 0.5, 0.75]), [1.0, 1.0, 3.0])
    assert np.isnan(weighted_quantiles(np.full(3, np.nan), np.ones(3), [0.5, 0.9])).all()


# collapse() at one (depth, width): three seeds, an early tau_w below tau_w_min and a diverged fourth seed;
# the last two are filled with data that would wreck the collapse if they were used
TAU_W_ALL = np.array([10.0, *TAU_W])


def msd_lag(seed_mu=(1.0, 1.0, 1.0), amplitude=(0.5, 1.0, 2.0), diverged_seed=True):
    seeds = [a * delta(mu, TAU_W_ALL) for mu, a in zip(seed_mu, amplitude, strict=True)]
    if diverged_seed:
        seeds.append(delta(0.0, TAU_W_ALL) * 100)
    values = np.stack(seeds)
    values[:, 0] = 1.0  # tau_w = 10: flat, inside the "initial plateau"
    m = xr.DataArray(
        values[None, None],
        dims=("depth", "width", "seed", "tau_w", "lag"),
        coords={"depth": [2], "width": [16], "seed": np.arange(len(seeds)), "tau_w": TAU_W_ALL, "lag": LAG},
    )
    diverged = xr.zeros_like(m.isel(tau_w=0, lag=0, drop=True), dtype=bool)
    diverged[..., 3:] = True
    return m, diverged


@pytest.fixture(scope="module")
def collapsed():
    """Seeds that differ only in amplitude: every resample's mean collapses exactly at mu = 1."""
    return collapse(*msd_lag(), tau_w_min=100, mu_max=1.5, ci=0.95)


def test_collapse_recovers_mu_within_0_02_with_a_degenerate_interval_for_identical_shapes(collapsed):
    assert collapsed["mu"].item() == pytest.approx(1.0, abs=0.02)
    assert collapsed["mu_lo"].item() == collapsed["mu"].item() == collapsed["mu_hi"].item()
    assert collapsed["S_mu"].item() < 1e-3 and collapsed["S_simple"].item() < 1e-3
    assert collapsed["S_raw"].item() > 0.1


def test_collapse_interval_spans_the_mu_of_the_seeds():
    # seeds with mu 0.9, 1.0, 1.1: the 27 resamples weigh 1/27 > 2.5% each for "all seed 0" (mu 0.9) and
    # "all seed 2" (mu 1.1); the seed mean collapses best in between (0.97: the mu = 0.9 seed has the
    # largest Delta and dominates the mean)
    out = collapse(*msd_lag(seed_mu=(0.9, 1.0, 1.1)), tau_w_min=100, mu_max=1.5, ci=0.95)
    assert 0.9 < out["mu"].item() < 1.1
    assert out["mu_lo"].item() == pytest.approx(0.9, abs=0.02)
    assert out["mu_hi"].item() == pytest.approx(1.1, abs=0.02)


def test_collapse_ignores_a_diverged_seed_and_waiting_times_below_tau_w_min(collapsed):
    m, diverged = msd_lag(diverged_seed=False)
    clean = collapse(m.sel(tau_w=TAU_W), diverged, tau_w_min=100, mu_max=1.5, ci=0.95)
    xr.testing.assert_allclose(collapsed, clean)


def test_collapse_output_layout(collapsed):
    assert dict(collapsed["mu"].sizes) == {"depth": 1, "width": 1}
    assert collapsed["tau_w_pair"].values.tolist() == [100, 300, 1000, 3000]  # each with the next
    np.testing.assert_allclose(collapsed["mu_pair"].values.ravel(), 1.0, atol=0.02)
    for name in ("mu", "mu_lo", "mu_hi", "S_mu", "S_simple", "S_raw", "S_short", "S_long", "mu_pair"):
        assert "units" in collapsed[name].attrs and "long_name" in collapsed[name].attrs


def test_collapse_of_an_all_diverged_cell_is_nan():
    m, diverged = msd_lag()
    out = collapse(m, xr.ones_like(diverged), tau_w_min=100, mu_max=1.5, ci=0.95)
    assert np.isnan(out["mu"]).all() and np.isnan(out["mu_lo"]).all() and np.isnan(out["S_mu"]).all()

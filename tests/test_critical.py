"""Critical fits on learning times generated from tau = A/(w - w_c) (or A (w - w_c)^-nu) with known truth."""

import numpy as np
import pytest
import xarray as xr
from conftest import fits_config

from bachglass.critical import critical, critical_fit, extrapolate
from bachglass.exponent import free_exponent_fit

W_C, A, T_MAX = 12.3, 5e4, 4e4
CPD = 25  # checkpoints per decade
REL = 10 ** (1 / CPD) - 1  # one checkpoint interval of the log grid: 9.6%
WIDTHS = np.arange(10, 25, dtype=float)  # 10..12 lie below w_c; 13 is reached only after T_MAX


def learning_times(w, w_c=W_C, amplitude=A, nu=1.0):
    """tau = A (w - w_c)^-nu, +inf (censored) where w <= w_c or tau > T_MAX."""
    gap = np.asarray(w, dtype=float) - w_c
    tau = np.full(gap.shape, np.inf)
    tau[gap > 0] = amplitude * gap[gap > 0] ** -nu
    tau[tau > T_MAX] = np.inf
    return tau


def fit(w, tau, min_widths=3):
    return critical_fit(np.asarray(w, float), np.asarray(tau, float), T_MAX, REL, 2.0, min_widths)


def test_critical_fit_recovers_w_c_within_0_05_and_A_within_1_percent_from_censored_exact_data():
    tau = learning_times(WIDTHS)
    assert np.isinf(tau[WIDTHS < 14]).all() and np.isfinite(tau[WIDTHS >= 14]).all()
    result = fit(WIDTHS, tau)
    assert result.w_c == pytest.approx(W_C, abs=0.05)
    assert abs(result.A / A - 1) < 0.01
    assert result.r2 == pytest.approx(1.0)
    assert (result.n_widths, result.n_censored, result.w_max) == (11, 4, 24.0)


def test_critical_fit_with_checkpoint_grid_noise_recovers_w_c_within_0_5():
    # three seeds, each tau off by a log-normal factor of one checkpoint interval (sigma 9.6%)
    w = np.repeat(WIDTHS, 3)
    rng = np.random.default_rng(0)
    tau = np.repeat(A / np.clip(WIDTHS - W_C, 1e-9, None), 3) * np.exp(REL * rng.normal(size=w.size))
    tau[(w <= W_C) | (tau > T_MAX)] = np.inf
    result = fit(w, tau)
    assert result.w_c == pytest.approx(W_C, abs=0.5)
    assert abs(result.A / A - 1) < 0.1
    assert result.r2 > 0.9


def test_critical_fit_uses_only_widths_up_to_ratio_times_w_c():
    # 1/tau saturates far above w_c: beyond 2 w_c = 24.6 the learning time stops falling
    w = np.arange(14, 41, dtype=float)
    tau = np.where(w <= 24, learning_times(w), 500.0)
    result = fit(w, tau)
    assert result.w_max == 24.0 and result.n_widths == 11
    assert result.w_c == pytest.approx(W_C, abs=1e-6)


def test_critical_fit_censored_run_where_the_line_predicts_learning_pulls_the_fit():
    # a second seed at w = 14 never learned, where the line says tau = 29412 < T_MAX
    tau = learning_times(WIDTHS)
    free = fit(WIDTHS, tau)
    pulled = fit(np.append(WIDTHS, 14.0), np.append(tau, np.inf))
    assert pulled.n_censored == free.n_censored + 1
    assert pulled.w_c > free.w_c + 0.1  # 12.63 vs 12.30: the hinge moves the intercept up
    # the constraint moves the predicted learning time at w = 14 towards T_MAX
    assert A / (14 - free.w_c) < pulled.A / (14 - pulled.w_c) < T_MAX


def test_critical_fit_censored_run_consistent_with_the_line_changes_nothing():
    # w = 13: the line predicts tau = 71429 > T_MAX, so "not reached" is what it says
    tau = learning_times(WIDTHS)
    free = fit(WIDTHS, tau)
    more = fit(np.append(WIDTHS, 13.0), np.append(tau, np.inf))
    assert more.w_c == pytest.approx(free.w_c, abs=1e-9)
    assert abs(more.A / free.A - 1) < 1e-9
    assert more.n_censored == free.n_censored + 1


def test_critical_fit_one_stuck_seed_of_three_does_not_drop_the_widths_above_it():
    w, tau = np.repeat(WIDTHS, 3), np.repeat(learning_times(WIDTHS), 3)
    tau[np.flatnonzero(w == 18.0)[0]] = np.inf  # one of three seeds at w = 18 never learned
    result = fit(w, tau)
    assert result.w_max >= 18.0 and result.n_censored == 13


def test_critical_fit_ignores_diverged_runs():
    tau = learning_times(WIDTHS)
    w_all = np.concatenate([WIDTHS, [14.0, 20.0, 11.0]])
    tau_all = np.concatenate([tau, [np.nan] * 3])  # three diverged seeds (NaN learning time)
    with_nan, without = fit(w_all, tau_all), fit(WIDTHS, tau)
    assert (with_nan.w_c, with_nan.A, with_nan.n_censored) == (without.w_c, without.A, without.n_censored)


@pytest.mark.parametrize("n_reached", [0, 1, 2])
def test_critical_fit_with_fewer_widths_than_min_widths_gives_no_fit(n_reached):
    tau = learning_times(WIDTHS)
    tau[np.flatnonzero(np.isfinite(tau))[n_reached:]] = np.inf
    result = fit(WIDTHS, tau, min_widths=3)
    assert np.isnan(result.w_c) and np.isnan(result.A) and result.n_widths == 0


def test_critical_fit_with_exactly_min_widths_fits():
    w = np.array([10.0, 14.0, 16.0, 20.0])
    result = fit(w, learning_times(w), min_widths=3)
    assert result.w_c == pytest.approx(W_C, abs=1e-6) and result.n_widths == 3


@pytest.mark.parametrize("nu", [1.0, 1.5])
def test_free_exponent_fit_recovers_nu_within_0_05_from_exact_data(nu):
    tau = learning_times(WIDTHS, nu=nu)
    linear = fit(WIDTHS, tau)  # the start: for nu = 1.5 it is biased (w_c 13.4) and must be left
    w_c, amplitude, nu_fit = free_exponent_fit(WIDTHS, tau, T_MAX, REL, linear.w_max, linear)
    assert nu_fit == pytest.approx(nu, abs=0.05)
    assert w_c == pytest.approx(W_C, abs=0.05)
    assert amplitude == pytest.approx(A, rel=0.05)


def test_free_exponent_fit_needs_three_reached_widths_and_a_linear_start():
    tau = learning_times(WIDTHS)
    linear = fit(WIDTHS, tau)
    two = np.where(WIDTHS <= 15, tau, np.inf)
    assert np.isnan(free_exponent_fit(WIDTHS, two, T_MAX, REL, 24.0, linear)).all()
    no_start = fit(WIDTHS, two)
    assert np.isnan(free_exponent_fit(WIDTHS, tau, T_MAX, REL, 24.0, no_start)).all()


def test_extrapolate_recovers_intercept_and_slope_of_a_line_in_eps():
    eps = np.array([0.3, 0.1, 0.05, 0.02])
    w_c = 14 + 20 * eps
    w_c[0] = 40.0  # the largest eps is off the line and outside the 3 smallest
    intercept, slope = extrapolate(eps, w_c, 3)
    assert intercept == pytest.approx(14.0, abs=1e-9) and slope == pytest.approx(20.0, abs=1e-9)


def test_extrapolate_skips_eps_without_a_fit_and_needs_two_points():
    eps = np.array([0.3, 0.1, 0.05, 0.02])
    w_c = np.array([20.0, 16.0, np.nan, 14.4])  # the 3 smallest with a fit: 0.02, 0.1, 0.3
    assert extrapolate(eps, w_c, 3) == pytest.approx((14.0, 20.0))
    assert np.isnan(extrapolate(eps, np.array([np.nan, np.nan, 15.0, np.nan]), 3)).all()


# critical() on a study of learning times: w_c(eps) = W_C_STAR[d] + 20 eps, A = 5e4, T_MAX = 4e4
EPS = np.array([0.1, 0.05, 0.02])
W_C_STAR = {1: 14.0, 2: 10.0}
CONFIG = fits_config(n_boot=40)


def tau_study(noise, n_seed=3, rng_seed=0):
    """tau (depth, width, seed, eps) with log-normal noise ``noise``; step grid up to T_MAX."""
    rng = np.random.default_rng(rng_seed)
    tau = np.stack(
        [learning_times(WIDTHS[:, None], w_c=W_C_STAR[d] + 20 * EPS[None, :], amplitude=A) for d in (1, 2)]
    )  # (depth, width, eps)
    tau = tau[:, :, None, :] * np.exp(noise * rng.normal(size=(2, WIDTHS.size, n_seed, EPS.size)))
    tau[tau > T_MAX] = np.inf
    step = np.unique(np.round(np.logspace(0, np.log10(T_MAX), int(CPD * np.log10(T_MAX)) + 1)))
    return xr.Dataset(
        {"tau": (("depth", "width", "seed", "eps"), tau)},
        coords={"depth": [1, 2], "width": WIDTHS.astype(int), "seed": np.arange(n_seed), "eps": EPS},
        attrs={"checkpoints_per_decade": CPD},
    ).assign_coords(step=("time", step))


def true_w_c(depth):
    return xr.DataArray(W_C_STAR[depth] + 20 * EPS, coords={"eps": EPS})


def test_critical_recovers_w_c_per_depth_and_eps_and_extrapolates_w_c_star():
    out = critical(tau_study(noise=0.0), xr.DataArray(True), CONFIG)
    for d in (1, 2):
        np.testing.assert_allclose(out["w_c"].sel(depth=d), true_w_c(d), atol=1e-6)
        np.testing.assert_allclose(out["nu"].sel(depth=d), 1.0, atol=1e-3)
    # τ is read as the checkpoint just past the crossing, so the fit uses the log-middle of the grid
    # interval before it: A comes out smaller by half an interval, w_c does not move
    half = 10 ** (-0.5 / tau_study(noise=0.0).attrs["checkpoints_per_decade"])
    np.testing.assert_allclose(out["A"], A * half, rtol=1e-6)
    np.testing.assert_allclose(out["w_c_star"], [14.0, 10.0], atol=1e-6)
    np.testing.assert_allclose(out["w_c_star_slope"], [20.0, 20.0], atol=1e-6)
    assert dict(out["w_c_boot"].sizes) == {"boot": CONFIG.n_boot, "depth": 2, "eps": 3}


def test_critical_ci_with_identical_seeds_is_only_the_checkpoint_grid_resolution():
    """Seeds that agree leave only the position of the crossing inside its grid interval: a narrow CI."""
    out = critical(tau_study(noise=0.0), xr.DataArray(True), CONFIG)
    assert (out["w_c_lo"] <= out["w_c"]).all() and (out["w_c"] <= out["w_c_hi"]).all()
    assert float((out["w_c_hi"] - out["w_c_lo"]).max()) < 0.5
    assert (out["w_c_star_lo"] <= out["w_c_star"]).all() and (out["w_c_star"] <= out["w_c_star_hi"]).all()


def test_critical_ci_with_checkpoint_grid_noise_contains_the_true_w_c():
    # one seeded realization (3 seeds, 9.6% log-normal noise); the intervals are ~0.3-0.5 wide
    out = critical(tau_study(noise=REL), xr.DataArray(True), CONFIG)
    for d in (1, 2):
        assert (out["w_c_lo"].sel(depth=d) <= true_w_c(d)).all()
        assert (true_w_c(d) <= out["w_c_hi"].sel(depth=d)).all()
        assert out["w_c_star_lo"].sel(depth=d) <= W_C_STAR[d] <= out["w_c_star_hi"].sel(depth=d)
    assert (out["w_c_hi"] - out["w_c_lo"] > 0.05).all()  # the seed scatter does widen them
    assert (out["w_c_lo"] <= out["w_c"]).all() and (out["w_c"] <= out["w_c_hi"]).all()


def test_critical_leaves_invalid_eps_unfitted_and_extrapolates_over_the_rest():
    valid = xr.DataArray([True, True, False], coords={"eps": EPS})
    out = critical(tau_study(noise=0.0), valid, CONFIG)
    assert np.isnan(out["w_c"].sel(eps=0.02)).all() and (out["n_widths"].sel(eps=0.02) == 0).all()
    assert np.isnan(out["w_c_boot"].sel(eps=0.02)).all()
    np.testing.assert_allclose(out["w_c_star"], [14.0, 10.0], atol=1e-6)  # a line through eps 0.1, 0.05


# the fits that follow the data: seed scatter in the weights, the profile of nu, one extrapolation set
from bachglass.critical import (  # noqa: E402
    _n_at,
    counted_interval,
    extrapolate_fixed,
    extrapolation_set,
    tau_scatter,
)
from bachglass.exponent import DCHI2, NU_GRID, nu_profile, pooled_profile  # noqa: E402


def test_tau_scatter_recovers_the_seed_scatter_of_ln_tau_plus_the_grid_part():
    rng = np.random.default_rng(1)
    tau = 1e4 * np.exp(0.2 * rng.normal(size=(2, 40, 5, 3)))  # (depth, width, seed, eps)
    tau[0, :2] = np.inf  # censored runs do not count
    grid = np.log(10) / (CPD * np.sqrt(12))
    np.testing.assert_allclose(tau_scatter(tau, CPD), np.sqrt(0.2**2 + grid**2), rtol=0.1)
    assert tau_scatter(np.full((1, 3, 2, 1), np.inf), CPD) == pytest.approx(grid)


def test_counted_interval_is_unbounded_when_too_many_replicas_have_no_fit():
    boot = np.linspace(9.0, 11.0, 200)
    assert np.isfinite(counted_interval(boot, 0.95)).all()
    boot[:4] = np.nan  # 2 %: inside the 2.5 % tail, the interval stays finite
    assert np.isfinite(counted_interval(boot, 0.95)).all()
    boot[:10] = np.nan  # 5 %: the replicas without a fit outnumber the tail
    lo, hi = counted_interval(boot, 0.95)
    assert lo == -np.inf and hi == np.inf


def test_extrapolation_set_is_the_smallest_eps_valid_at_every_depth():
    eps = np.array([0.3, 0.1, 0.05, 0.03])
    valid = np.array([[True, True, True, False], [True, True, False, False]])
    assert extrapolation_set(eps, valid, 3).tolist() == [True, True, False, False]
    assert extrapolation_set(eps, valid[:1], 2).tolist() == [False, True, True, False]


def test_extrapolate_fixed_needs_a_fit_at_every_eps_of_the_set():
    eps, use = np.array([0.3, 0.1, 0.05]), np.array([False, True, True])
    assert extrapolate_fixed(eps, 14.0 - 20 * eps, use) == pytest.approx((14.0, -20.0))
    assert np.isnan(extrapolate_fixed(eps, np.array([8.0, np.nan, 13.0]), use)).all()


@pytest.mark.parametrize("nu", [1.0, 2.0])
def test_nu_profile_keeps_the_true_exponent_and_rejects_the_other(nu):
    # widths from 1 to 8 above w_c, 3 seeds with 15 % scatter: where nu is identifiable
    w = np.repeat(np.arange(11.0, 19.0), 3)
    rng = np.random.default_rng(2)
    tau = A * 2 ** (nu - 1) * (w - 10.0) ** -nu * np.exp(0.15 * rng.normal(size=w.size))
    lin = critical_fit(w, tau, 1e9, 0.15, 2.0, 3)
    chi2 = nu_profile(w, tau, 1e9, 0.15, lin.w_max, lin)
    _, lo, hi, d1, d2 = pooled_profile(chi2[None])
    assert lo <= nu <= hi
    assert (d1 < DCHI2 < d2) if nu == 1 else (d2 < DCHI2 < d1)
    assert chi2.shape == NU_GRID.shape


def test_real_design_widths_3_to_5_above_w_c_leave_nu_free_but_keep_w_c():
    # the default study's case: the nearest widths that reach eps lie 4-6 widths above w_c = 10
    w = np.repeat(np.array([14.0, 16.0, 20.0]), 3)
    rng = np.random.default_rng(3)
    tau = 1.8e5 / (w - 10.0) * np.exp(0.15 * rng.normal(size=w.size))
    lin = critical_fit(w, tau, 7e4, 0.15, 2.0, 3)
    assert lin.w_c == pytest.approx(10.0, abs=2.0)
    _, lo, hi, d1, d2 = pooled_profile(nu_profile(w, tau, 7e4, 0.15, lin.w_max, lin)[None])
    assert d1 < DCHI2 and d2 < DCHI2  # neither nu = 1 nor nu = 2 can be rejected: not identifiable
    assert hi - lo > 1.0


def test_critical_counts_the_transition_in_parameters():
    study = tau_study(noise=0.0).assign(
        n_parameters=(("depth", "width"), np.stack([2 * WIDTHS**2 + 10 * WIDTHS + d for d in (1, 2)]))
    )
    out = critical(study, xr.DataArray(True), CONFIG, n_scored_notes=100)
    star = out["w_c_star"].values
    np.testing.assert_allclose(out["n_star"], 2 * star**2 + 10 * star + np.array([1, 2]), rtol=1e-9)
    np.testing.assert_allclose(out["n_per_note_star"], out["n_star"] / 100)
    assert (out["n_star_lo"] <= out["n_star"]).all() and (out["n_star"] <= out["n_star_hi"]).all()


def test_parameter_count_at_a_negative_width_bound_is_the_count_at_zero():
    widths = np.array([4.0, 8.0, 16.0])
    counts = 2 * widths**2 + 10 * widths + 7
    np.testing.assert_allclose(_n_at(widths, counts, np.array([-3.0, 2.0, -np.inf])), [7.0, 35.0, -np.inf])

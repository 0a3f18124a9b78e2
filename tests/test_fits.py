"""Power-law fits, floors, phases and the assembly of fits.nc, on synthetic data with known truth."""

import numpy as np
import pytest
import xarray as xr
from conftest import fits_config, log_grid, make_trajectory

from bachglass import checks_table
from bachglass.fits import (
    ATTRS,
    OVER,
    UNDER,
    UNDETERMINED,
    classify,
    clipped_fraction,
    fit_study,
    json_number,
    metrics,
)
from bachglass.loss_fits import fit_exponential, fit_power_law, power_laws, tail_fits
from bachglass.observables import ObservablesConfig, combine_runs, run_observables

# 25 checkpoints per decade over 10^2 .. 4 10^4 SGD steps, like a late fit window of the study
T = np.logspace(2, np.log10(4e4), int(25 * np.log10(400)) + 1)


def power_law(L_inf, B, alpha, t=T):
    """L = L_inf + B (t/t_end)^-alpha: B is the amplitude at the end of the window."""
    return L_inf + B * (t / t[-1]) ** -alpha


def noisy(loss, rel, seed):
    """Multiplicative log-normal noise of relative size ``rel`` (seeded)."""
    return loss * np.exp(rel * np.random.default_rng(seed).normal(size=np.shape(loss)))


# exact data: the global minimum has zero cost, so only the optimizer's tolerance (~1e-8) is left;
# 1e-3 relative leaves room for a different scipy without letting a wrong valley through
@pytest.mark.parametrize(("L_inf", "B", "alpha"), [(0.3, 0.5, 0.7), (0.05, 1.0, 1.5), (0.2, 0.01, 0.3)])
def test_power_law_recovers_exact_parameters_to_1e_3_relative(L_inf, B, alpha):
    fit = fit_power_law(T, power_law(L_inf, B, alpha), start=100)
    np.testing.assert_allclose(fit[:3], [L_inf, B, alpha], rtol=1e-3)
    assert fit[6] < 1e-6  # rms of ln-residuals


def test_power_law_fits_only_the_points_from_start_on():
    early = T < 1000
    loss = np.where(early, 5.0, power_law(0.3, 0.5, 0.7))  # a bump the window must not see
    np.testing.assert_allclose(fit_power_law(T, loss, start=1000)[:3], [0.3, 0.5, 0.7], rtol=1e-3)


def test_power_law_with_2_percent_noise_is_within_4_sigma_and_2_percent_in_alpha():
    # one seeded realization; sigma(alpha) ~ 0.003 for 66 points with 2% noise
    fit = fit_power_law(T, noisy(power_law(0.3, 0.5, 0.7), 0.02, seed=1), start=100)
    L_inf, B, alpha, L_inf_err, B_err, alpha_err, rms = fit
    assert abs(alpha - 0.7) < 4 * alpha_err and abs(alpha - 0.7) < 0.02
    assert abs(L_inf - 0.3) < 4 * L_inf_err and abs(L_inf - 0.3) < 0.05
    assert abs(B - 0.5) < 4 * B_err and abs(B - 0.5) < 0.05
    assert rms == pytest.approx(0.02, rel=0.25)  # the residuals are the noise


def test_power_law_standard_errors_match_the_scatter_over_noise_realizations_within_a_factor_1_5():
    fits = np.array([fit_power_law(T, noisy(power_law(0.3, 0.5, 0.7), 0.02, s), 100) for s in range(16)])
    scatter, errs = fits[:, :3].std(axis=0, ddof=1), fits[:, 3:6].mean(axis=0)
    # 16 realizations: the sample std itself is uncertain by ~18%
    np.testing.assert_array_less(scatter / errs, 1.5)
    np.testing.assert_array_less(errs / scatter, 1.5)


def test_power_law_without_floor_keeps_L_inf_at_zero_within_its_bound():
    exact = fit_power_law(T, power_law(0.0, 0.5, 0.7), start=100)
    assert 0.0 <= exact[0] < 1e-6
    np.testing.assert_allclose(exact[1:3], [0.5, 0.7], rtol=1e-3)
    fit = fit_power_law(T, noisy(power_law(0.0, 0.5, 0.7), 0.02, seed=2), start=100)
    assert 0.0 <= fit[0] < 3 * fit[3] + 1e-9  # bounded below by 0, compatible with 0
    assert fit[2] == pytest.approx(0.7, abs=0.02)


def test_power_law_floor_of_a_decaying_loss_never_exceeds_the_smallest_loss():
    loss = noisy(power_law(0.4, 0.5, 0.3), 0.02, seed=3)
    fit = fit_power_law(T, loss, start=100)
    assert fit[2] > 0 and fit[0] <= loss.min()


def test_power_law_of_a_flat_loss_is_the_constant_plateau():
    """No significant decay (F-test): L_inf is the plateau itself (geometric mean), B = alpha = 0."""
    loss = noisy(np.full(T.size, 0.4), 0.02, seed=3)
    fit = fit_power_law(T, loss, start=100)
    assert fit[1] == fit[2] == 0.0
    assert fit[0] == pytest.approx(np.exp(np.log(loss[T >= 100]).mean()))


@pytest.mark.parametrize("n", [0, 1, 5])
def test_power_law_with_fewer_than_6_usable_points_is_nan(n):
    loss = power_law(0.3, 0.5, 0.7)
    loss[n:] = np.nan  # NaN (diverged) and non-positive points do not count
    assert np.isnan(fit_power_law(T, loss, start=100)).all()
    short = power_law(0.3, 0.5, 0.7)
    assert np.isnan(fit_power_law(T, short, start=T[-5])).all()  # 5 points after start
    assert np.isfinite(fit_power_law(T, short, start=T[-6])).all()
    assert np.isnan(fit_exponential(T, short, start=T[-5])) and np.isfinite(fit_exponential(T, short, T[-6]))


def loss_array(curves, starts=(100, 300)):
    """Power-law fits of ``curves`` (seed, time) on T, for fit windows ``starts``."""
    loss = xr.DataArray(np.asarray(curves), dims=("seed", "time"), coords={"step": ("time", T)})
    return power_laws(loss, starts)


def test_power_laws_fit_every_run_and_window():
    fits = loss_array([power_law(0.3, 0.5, 0.7), power_law(0.1, 0.2, 1.2)], starts=(100, 1000))
    assert dict(fits.sizes) == {"seed": 2, "window": 2}
    assert list(fits["window"].values) == [100, 1000]
    np.testing.assert_allclose(fits["alpha"].values, [[0.7, 0.7], [1.2, 1.2]], rtol=1e-3)
    np.testing.assert_allclose(fits["L_inf"].values, [[0.3, 0.3], [0.1, 0.1]], rtol=1e-3)


# floor 0.2, factor 2: a plateau must lie clearly above 0.4 to be under-parametrized
PLATEAU, FALLING = np.full(T.size, 0.6), power_law(0.2, 0.5, 0.7)


@pytest.mark.parametrize(
    ("curves", "phase"),
    [
        ([PLATEAU, PLATEAU], UNDER),
        ([FALLING, FALLING], OVER),
        ([PLATEAU, FALLING], UNDETERMINED),  # the seeds disagree
        ([PLATEAU, np.full(T.size, np.nan)], UNDER),  # a diverged seed is left out
        ([np.full(T.size, np.nan)] * 2, UNDETERMINED),  # no valid run
    ],
)
def test_classify_plateau_is_under_falling_to_floor_is_over(curves, phase):
    fits = loss_array(curves)
    flag = classify(fits, xr.DataArray(0.2), factor=2.0)
    assert flag.item() == phase
    assert "window" not in flag.dims


def test_classify_calls_a_net_still_falling_far_above_the_floor_undetermined_not_over():
    # at 1.0 nats and falling at the end of the budget: the fit puts L_inf on its bound (0), an
    # extrapolation; the first rule called it over, the rule with t* waits for the loss to get there
    still_falling = power_law(0.0, 1.0, 0.3)
    fits = loss_array([still_falling, still_falling])
    level = 2.0 * xr.DataArray(0.2)
    assert classify(fits, xr.DataArray(0.2), factor=2.0).item() == OVER  # phase_legacy
    never = xr.DataArray(np.full(2, np.inf), dims="seed")
    assert classify(fits, xr.DataArray(0.2), 2.0, never).item() == UNDETERMINED
    reached = fits["L_inf"].isel(window=0, drop=True) * 0 + 3e4  # both seeds got below the level
    assert classify(fits, xr.DataArray(0.2), 2.0, reached).item() == OVER
    assert float(still_falling[-1]) > level


def test_classify_noisy_plateau_at_three_times_the_floor_is_under():
    fits = loss_array([noisy(PLATEAU, 0.02, seed) for seed in range(4)], starts=(100,))
    assert classify(fits, xr.DataArray(0.2), factor=2.0).item() == UNDER


@pytest.mark.parametrize("seed", [0, 5])
def test_power_law_floor_of_a_noisy_plateau_is_the_plateau_within_its_error(seed):
    L_inf, _, _, L_inf_err, *_ = fit_power_law(T, noisy(PLATEAU, 0.02, seed), start=100)
    assert abs(L_inf - 0.6) <= max(0.03, 4 * L_inf_err)


def test_clipped_fraction_is_weighted_by_the_steps_of_each_interval():
    step = np.array([0, 10, 100, 1000])
    record = xr.DataArray([np.nan, 1.0, 0.5, 0.0], dims="time", coords={"step": ("time", step)})
    # (10 x 1 + 90 x 0.5 + 900 x 0) / 1000; the unweighted mean would be 0.5
    assert clipped_fraction(record).item() == pytest.approx(0.055)


# A study whose learning times follow tau = A/(w - w_c(eps)) - 1 exactly: the loss excess over the data
# floor is K (W0 - w) + C/(1 + t) (+ LIFT at depth 2), so it reaches eps at t = C/(K (w - w_c)) - 1 with
# w_c(eps) = W0 - (eps - lift)/K and A = C/K = 2000 steps.
FLOOR, W0, K, C, LIFT = 0.01, 24, 0.01, 20.0, {1: 0.0, 2: 0.04}
STEPS = log_grid(10_000, 20)
EPS = [0.12, 0.1, 0.08, 0.005]
WIDTHS = (12, 14, 16, 18, 20, 22, 24)
CLIPPED_RUN = (1, 14, 1)  # clipped at every step up to step 100, never after
CONFIG = fits_config(window_start=[100, 300])


def true_w_c(depth, eps):
    return W0 - (eps - LIFT[depth]) / K


def study_run(depth, width, seed):
    loss = FLOOR + LIFT[depth] + K * (W0 - width) + C * (1 + 0.02 * seed) / (1.0 + STEPS)
    status = "diverged" if (depth, width, seed) == (2, 24, 1) else "completed"
    traj = make_trajectory(
        depth, width, seed, steps=STEPS, loss=loss, data_floor=FLOOR, status=status, diverged_step=3000
    )
    traj.attrs["checkpoints_per_decade"] = 20
    if (depth, width, seed) == CLIPPED_RUN:
        traj["clip_fraction"][...] = (STEPS <= 100).astype(float)
    config = ObservablesConfig(eps=EPS, smoothing_decades=0.1, tau_w=[10, 100, 1000], overlap_f=100)
    return run_observables(traj, config, {})


@pytest.fixture(scope="module")
def study():
    runs = [study_run(d, w, s) for d in (1, 2) for w in WIDTHS for s in (0, 1)]
    return combine_runs(runs, {"params_sha256": "x"})


@pytest.fixture(scope="module")
def fits(study):
    return fit_study(study, CONFIG, smoothing_decades=0.1)


def test_fit_study_gives_every_variable_its_units_and_long_name(fits):
    for name in ATTRS:
        if name in fits.variables:
            assert set(fits[name].attrs) >= {"long_name", "units"}, name
    assert {"alpha", "L_inf", "phase", "w_c", "A", "nu", "w_c_star", "mu", "clipped_fraction"} <= set(fits)
    assert fits["phase"].attrs["flag_meanings"] == "over under undetermined"
    assert fits.attrs["floor_factor"] == 2.0 and fits.attrs["ci"] == 0.95


def test_fit_study_every_data_variable_has_units(fits):
    assert [name for name in fits.data_vars if "units" not in fits[name].attrs] == []


def test_fit_study_recovers_the_power_law_of_every_run(fits):
    # the smoothed loss follows C/(1+t) on a 20/decade grid: alpha = 1 to the curvature of 1+t at t=100
    alpha = fits["alpha"].where(~fits["diverged"])
    np.testing.assert_allclose(alpha.values[np.isfinite(alpha.values)], 1.0, atol=0.03)
    plateau = fits["L_inf"].sel(seed=0) - FLOOR - xr.DataArray([0.0, 0.04], coords={"depth": [1, 2]})
    np.testing.assert_allclose(plateau, K * (W0 - fits["width"]).broadcast_like(plateau), atol=1e-3)


def test_fit_study_leaves_a_diverged_run_out_of_the_floor_and_phase(fits):
    assert fits["diverged"].sel(depth=2, width=24, seed=1)
    assert np.isnan(fits["L_inf"].sel(depth=2, width=24, seed=1))
    assert np.isnan(fits["clipped_fraction"].sel(depth=2, width=24, seed=1))
    # widest nets: median of the fitted L_inf over the seeds that did not diverge
    np.testing.assert_allclose(fits["sgd_floor"], [FLOOR, FLOOR + 0.04], atol=5e-4)
    np.testing.assert_allclose(fits["floor_ref"], [FLOOR, FLOOR + 0.04], atol=5e-4)


def test_fit_study_names_the_diverged_run_it_left_out(study, caplog):
    with caplog.at_level("WARNING", logger="bachglass.fits"):
        result = fit_study(study, CONFIG, smoothing_decades=0.1)
    assert result.attrs["excluded_runs"] == "d2_w24_s1 (diverged at step 3000)"
    assert "1 runs diverged and are left out of every fit: d2_w24_s1 (diverged at step 3000)" in caplog.text
    assert metrics(result)["excluded_runs"] == ["d2_w24_s1 (diverged at step 3000)"]
    assert checks_table.table([], result.attrs["excluded_runs"]).endswith(
        "Left out of every fit (diverged): d2_w24_s1 (diverged at step 3000).\n"
    )
    clean = fit_study(study.assign(diverged=study["diverged"] & False), CONFIG, smoothing_decades=0.1)
    assert clean.attrs["excluded_runs"] == "none" and metrics(clean)["excluded_runs"] == []
    assert "Left out" not in checks_table.table([], clean.attrs["excluded_runs"])


def test_fit_study_phase_is_under_above_twice_the_floor_and_over_at_it(fits):
    # depth 1: L_inf - floor = 0.01 (24 - w): under for w <= 22 (L_inf >= 0.03 > 0.02), over at 24
    assert fits["phase"].sel(depth=1).values.tolist() == [UNDER] * 6 + [OVER]
    # depth 2: floor_ref 0.05, L_inf = 0.05 + 0.01 (24 - w) > 0.1 for w <= 18
    assert fits["phase"].sel(depth=2).values.tolist() == [UNDER] * 4 + [OVER] * 3
    assert fits["w_under_max"].values.tolist() == [22, 18]
    assert fits["w_over_min"].values.tolist() == [24, 20]
    assert (fits["phase_legacy"] == fits["phase"]).all()  # every net here gets where its fit says
    assert fits["phase_legacy"].attrs["flag_meanings"] == "over under undetermined"


def test_metrics_tell_an_unbounded_end_from_no_fit():
    assert json_number(np.inf) == "inf" and json_number(-np.inf) == "-inf"
    assert json_number(np.nan) is None and json_number(0.0123456789) == 0.012346


def test_fit_study_eps_is_valid_only_where_floor_plus_eps_reaches_floor_factor_times_the_floor(fits):
    # depth 1: 0.01 + eps >= 2 x 0.01 for eps >= 0.01; depth 2: 0.01 + eps >= 2 x 0.05 for eps >= 0.09
    valid = fits["eps_valid"].transpose("depth", "eps").values.tolist()
    assert valid == [[True, True, True, False], [True, True, False, False]]
    assert np.isnan(fits["w_c"].sel(depth=1, eps=0.005)) and fits["n_widths"].sel(depth=1, eps=0.005) == 0
    assert np.isnan(fits["w_c"].sel(depth=2, eps=0.08))


def test_fit_study_recovers_w_c_within_half_a_width(fits):
    # tau is read off a 20/decade grid (12% steps, always rounded up): 0.5 in w is a few grid steps
    for depth, eps in [(1, 0.12), (1, 0.1), (1, 0.08), (2, 0.12), (2, 0.1)]:
        assert fits["w_c"].sel(depth=depth, eps=eps) == pytest.approx(true_w_c(depth, eps), abs=0.5)
        assert fits["A"].sel(depth=depth, eps=eps) == pytest.approx(C / K, rel=0.15)
        assert fits["n_widths"].sel(depth=depth, eps=eps) >= 3
        lo, hi = fits["w_c_lo"].sel(depth=depth, eps=eps), fits["w_c_hi"].sel(depth=depth, eps=eps)
        assert lo <= fits["w_c"].sel(depth=depth, eps=eps) <= hi
    # w_c(eps) = 24 - 100 eps at depth 1: the eps -> 0 limit is W0
    assert fits["w_c_star"].sel(depth=1) == pytest.approx(W0, abs=0.5)
    assert fits["w_c_star_slope"].sel(depth=1) == pytest.approx(-1 / K, rel=0.1)


def test_fit_study_clipped_fraction_is_the_step_weighted_mean(fits):
    # clipped at every interval up to step 100 of 10^4: 1%, not the 41/81 of an unweighted mean
    depth, width, seed = CLIPPED_RUN
    clipped = fits["clipped_fraction"].sel(depth=depth, width=width, seed=seed).item()
    assert clipped == pytest.approx(100 / STEPS[-1])
    others = fits["clipped_fraction"].drop_sel(width=CLIPPED_RUN[1])
    assert float(others.max()) == 0.0


def test_fit_study_t_star_is_the_first_step_below_twice_the_floor(fits):
    # widest depth-1 nets: L = 0.01 + C'/(1+t) <= 0.02 from t ~ 2000 on; plateaus above 0.02 never get there
    t_star = fits["t_star"].sel(depth=1)
    assert np.isinf(t_star.sel(width=22)).all()
    expected = STEPS[np.argmax(STEPS >= C / 0.01 - 1)]
    assert t_star.sel(width=24, seed=0).item() == pytest.approx(expected, rel=0.13)


# tails that follow the data: a plateau, a drop at tau_d, then L_inf + C t^-alpha
from bachglass.observables import learning_time  # noqa: E402


def transient_then_tail(tau_d, alpha, l_inf=0.01, steps=100_000):
    step = log_grid(steps, 25)
    loss = l_inf + (3.2 - l_inf) * (1 + step / tau_d) ** -alpha
    return xr.DataArray(loss, dims="time", coords={"step": ("time", step)})


def test_tail_fit_starts_after_the_runs_own_drop_and_recovers_alpha_where_a_fixed_window_does_not():
    loss = transient_then_tail(tau_d=300.0, alpha=0.8)
    tau = learning_time(loss, 0.0, 0.3)
    tail = tail_fits(loss, tau, CONFIG, floor=0.0)
    assert bool(tail["has_tail"]) and float(tail["tail_start"]) == pytest.approx(3 * float(tau))
    assert float(tail["tail_alpha"]) == pytest.approx(0.8, abs=0.05)
    assert float(tail["tail_fit_rms"]) < 0.01
    fixed = fit_power_law(loss["step"].values, loss.values, 100)  # the window holds the drop
    assert abs(fixed[2] - 0.8) > 0.1 or fixed[6] > 0.01
    assert float(tail["tail_exp_rms"]) > 3 * float(tail["tail_fit_rms"])  # the rival fits it worse


def test_an_exponential_approach_is_fitted_better_by_the_exponential_than_by_a_power_law():
    step = log_grid(100_000, 25)
    loss = 0.05 + 3.15 * np.exp(-step / 20_000.0)  # still falling over the tail window
    loss = xr.DataArray(noisy(loss, 0.005, seed=3), dims="time", coords={"step": ("time", step)})
    tail = tail_fits(loss, xr.DataArray(3000.0), CONFIG, floor=0.0)
    assert bool(tail["has_tail"]) and float(tail["tail_alpha"]) > 0
    assert float(tail["tail_exp_rms"]) < float(tail["tail_fit_rms"])


def test_a_run_that_drops_too_late_or_never_has_no_tail_not_a_misfit():
    late = transient_then_tail(tau_d=5_000.0, alpha=0.8)  # tau(0.3) ~ 1e5 x: no half decade left
    never = transient_then_tail(tau_d=1e9, alpha=0.8)
    runs = xr.concat([late, never], "run")
    tau = learning_time(runs, 0.0, 0.3)
    tail = tail_fits(runs, tau, CONFIG, floor=0.0)
    assert not tail["has_tail"].any()
    assert tail["tail_alpha"].isnull().all() and tail["tail_fit_rms"].isnull().all()

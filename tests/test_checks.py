"""The science checker: each check can print PASS and FAIL, judged on hand-made fits."""

import numpy as np
import pytest
import xarray as xr

from bachglass import checks, checks_table, legacy_checks
from bachglass.fits import OVER, UNDER, UNDETERMINED

DEPTHS, WIDTHS, SEEDS, EPS = [1, 2, 3], [4, 8, 12, 16, 24], [0, 1, 2], [0.3, 0.1, 0.05]
N_BOOT = 50
RNG = np.random.default_rng(7)  # the overrides' noise


def fits(**overrides: object) -> xr.Dataset:
    """A fits.nc that shows every claim of the paper; ``overrides`` replace variables by value."""
    rng = np.random.default_rng(0)
    run, net, crit = ("depth", "width", "seed"), ("depth", "width"), ("depth", "eps")
    coords = {"depth": DEPTHS, "width": WIDTHS, "seed": SEEDS, "eps": EPS, "boot": np.arange(N_BOOT)}
    shape = (len(DEPTHS), len(WIDTHS), len(SEEDS))
    w_c = np.array([[14.0, 15.0, 16.0], [12.0, 13.0, 14.0], [10.0, 11.0, 12.0]])  # rises as eps falls
    w_c_boot = w_c + rng.normal(0, 0.2, (N_BOOT, *w_c.shape))
    star = np.array([17.0, 15.0, 13.0])
    phase = np.array([[UNDER, UNDER, UNDETERMINED, OVER, OVER]] * 3)
    alpha = np.linspace(0.3, 2.0, len(WIDTHS))[:, None] + rng.normal(0, 0.05, shape)
    ds = xr.Dataset(
        {
            "has_tail": (run, np.ones(shape, bool)),
            "tail_fit_rms": (run, np.full(shape, 0.01)),
            "tail_exp_rms": (run, np.full(shape, 0.04)),
            "tail_alpha": (run, alpha),
            "nu_profile": ("depth", [1.0] * 3),
            "nu_profile_lo": ("depth", [0.8] * 3),
            "nu_profile_hi": ("depth", [1.3] * 3),
            "nu_dchi2_1": ("depth", [0.0] * 3),
            "nu_dchi2_2": ("depth", [12.0] * 3),
            "extrapolation_eps": ("eps", [False, True, True]),
            "w_c_star_fraction": ("depth", [1.0] * 3),
            "fit_rms": (run, np.full(shape, 0.01)),
            "alpha": (run, np.broadcast_to(np.linspace(0.3, 2.0, len(WIDTHS))[:, None], shape).copy()),
            "alpha_err": (run, np.full(shape, 0.02)),
            "alpha_window_spread": (run, np.full(shape, 0.05)),
            "diverged": (run, np.zeros(shape, bool)),
            "phase": (net, phase),
            "phase_legacy": (net, phase),
            "w_under_max": ("depth", [8.0] * 3),
            "w_over_min": ("depth", [16.0] * 3),
            "sgd_floor": ("depth", [0.006] * 3),
            "floor_ref": ("depth", [0.006] * 3),
            "w_c": (crit, w_c),
            "w_c_boot": (("boot", *crit), w_c_boot),
            "r2": (crit, np.full(w_c.shape, 0.99)),
            "r2_plain": (crit, np.full(w_c.shape, 0.99)),
            "nu": (crit, np.full(w_c.shape, 1.0)),
            "nu_lo": (crit, np.full(w_c.shape, 0.8)),
            "nu_hi": (crit, np.full(w_c.shape, 1.3)),
            "w_c_star": ("depth", star),
            "w_c_star_lo": ("depth", star - 1),
            "w_c_star_hi": ("depth", star + 1),
            "w_c_star_boot": (("boot", "depth"), star + rng.normal(0, 0.3, (N_BOOT, 3))),
            "w_c_star_legacy": ("depth", star),
            "w_c_star_legacy_lo": ("depth", star - 1),
            "w_c_star_legacy_hi": ("depth", star + 1),
            "w_c_star_legacy_boot": (("boot", "depth"), star + rng.normal(0, 0.3, (N_BOOT, 3))),
            "mu": (net, np.full(phase.shape, 1.0)),
            "mu_lo": (net, np.full(phase.shape, 0.9)),
            "mu_hi": (net, np.full(phase.shape, 1.1)),
            "S_simple": (net, np.full(phase.shape, 0.05)),
            "S_mu": (net, np.full(phase.shape, 0.05)),
            "S_short": (net, np.full(phase.shape, 0.05)),
            "S_long": (net, np.where(phase == OVER, 0.3, 0.05)),
            "t_star": (run, np.where((phase == OVER)[..., None], 2e4, np.inf) * np.ones(shape)),
            # the restart test: the floor at eta, eta/2, eta/4 drops and is reached later
            "sgd_floor_measured": ("setting", [0.02, 0.015]),
            "floor_time": (("setting", "floor_seed"), np.full((2, len(SEEDS)), 1e4)),
            "restart_floor": ("restart", [0.012, 0.008]),
            "restart_floor_time": (("restart", "floor_seed"), np.full((2, len(SEEDS)), 5e4)),
        },
        coords=coords | {"restart": [0.5, 0.25]},
        attrs={"ci": 0.95, "steps": 40000},
    )
    for name, value in overrides.items():
        ds[name] = (ds[name].dims, np.asarray(value, dtype=ds[name].dtype) * np.ones(ds[name].shape))
    return ds


@pytest.mark.parametrize("module", [checks, legacy_checks])
def test_fits_that_show_every_claim_pass_every_check(module):
    results = module.run_checks(fits())
    assert [c.number for c in results] == [1, 2, 3, 4, 5, 6, 7, 7]  # 7: the collapse, the restart test
    assert [c.verdict for c in results] == ["PASS"] * 8, [c.measured for c in results if not c.passed]


@pytest.mark.parametrize(
    ("number", "override"),
    [
        (1, {"tail_fit_rms": 0.2}),  # the power law misses the tails
        (1, {"tail_alpha": 1.0 + np.random.default_rng(5).normal(0, 0.05, (3, 5, 3))}),  # alpha the same
        (1, {"has_tail": False}),  # no run has a tail within the budget: not testable
        (1, {"has_tail": np.arange(45).reshape(3, 5, 3) < 6}),  # tails in 2 nets only: too few to judge
        (1, {"tail_exp_rms": 0.005}),  # an exponential approach fits the tails better
        (1, {"tail_alpha": 0.0}),  # the tails are flat: nothing falls
        (1, {"tail_alpha": 1.0 + 0.05 * np.arange(5)[:, None] + RNG.normal(0, 0.005, (3, 5, 3))}),  # by < 0.3
        (2, {"phase": [OVER, UNDER, UNDETERMINED, UNDER, OVER]}),  # phases do not split at one width
        (3, {"nu_dchi2_1": 9.0}),  # nu = 1 rejected
        (3, {"nu_dchi2_2": 1.0}),  # nu = 2 not rejected: nu not determined
        (3, {"nu_profile": np.nan}),  # no critical fit at the extrapolation eps
        (4, {"w_c": 13.0, "w_c_boot": 13.0}),  # w_c does not depend on eps
        (4, {"w_c_star_lo": 30.0, "w_c_star_hi": 32.0}),  # w_c* far from the L_inf phase boundary
        (4, {"w_c_star_lo": -np.inf}),  # w_c* not determined (replicas without a fit)
        (5, {"w_c_star": 13.0, "w_c_star_boot": 13.0}),  # no depth dependence
        (6, {"mu_lo": 0.3, "mu_hi": 0.5}),  # sub-aging, not simple aging
        (7, {"S_long": 0.05}),  # the collapse does not fail at long times
        (7, {"restart_floor": [0.02, 0.02]}),  # a smaller eta does not lower the floor
        (7, {"restart_floor_time": 5e3}),  # the floor is reached no later after the restart
    ],
)
def test_a_claim_that_does_not_show_fails_its_check_and_only_that(number, override):
    results = checks.run_checks(fits(**override))
    failed = [c.number for c in results if not c.passed]
    assert failed == [number], [(c.number, c.measured) for c in results]


def test_a_replica_without_w_c_star_counts_against_the_depth_effect():
    boot = fits()["w_c_star_boot"].values.copy()
    boot[: N_BOOT // 10, 0] = np.nan  # 10 % of the replicas have no w_c* at the first depth
    assert not checks.depth_dependence(fits(w_c_star_boot=boot)).passed
    assert legacy_checks.depth_dependence(fits(w_c_star_legacy_boot=boot)).passed  # dropped there


@pytest.mark.parametrize(
    ("number", "override"),
    [
        (1, {"fit_rms": 0.2}),  # the power law misses the late loss
        (1, {"alpha": 1.0}),  # alpha does not depend on d and w
        (3, {"r2_plain": 0.8}),  # 1/tau is not linear in w
        (3, {"nu_hi": 10.0}),  # nu not determined
        (4, {"w_c_star_legacy_lo": 30.0, "w_c_star_legacy_hi": 32.0}),  # w_c* far from the boundary
        (5, {"w_c_star_legacy": 13.0, "w_c_star_legacy_boot": 13.0}),  # no depth dependence
    ],
)
def test_the_legacy_criteria_read_the_legacy_variables(number, override):
    failed = [c.number for c in legacy_checks.run_checks(fits(**override)) if not c.passed]
    assert failed == [number]


def test_the_legacy_criteria_judge_the_legacy_phases_and_the_new_ones_do_not():
    unfinished = [OVER, OVER, OVER, OVER, OVER]  # L_inf alone: every net "over", no under to split from
    old = {c.number: c for c in legacy_checks.run_checks(fits(phase_legacy=unfinished))}
    new = {c.number: c for c in checks.run_checks(fits(phase_legacy=unfinished))}
    assert not old[2].passed and not old[4].passed  # the split moved: no under-parametrized width
    assert new[2].passed and new[4].passed


def test_restart_floors_on_the_fits_lower_bound_are_not_compared():
    ds = fits(restart_floor=[0.0037266, 0.0037265]).assign_attrs(data_floor=0.0037265)  # round-off apart
    new, old = checks.restart_test(ds), legacy_checks.restart_test(ds)
    assert not new.passed and "0.003727 (a run on the bound) at x0.5" in new.measured
    assert old.passed  # the first criterion compared them by their round-off
    assert checks.restart_test(fits().assign_attrs(data_floor=0.0037265)).passed
    # one seed on the bound: the median of the three lies above it, but that floor is not measured
    runs = [[0.0037265, 0.0203, 0.02], [0.0037265, 0.0123, 0.012]]
    runs = xr.DataArray(runs, dims=("restart", "floor_seed"))
    half = fits().assign(restart_floor_run=runs).assign_attrs(data_floor=0.0037265)
    assert not checks.restart_test(half).passed and legacy_checks.restart_test(half).passed


def test_table_prints_the_numbers_and_the_verdicts_new_and_old():
    ds = fits(tail_fit_rms=0.2)
    text = checks_table.table(checks.run_checks(ds))
    assert text.count("\n") == 10  # header, rule, 8 checks (7 in two parts)
    assert "**FAIL**" in text and "**PASS**" in text
    assert "w_c*: d1 17.0, d2 15.0, d3 13.0" in text
    both = checks_table.table(checks.run_checks(ds), legacy=legacy_checks.run_checks(ds))
    assert both.splitlines()[0].endswith("| old criteria |")
    assert both.splitlines()[2].endswith("**FAIL** | PASS |")  # check 1: new FAIL, old PASS
    assert "Old criteria (before calibration" in both


def test_aging_checks_judge_the_aging_subset_when_there_is_one():
    ds = fits()
    subset = ds[["mu", "mu_lo", "mu_hi", "S_simple", "S_mu", "S_short", "S_long", "phase", "t_star"]]
    subset = subset.assign(mu_lo=subset["mu_lo"] * 0 + 0.3, mu_hi=subset["mu_hi"] * 0 + 0.5)
    subset = subset.drop_vars(["eps", "boot"], errors="ignore")
    renamed = subset.rename({v: f"aging_{v}" for v in subset.data_vars})
    renamed = renamed.rename({d: f"aging_{d}" for d in ("depth", "width", "seed")})
    ds = xr.merge([ds, renamed.assign(aging_steps=xr.DataArray(200000))])
    six = checks.aging_under(ds)
    assert not six.passed and "aging subset, 200000 steps" in six.measured
    # the old verdicts read the subset's first-rule phases: here every aging net was "over" by L_inf alone
    ds["aging_phase_legacy"] = xr.full_like(ds["aging_phase"], OVER)
    old = legacy_checks.aging_under(legacy_checks.legacy_view(ds))
    assert "0/0 under-parametrized nets" in old.measured and "0/6" in checks.aging_under(ds).measured


def test_aging_check_reports_the_normalised_mu_beside_the_raw_one_without_judging_it():
    ds = fits()
    ds = ds.assign(mu_norm=ds["mu"] * 0 + 0.4, mu_lo_norm=ds["mu"] * 0 + 0.3, mu_hi_norm=ds["mu"] * 0 + 0.5)
    six = checks.aging_under(ds)
    assert six.passed  # judged on Delta as it is
    assert "Delta/(|theta|^2/N): mu 0.40-0.40, 1 in the interval for 0/6" in six.measured

import dataclasses
import logging
import re
import warnings

import numpy as np
import pytest
import xarray as xr
from conftest import log_grid, make_trajectory
from scipy.special import erf, erfinv

from bachglass import io
from bachglass.errors import DataError, ParamsError
from bachglass.observables import (
    ObservablesConfig,
    combine_runs,
    divergence_step,
    function_parameters,
    learning_time,
    run_observables,
    smoothed_loss,
    snap_to_grid,
)
from bachglass.two_time import LAG_COORD, SUMS, msd, on_lag_grid, relaxation_time, two_time_observables

CONFIG = ObservablesConfig(eps=[0.3, 0.1, 0.05], smoothing_decades=0.1, tau_w=[10, 30, 100], overlap_f=100)
PROVENANCE = {"params_sha256": "abc", "bachglass_version": "0.1.0"}


def loss_curve(values, steps, epochs_per_step=0.5):
    """One run's loss at the given checkpoint steps."""
    steps = np.asarray(steps)
    return xr.DataArray(
        np.asarray(values, float),
        dims="time",
        coords={"time": steps * epochs_per_step, "step": ("time", steps)},
    )


def test_learning_time_is_first_checkpoint_within_eps_of_floor():
    loss = loss_curve([2.0, 1.0, 0.6, 0.54, 0.52, 0.51], [0, 1, 10, 100, 1000, 10000])
    tau = learning_time(loss, floor=0.5, eps=[0.1, 0.05, 0.001])
    np.testing.assert_array_equal(tau.values, [10.0, 100.0, np.inf])
    np.testing.assert_array_equal(tau["eps"].values, [0.1, 0.05, 0.001])
    assert tau.attrs["units"] == "SGD steps"
    tau_epoch = learning_time(loss, floor=0.5, eps=[0.1, 0.05, 0.001], clock="time")
    np.testing.assert_array_equal(tau_epoch.values, [5.0, 50.0, np.inf])
    assert tau_epoch.attrs["units"] == "epoch"


def test_learning_time_of_a_scalar_eps_has_no_eps_dim():
    loss = loss_curve([2.0, 0.55], [0, 10])
    tau = learning_time(loss, floor=0.5, eps=0.1)
    assert tau.dims == () and tau.item() == 10.0 and tau["eps"].item() == 0.1


def test_never_reached_is_inf_not_nan():
    loss = loss_curve([2.0, 1.0, np.nan], [0, 1, 2])
    assert learning_time(loss, floor=0.5, eps=0.1).item() == np.inf


def test_single_checkpoint_spike_below_threshold_does_not_set_tau():
    steps = log_grid(1000, 25)
    values = np.ones(steps.size)
    spike = np.flatnonzero(steps >= 100)[0]
    values[spike] = 0.4
    low = np.flatnonzero(steps >= 400)[0]
    values[low:] = 0.45
    loss = loss_curve(values, steps)
    assert learning_time(loss, 0.5, 0.1).item() == steps[spike]  # raw: the spike counts
    tau = learning_time(smoothed_loss(loss, decades=0.1), 0.5, 0.1)
    assert tau.item() == steps[low]  # smoothed: only the sustained drop, from its first checkpoint


def test_smoothed_loss_keeps_step_zero_nan_and_dims():
    steps = log_grid(1000, 25)
    values = np.linspace(3.0, 1.0, steps.size)
    values[-3:] = np.nan
    loss = loss_curve(values, steps).expand_dims(seed=[0, 1])
    smooth = smoothed_loss(loss, decades=0.1)
    assert smooth.dims == loss.dims
    assert smooth.isel(time=0).values.tolist() == [3.0, 3.0]
    assert smooth.isel(seed=0, time=slice(-3, None)).isnull().all()
    sparse = loss["step"] <= 5  # grid sparser than the window: each checkpoint is its own median
    xr.testing.assert_identical(smooth.where(sparse, drop=True), loss.where(sparse, drop=True))
    assert (smooth.isel(seed=0).dropna("time").diff("time") <= 0).all()  # stays monotone


def test_snap_to_grid_snaps_in_log_dedupes_and_drops(caplog):
    grid = [0, 1, 2, 3, 5, 10, 20, 50, 100]
    with caplog.at_level(logging.WARNING, logger="bachglass.observables"):
        out = snap_to_grid([30, 10, 11, 200, 12], grid)
    np.testing.assert_array_equal(out, [10, 20])  # 30 is nearer 20 than 50 in log
    assert out.dtype == np.int64
    assert "30 snapped to the nearest checkpoint step 20" in caplog.text
    assert "200 is beyond the last checkpoint step 100" in caplog.text
    assert "onto the same checkpoint" in caplog.text


def test_snap_to_grid_rejects_a_non_positive_tau_w():
    with pytest.raises(ParamsError, match=r"observables\.tau_w: 0"):
        snap_to_grid([0], [0, 1, 10])


def test_msd_of_a_random_walk_grows_like_sigma2_lag():
    sigma, steps = 0.05, log_grid(1000, 10)
    traj = make_trajectory(steps=steps, sigma=sigma, group_sizes={"layer1": 20000, "readout": 5000})
    delta = msd(traj["theta"], [10, 100])
    assert delta.dims == ("depth", "width", "seed", "tau_w", "time")
    lag = delta[LAG_COORD]
    np.testing.assert_array_equal(lag.sel(tau_w=100).values, steps - 100)
    assert delta.where(lag < 0).isnull().all()  # t' < tau_w: undefined
    assert np.nanmax(delta.where(lag == 0)) == 0.0
    ratio = (delta / (sigma**2 * lag)).where(lag > 0).values
    ratio = ratio[np.isfinite(ratio)]
    assert ratio.size >= 30
    np.testing.assert_allclose(ratio, 1.0, rtol=0.05)  # relative std sqrt(2/N) ~ 0.9 %


def test_msd_of_a_frozen_net_is_zero_on_both_grids():
    steps = log_grid(100, 10)
    traj = make_trajectory(steps=steps, theta=np.tile(np.arange(11.0), (steps.size, 1)))
    delta = msd(traj["theta"], [10])
    assert np.nanmax(delta.where(delta[LAG_COORD] >= 0)) == 0.0
    assert delta.where(delta[LAG_COORD] >= 0).notnull().sum() > 10
    on_grid = on_lag_grid(delta, [1, 5, 50, 90])
    np.testing.assert_array_equal(on_grid.squeeze().values, [np.nan, 0.0, 0.0, 0.0])  # lag 1 < first lag 3


WALK_SIGMA = 0.002  # with θ0 ~ N(0, 1) and f = 100: Q(τ) = erf(ε/√(2σ²τ)) reaches 1/e at τ ≈ 110 steps


def finite(*arrays):
    """The values of ``arrays``, broadcast against each other, where all of them are finite (flat)."""
    arrays = xr.broadcast(*arrays)
    keep = np.logical_and.reduce([np.isfinite(a.values) for a in arrays])
    return [a.values[keep] for a in arrays]


@pytest.fixture(scope="module")
def walk():
    """A Gaussian random walk of 20000 parameters from θ0 ~ N(0, 1), 20 checkpoints per decade."""
    steps = log_grid(1000, 20)
    traj = make_trajectory(steps=steps, sigma=WALK_SIGMA, group_sizes={"layer1": 15000, "readout": 5000})
    return run_observables(traj, dataclasses.replace(CONFIG, tau_w=[10, 100]), PROVENANCE).squeeze()


def test_random_walk_displacements_are_gaussian(walk):
    lag = walk[LAG_COORD].where(walk[LAG_COORD] > 0)
    (ratio,) = finite(walk["msd"] / (WALK_SIGMA**2 * lag))
    np.testing.assert_allclose(ratio, 1, rtol=0.05)
    # delta method for N Gaussian displacements: std(Y) = sqrt(24/N) = 0.035, std(α₂) = 0.012 (N = 20000)
    y, alpha2, _ = finite(walk["y_ratio"], walk["alpha2"], lag)
    assert y.size >= 50
    np.testing.assert_allclose(y, 3, atol=0.2)
    np.testing.assert_allclose(alpha2, 0, atol=0.07)
    group, _ = finite(walk["alpha2_group"], lag)
    np.testing.assert_allclose(group, 0, atol=0.12)  # N = 5000 in readout: std 0.023
    assert (
        walk["y_ratio"].where(lag.isnull()).isnull().all()
        and walk["alpha2"].where(lag.isnull()).isnull().all()
    )


def test_random_walk_overlap_is_the_free_diffusion_erf(walk):
    lag = walk[LAG_COORD].where(walk[LAG_COORD] >= 0)
    eps = walk["overlap_eps"]
    np.testing.assert_allclose(eps, 0.01, rtol=0.02)  # std θ(τ_w) = sqrt(1 + σ²τ_w) ≈ 1, / f = 100
    with np.errstate(divide="ignore"):
        expected = erf(eps / np.sqrt(2 * WALK_SIGMA**2 * lag))
    got, want = finite(walk["overlap"], expected)
    assert got.size >= 50 and (got[want == 1] == 1).all()  # lag 0: Q = 1
    np.testing.assert_allclose(got, want, atol=0.015)  # binomial std <= 0.5 / sqrt(N) = 0.0035


def test_random_walk_relaxation_times_solve_the_erf(walk):
    def solving(q):  # the lag at which erf(ε/√(2σ²τ)) = q
        return (walk["overlap_eps"] / erfinv(q)) ** 2 / (2 * WALK_SIGMA**2)

    # δQ = 0.0035 moves ln τ by δQ / |dQ/dln τ| = 0.0035 / 0.17: 2 %; interpolating this curved Q linearly
    # in log lag adds < 1 %. τ_90 ≈ 9 steps is tested at τ_w = 10 only: at τ_w = 100 the first lag is 12.
    np.testing.assert_allclose(walk["tau_e"], solving(1 / np.e), rtol=0.1)
    np.testing.assert_allclose(walk["tau_90"].sel(tau_w=10), solving(0.9).sel(tau_w=10), rtol=0.1)


def test_cosine_of_a_walk_from_zero_is_the_square_root_of_the_time_ratio():
    rng = np.random.default_rng(7)
    steps = log_grid(1000, 10)
    theta = np.cumsum(rng.normal(size=(steps.size, 20000)) * np.sqrt(np.diff(steps, prepend=0))[:, None], 0)
    traj = make_trajectory(steps=steps, theta=theta, group_sizes={"layer1": 10000, "readout": 10000})
    pair = two_time_observables(traj["theta"], [10, 100], overlap_f=100, groups=traj["group"])
    expected = np.sqrt(pair["tau_w"] / traj["step"].where(pair[LAG_COORD] >= 0))  # θ(τ_w)·θ(t') ≈ N τ_w
    got, want = finite(pair["cosine"], expected)
    assert got.size >= 30
    np.testing.assert_allclose(got, want, atol=0.03)  # std ~ 1/sqrt(N) = 0.007
    got, want = finite(pair["cosine_group"], expected)
    np.testing.assert_allclose(got, want, atol=0.04)


def test_half_frozen_half_gaussian_displacements_have_alpha2_one():
    n, s = 200000, 0.3
    rng = np.random.default_rng(3)
    theta = np.tile(rng.normal(size=n), (3, 1))
    theta[2, n // 2 :] += rng.normal(scale=np.sqrt(s), size=n // 2)  # layer1 frozen, readout Gaussian
    traj = make_trajectory(steps=[0, 1, 2], theta=theta, group_sizes={"layer1": n // 2, "readout": n // 2})
    pair = two_time_observables(traj["theta"], [1], overlap_f=100, groups=traj["group"]).squeeze()
    last = pair.isel(time=2)
    # E Δθ⁴ / (E Δθ²)² = (3s²/2) / (s/2)² = 6; delta method: std(Y) = sqrt(228 / N) = 0.034
    assert last["msd"] == pytest.approx(s / 2, rel=0.02) and last["quartic"] == pytest.approx(
        1.5 * s**2, rel=0.05
    )
    assert last["y_ratio"] == pytest.approx(6, abs=0.2) and last["alpha2"] == pytest.approx(1, abs=0.07)
    frozen, moving = last.sel(group="layer1"), last.sel(group="readout")
    assert frozen["msd_group"] == 0 and frozen["overlap_group"] == 1 and frozen["cosine_group"] == 1
    assert np.isnan(frozen["alpha2_group"]) and moving["alpha2_group"] == pytest.approx(0, abs=0.03)


def test_frozen_net_has_zero_displacement_full_overlap_and_no_relaxation():
    steps = log_grid(100, 10)
    traj = make_trajectory(steps=steps, theta=np.tile(np.arange(11.0), (steps.size, 1)))
    ds = run_observables(traj, CONFIG, PROVENANCE).squeeze()
    for name, value in {"msd": 0, "quartic": 0, "overlap": 1, "cosine": 1}.items():  # C = x / sqrt(x²) = 1
        for var in (name, f"{name}_group"):
            (got,) = finite(ds[var])
            assert got.size >= 15 and (got == value).all(), var
    assert ds["y_ratio"].isnull().all() and ds["alpha2"].isnull().all() and ds["alpha2_group"].isnull().all()
    assert (ds["tau_e"] == np.inf).all() and (ds["tau_90"] == np.inf).all()
    assert (finite(ds["overlap_lag"])[0] == 1).all() and (finite(ds["cosine_lag"])[0] == 1).all()


def overlap_series(q, lags):
    """Q(τ_w = 0, lag) on the checkpoints ``lags`` (lag 0 included)."""
    lags = np.asarray(lags)
    return xr.DataArray(
        np.asarray(q, float)[None],
        dims=("tau_w", "time"),
        coords={"tau_w": [0], "step": ("time", lags), LAG_COORD: (("tau_w", "time"), lags[None])},
    )


def test_relaxation_time_interpolates_linearly_in_log_lag_and_in_lag_from_zero():
    lags = np.concatenate([[0], 2 ** np.arange(1, 11)])
    q = np.concatenate([[1.0], 1 - 0.1 * np.log(lags[1:])])  # linear in log lag: interpolation is exact
    tau = {f: relaxation_time(overlap_series(q, lags), f) for f in (1 / np.e, 0.9, 0.01)}
    assert tau[1 / np.e].dims == ("tau_w",)
    assert tau[1 / np.e].item() == pytest.approx(np.exp((1 - 1 / np.e) / 0.1), rel=1e-12)
    assert tau[0.9].item() == pytest.approx(np.e, rel=1e-12)
    assert tau[0.01].item() == np.inf  # Q(1024) = 0.31: censored
    half = relaxation_time(overlap_series(q / 2, lags), 1 / np.e)  # relative to Q(0), not to 1
    assert half.item() == pytest.approx(tau[1 / np.e].item(), rel=1e-12)
    q[1] = 0.8  # crosses 0.9 between lag 0 and lag 2: linear in lag there (log 0 is undefined)
    assert relaxation_time(overlap_series(q, lags), 0.9).item() == pytest.approx(1.0, rel=1e-12)
    q[6:] = np.nan  # the run stopped (diverged) at lag 64 before reaching 0.01 Q(0): invalid, not censored
    assert np.isnan(relaxation_time(overlap_series(q, lags), 0.01).item())


def test_overlap_and_cosine_are_interpolated_linearly_in_log_lag():
    steps = log_grid(1000, 10)
    lag = steps[None, :] - np.array([[10]])
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(lag > 0, 0.2 - 0.1 * np.log(np.where(lag > 0, lag, 1)), np.nan)  # crosses 0
    series = xr.DataArray(
        q,
        dims=("tau_w", "time"),
        coords={"tau_w": [10], "step": ("time", steps), LAG_COORD: (("tau_w", "time"), lag)},
    )
    lags = np.array([3, 7, 50, 990])
    out = on_lag_grid(series, lags, log_values=False)
    np.testing.assert_allclose(out.squeeze(), 0.2 - 0.1 * np.log(lags), rtol=1e-12)
    assert out.squeeze()[-1] < 0


def test_group_moments_weighted_by_group_size_average_to_the_total():
    traj = make_trajectory(depth=3, group_sizes={"layer1": 7, "layer2": 30, "layer3": 4, "readout": 12})
    pair = two_time_observables(traj["theta"], [10, 100], overlap_f=100, groups=traj["group"])
    grouped = msd(traj["theta"], [10, 100], groups=traj["group"])
    assert grouped.dims == ("depth", "width", "seed", "group", "tau_w", "time")
    assert grouped["group"].values.tolist() == ["layer1", "layer2", "layer3", "readout"]
    xr.testing.assert_identical(grouped, pair["msd_group"])
    sizes = xr.DataArray([7, 30, 4, 12], coords={"group": grouped["group"]})
    for name in ("msd", "quartic"):
        weighted = (pair[f"{name}_group"] * sizes).sum("group", skipna=False) / 53
        xr.testing.assert_allclose(weighted, pair[name], rtol=1e-12)


def test_groups_need_not_be_contiguous():
    traj = make_trajectory(group_sizes={"layer1": 40, "readout": 40})
    order = np.argsort(np.arange(80) % 2, kind="stable")  # params 0, 2, 4, ... then 1, 3, 5, ...
    mixed = np.where(np.arange(80) % 2 == 0, "layer1", "readout")
    apart = two_time_observables(traj["theta"], [10], overlap_f=100, groups=mixed)
    together = two_time_observables(traj["theta"].isel(param=order), [10], overlap_f=100, groups=mixed[order])
    xr.testing.assert_allclose(apart, together, rtol=1e-12)


def test_msd_is_the_plain_mean_square_to_the_last_bit():
    traj = make_trajectory(depth=2, group_sizes={"layer1": 300, "layer2": 200, "readout": 100})
    theta = traj["theta"].astype(np.float64)
    pair = two_time_observables(traj["theta"], [10, 100], overlap_f=100, groups=traj["group"])
    for tau_w in (10, 100):
        sq = (theta - theta.sel(time=theta["step"] == tau_w).squeeze("time", drop=True)) ** 2
        plain = sq.mean("param")
        later = traj["step"] >= tau_w
        np.testing.assert_array_equal(pair["msd"].sel(tau_w=tau_w).where(later), plain.where(later))
        by_group = sq.groupby("group").mean("param").transpose(*pair["msd_group"].dims[:-2], "time")
        got = pair["msd_group"].sel(tau_w=tau_w, drop=True).drop_vars(LAG_COORD)
        xr.testing.assert_allclose(got.where(later), by_group.where(later), rtol=1e-13)


def test_lag_grid_interpolation_is_exact_for_a_power_law():
    steps = log_grid(1000, 10)
    tau_w = np.array([10, 100])
    lag = steps[None, :] - tau_w[:, None]
    with np.errstate(invalid="ignore"):
        values = np.where(lag >= 0, 3.0 * np.abs(lag) ** 0.7, np.nan)
    delta = xr.DataArray(
        values,
        dims=("tau_w", "time"),
        coords={"tau_w": tau_w, "step": ("time", steps), LAG_COORD: (("tau_w", "time"), lag)},
    )
    lags = np.array([1, 2, 3, 7, 50, 500, 900, 2000])
    out = on_lag_grid(delta, lags)
    assert out.dims == ("tau_w", "lag") and out["lag"].values.tolist() == lags.tolist()
    first = [lag[j][lag[j] > 0].min() for j in range(2)]  # 3 for tau_w=10, 1 for tau_w=100
    expected = np.array(
        [[3.0 * x**0.7 if first[j] <= x <= 1000 - tau_w[j] else np.nan for x in lags] for j in range(2)]
    )
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)


def test_run_observables_layout_and_io_round_trip(tmp_path):
    traj = make_trajectory(depth=2, width=8, seed=1)
    ds = run_observables(traj, CONFIG, PROVENANCE)
    assert dict(ds.sizes) == {
        "depth": 1, "width": 1, "seed": 1, "time": traj.sizes["time"],
        "eps": 3, "tau_w": 3, "lag": ds.sizes["lag"], "group": 3,
    }  # fmt: skip
    run = ("depth", "width", "seed")
    dims = {
        "loss": (*run, "time"),
        "heldout_loss": (*run, "time"),
        "clip_fraction": (*run, "time"),
        "tau": (*run, "eps"),
        "tau_epoch": (*run, "eps"),
        "msd": (*run, "tau_w", "time"),
        "msd_lag": (*run, "tau_w", "lag"),
        "msd_group": (*run, "group", "tau_w", "time"),
        "msd_normalised": (*run, "tau_w", "time"),
        "msd_normalised_lag": (*run, "tau_w", "lag"),
        "theta_sq_mean": (*run, "time"),
        **{v: (*run, "tau_w", "time") for v in (*SUMS[1:], "y_ratio", "alpha2")},
        **{f"{v}_group": (*run, "group", "tau_w", "time") for v in (*SUMS[1:], "alpha2")},
        "overlap_eps": (*run, "tau_w"),
        "overlap_eps_group": (*run, "group", "tau_w"),
        "overlap_lag": (*run, "tau_w", "lag"),
        "cosine_lag": (*run, "tau_w", "lag"),
        "tau_e": (*run, "tau_w"),
        "tau_90": (*run, "tau_w"),
        "n_parameters_group": (*run, "group"),
        "n_parameters": run,
        "diverged": run,
        "diverged_step": run,
    }
    assert {name: ds[name].dims for name in ds.data_vars} == dims
    assert ds[LAG_COORD].dims == ("tau_w", "time")
    assert ds["tau_w"].values.tolist() == [10, 32, 100]  # 30 snapped onto the grid
    assert set(ds["tau_w"].values) <= set(traj["step"].values)
    assert ds["lag"].values.min() == 1 and ds["lag"].values.max() <= traj["step"].values[-1] - 10
    for name, var in ds.variables.items():
        assert var.attrs.get("units") and var.attrs.get("long_name"), name
    assert ds["tau"].attrs["units"] == "SGD steps" and ds["loss"].attrs["units"] == "nat per note"
    assert ds["tau_e"].attrs["units"] == "SGD steps" and ds["overlap"].attrs["units"] == "1"
    assert ds.attrs == {
        **PROVENANCE, "n_parameters": 17, "data_floor": 0.5, "status": "completed", "diverged_step": -1,
        "cell": "synthetic", "lr": 0.5, "batch_size": 16, "device": "cpu",
    }  # fmt: skip
    assert ds["n_parameters_group"].values.ravel().tolist() == [6, 6, 5]
    assert not ds["diverged"].item() and ds["diverged_step"].item() == -1
    io.write_netcdf(ds, tmp_path / "observables.nc")
    xr.testing.assert_identical(io.read_netcdf(tmp_path / "observables.nc", required=["tau"]), ds)


def test_run_observables_never_reached_is_censored_inf():
    traj = make_trajectory(data_floor=0.5)  # loss = floor + 2/sqrt(1 + step) > floor + 0.05 up to step 1000
    tau = run_observables(traj, CONFIG, PROVENANCE)["tau"].squeeze()
    assert np.isfinite(tau.sel(eps=0.3)) and tau.sel(eps=0.05) == np.inf


def test_diverged_run_is_invalid_not_censored():
    traj = make_trajectory(status="diverged", diverged_step=200)
    ds = run_observables(traj, CONFIG, PROVENANCE).squeeze()
    assert ds["diverged"].item() and ds.attrs["status"] == "diverged" and ds["diverged_step"].item() == 200
    assert np.isfinite(ds["tau"].sel(eps=0.3))  # reached before the divergence: kept
    assert ds["tau"].sel(eps=0.05).isnull() and ds["tau_epoch"].sel(eps=0.05).isnull()
    after = ds["step"] >= 200
    for name in [v for v in ds.data_vars if "tau_w" in ds[v].dims and "time" in ds[v].dims]:
        assert ds[name].where(after).isnull().all(), name
    before = ~after & (ds[LAG_COORD] > 0)
    for name in ("msd", "quartic", "y_ratio", "alpha2", "overlap", "cosine", "alpha2_group"):
        assert ds[name].sel(tau_w=10).where(before).notnull().sum() > 5, name


def test_a_run_knocked_back_above_its_initial_loss_diverged_there():
    """The study's divergence criterion is the stability scan's: NaN, or back above the initial loss."""
    steps = log_grid(1000, 10)
    loss = 0.5 + 2.0 / np.sqrt(1.0 + steps)
    spike = int(steps[np.searchsorted(steps, 300)])
    knocked = np.where(steps >= spike, 3.0, loss)  # a gradient spike at `spike`: 3 > 2.5 at step 0
    ds = run_observables(make_trajectory(loss=knocked), CONFIG, PROVENANCE).squeeze()
    assert ds["diverged"].item() and ds["diverged_step"].item() == spike
    assert ds.attrs["status"] == "completed"  # the trainer did not stop it; the criterion flags it
    assert ds["tau"].sel(eps=0.05).isnull()  # not reached before the spike: invalid, not censored
    assert ds["msd"].where(ds["step"] >= spike).isnull().all()
    high = np.where(steps >= spike, 2.4, loss)  # high, but below the initial 2.5: not diverged
    ds = run_observables(make_trajectory(loss=high), CONFIG, PROVENANCE).squeeze()
    assert not ds["diverged"].item() and ds["diverged_step"].item() == -1
    np.testing.assert_array_equal(
        divergence_step(
            np.array([[1.0, 0.5, 1.5], [1.0, np.nan, 0.2], [1.0, 0.5, 0.2]]),
            np.array([0, 10, 20]),
            np.array([-1, 10, -1]),
        ),
        [20, 10, -1],
    )


@pytest.mark.parametrize(("sigma", "reached"), [(0.01, True), (1e-6, False)])
def test_relaxation_time_of_a_diverged_run_is_nan_unless_reached_before(sigma, reached):
    times = {}
    for status in ("diverged", "completed"):
        traj = make_trajectory(status=status, diverged_step=200, sigma=sigma)
        times[status] = run_observables(traj, CONFIG, PROVENANCE)[["tau_e", "tau_90"]]
    if reached:  # Q(0)/e is reached within a few steps: the divergence does not matter
        assert (np.isfinite(times["diverged"].to_array()) & (times["diverged"].to_array() < 100)).all()
        xr.testing.assert_equal(times["diverged"], times["completed"])
    else:  # Q stays ~1: censored (+inf) if the run went on, invalid (NaN) if it diverged
        assert times["diverged"].to_array().isnull().all()
        assert (times["completed"].to_array() == np.inf).all()


def probes_of(traj, steps=None):
    """Accuracy and sharpness on the trajectory's run dims and checkpoints (or on other ``steps``)."""
    grid = traj if steps is None else make_trajectory(steps=steps)
    base = xr.zeros_like(grid["loss"].assign_coords({d: traj[d] for d in ("depth", "width", "seed")}))
    k = np.arange(grid.sizes["time"])
    return xr.Dataset(
        {
            "accuracy": base + k / k[-1],
            "heldout_accuracy": (base + k / k[-1] / 2).assign_attrs(units="1", long_name="held-out accuracy"),
            "sharpness": base + 10.0,
        }
    )


def test_run_observables_merges_the_probes_as_they_are():
    traj = make_trajectory()
    probes = probes_of(traj)
    ds = run_observables(traj, CONFIG, PROVENANCE, probes=probes)
    for name in ("accuracy", "heldout_accuracy", "sharpness"):
        np.testing.assert_array_equal(ds[name].values, probes[name].values)
        assert ds[name].dims == ("depth", "width", "seed", "time")
    assert ds["heldout_accuracy"].attrs == {"units": "1", "long_name": "held-out accuracy"}
    without = run_observables(traj, CONFIG, PROVENANCE)
    xr.testing.assert_identical(ds.drop_vars(["accuracy", "heldout_accuracy", "sharpness"]), without)


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        (
            lambda t: probes_of(t, steps=log_grid(1000, 12)),
            r"time, step differ from the trajectory's \(probes: 34 checkpoints, the trajectory 29\); re-run",
        ),
        (lambda t: probes_of(t).assign_coords(seed=[1]), "seed differ"),
        (lambda t: probes_of(t).assign(loss=t["loss"]), "loss already"),
    ],
)
def test_probes_on_another_grid_are_a_data_error(probes, message):
    traj = make_trajectory()
    with pytest.raises(DataError, match="probes of d1_w4_s0: " + message):
        run_observables(traj, CONFIG, PROVENANCE, probes=probes(traj))


def test_run_observables_carries_the_langevin_temperature():
    traj = make_trajectory()
    traj.attrs["temperature"] = 0.001
    assert run_observables(traj, CONFIG, PROVENANCE).attrs["temperature"] == 0.001


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ({"vars": ["theta"]}, "trajectory d1_w4_s0: no variable 'theta'"),
        ({"attrs": ["data_floor", "status"]}, "no attribute 'data_floor', no attribute 'status'"),
        ({"status": "running"}, r"no valid status \('running'; expected completed or diverged\)"),
        ({"sizes": 2}, "no dimension 'seed' of length 1"),
    ],
)
def test_incomplete_trajectory_is_a_data_error_naming_what_is_missing(drop, message):
    traj = make_trajectory().drop_vars(drop.get("vars", []))
    for attr in drop.get("attrs", []):
        del traj.attrs[attr]
    if "status" in drop:
        traj.attrs["status"] = drop["status"]
    if "sizes" in drop:
        traj = xr.concat([traj, traj.assign_coords(seed=[1])], "seed")
    with pytest.raises(DataError, match=message):
        run_observables(traj, CONFIG, PROVENANCE)


@pytest.mark.parametrize("damage", ["random_bytes", "truncated_to_half", "empty"])
def test_corrupt_trajectory_file_is_a_data_error_naming_it_and_how_to_recreate_it(tmp_path, damage):
    path = tmp_path / "results" / "runs" / "d1_w4_s0" / "trajectory.nc"
    io.write_netcdf(make_trajectory(), path)
    assert "theta" in io.read_netcdf(path, required=["loss", "theta"])
    whole = path.read_bytes()
    path.write_bytes(
        {
            "random_bytes": np.random.default_rng(0).bytes(len(whole)),
            "truncated_to_half": whole[: len(whole) // 2],
            "empty": b"",
        }[damage]
    )
    message = (
        re.escape(f"{path}: not a readable NetCDF file (")
        + r".*\); "
        + re.escape(f"re-create it: snakemake {path} -f")
    )
    with pytest.raises(DataError, match=message):
        io.read_netcdf(path, required=["loss", "theta"])


def grid_runs(depths=(1, 2), widths=(4, 8), seeds=(0, 1), skip=()):
    return [
        run_observables(make_trajectory(d, w, s), CONFIG, PROVENANCE)
        for d in depths
        for w in widths
        for s in seeds
        if (d, w, s) not in skip
    ]


@pytest.fixture(scope="module")
def study():
    runs = grid_runs()
    runs.reverse()  # the order of the files must not matter
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no old-default combine
        return combine_runs(runs, {"params_sha256": "study"})


def test_combine_runs_tiles_the_grid_without_leaking_group(study, tmp_path):
    assert dict(study.sizes)["depth"] == 2 and study.sizes["width"] == 2 and study.sizes["seed"] == 2
    assert study["depth"].values.tolist() == [1, 2] and study["seed"].values.tolist() == [0, 1]
    assert study["loss"].dims == ("depth", "width", "seed", "time")
    assert study["msd"].dims == ("depth", "width", "seed", "tau_w", "time")
    assert study["tau"].dims == ("depth", "width", "seed", "eps")
    assert study["group"].values.tolist() == ["layer1", "layer2", "readout"]
    one = study.sel(depth=1, group="layer2")
    assert one["msd_group"].isnull().all() and (one["n_parameters_group"] == 0).all()
    assert study["msd_group"].sel(depth=2, group="layer2").notnull().any()
    assert study["n_parameters"].sel(width=4, seed=0).values.tolist() == [11, 17]
    assert study["diverged"].dtype == bool and not study["diverged"].any()
    assert study.attrs == {
        "params_sha256": "study", "data_floor": 0.5,
        "cell": "synthetic", "lr": 0.5, "batch_size": 16, "device": "cpu",
    }  # fmt: skip
    assert study["loss"].attrs["units"] == "nat per note"
    io.write_netcdf(study, tmp_path / "study.nc")
    xr.testing.assert_identical(io.read_netcdf(tmp_path / "study.nc"), study)


def test_combine_runs_pads_the_group_variables_of_shallower_runs(study):
    names = [v for v in study.data_vars if "group" in study[v].dims and v != "n_parameters_group"]
    assert sorted(names) == sorted(f"{v}_group" for v in (*SUMS, "alpha2", "overlap_eps"))
    for name in names:
        assert study[name].dims[:4] == ("depth", "width", "seed", "group"), name
        assert study[name].sel(depth=1, group="layer2").isnull().all(), name
        assert study[name].sel(depth=2, group="layer2").notnull().any(), name
        assert study[name].sel(depth=1, group="layer1").notnull().any(), name
    for name in ("tau_e", "tau_90", "overlap_eps"):
        assert study[name].dims == ("depth", "width", "seed", "tau_w") and study[name].notnull().all(), name
    assert study["overlap_lag"].dims == ("depth", "width", "seed", "tau_w", "lag")


def test_combine_runs_keeps_each_runs_values(study):
    run = run_observables(make_trajectory(2, 8, 1), CONFIG, PROVENANCE)
    picked = study.sel(depth=[2], width=[8], seed=[1], group=run["group"].values)
    names = ["loss", "tau", "msd", "msd_lag", "msd_group", "overlap", "tau_e", "cosine_lag", "alpha2_group"]
    xr.testing.assert_allclose(picked[names], run[names])


def test_combine_runs_names_a_missing_run():
    with pytest.raises(DataError, match="study: missing runs d2_w4_s1;"):
        combine_runs(grid_runs(skip={(2, 4, 1)}), PROVENANCE)


def test_combine_runs_rejects_a_run_given_twice():
    runs = grid_runs(depths=(1,), widths=(4,), seeds=(0,))
    with pytest.raises(DataError, match="d1_w4_s0 given twice"):
        combine_runs(runs + runs, PROVENANCE)


def test_study_keeps_the_training_settings_that_all_runs_share():
    runs = []
    for width, lr in [(4, 0.25), (8, 0.25)]:
        traj = make_trajectory(1, width, 0)
        traj.attrs |= {"lr": lr, "batch_size": 8, "device": "cpu"}
        runs.append(run_observables(traj, CONFIG, PROVENANCE))
    study = combine_runs(runs, PROVENANCE)
    assert (study.attrs["cell"], study.attrs["lr"], study.attrs["batch_size"]) == ("synthetic", 0.25, 8)
    runs[1].attrs["lr"] = 0.5
    assert "lr" not in combine_runs(runs, PROVENANCE).attrs


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_a_layers_two_biases_count_once_as_their_sum(cell):
    import torch

    from bachglass import model

    vocab, depth, width = (3, 4, 2, 3), 2, 5
    specs = model.param_specs(cell, depth, width, vocab)
    steps = log_grid(100, 10)
    traj = make_trajectory(depth=depth, width=width, steps=steps, cell=cell, group_sizes={
        **{f"layer{i}": sum(s.size for s in specs if s.group == f"layer{i}") for i in range(1, depth + 1)},
        "readout": sum(s.size for s in specs if s.group == "readout"),
    })  # fmt: skip
    theta = traj["theta"].values[0, 0, 0]  # (time, N)
    merged = function_parameters(traj)
    gates = {"rnn_tanh": 1, "gru": 3, "lstm": 4}[cell]
    n_merged = depth * width * (2 if cell == "gru" else gates)  # GRU: r and z only (n multiplies b_hn by r)
    assert merged.sizes["param"] == theta.shape[1] - n_merged
    # the function is the same with (b_ih + b_hh, 0) as with (b_ih, b_hh): b_hh's merged part is redundant
    net = model.RNNModel(cell, depth, width, vocab)
    flat = torch.as_tensor(theta[-1], dtype=torch.float64)
    views = dict(zip([s.name for s in specs], model.split_flat(flat.clone(), specs), strict=True))
    moved = flat.clone()
    moved_views = dict(zip([s.name for s in specs], model.split_flat(moved, specs), strict=True))
    for layer in range(depth):
        n = gates * width if cell != "gru" else 2 * width
        moved_views[f"rnn.bias_ih_l{layer}"][:n] += views[f"rnn.bias_hh_l{layer}"][:n]
        moved_views[f"rnn.bias_hh_l{layer}"][:n] = 0
    x = torch.randn(6, 2, sum(vocab), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    outputs = []
    for values in (flat, moved):
        for (_name, p), v in zip(
            net.double().named_parameters(), model.split_flat(values, specs), strict=True
        ):
            p.data.copy_(v)
        outputs.append(net(x))
    torch.testing.assert_close(outputs[0], outputs[1])
    keep, source, target = model.merged_biases(cell, specs)
    np.testing.assert_allclose(
        merged.values[0, 0, 0][:, target], theta[:, keep[target]] + theta[:, source].astype(float)
    )
    assert (merged["group"].values == np.asarray(traj["group"].values)[keep]).all()


def test_normalised_msd_divides_by_the_mean_square_parameter_at_tau_w():
    steps = log_grid(1000, 10)
    traj = make_trajectory(steps=steps, sigma=0.05)
    ds = run_observables(traj, dataclasses.replace(CONFIG, tau_w=[10, 100]), PROVENANCE).squeeze()
    theta = traj["theta"].values[0, 0, 0].astype(float)
    for tau_w in (10, 100):
        k = int(np.flatnonzero(steps == tau_w)[0])
        expected = ds["msd"].sel(tau_w=tau_w) / np.mean(theta[k] ** 2)
        np.testing.assert_allclose(ds["msd_normalised"].sel(tau_w=tau_w), expected, rtol=1e-12)
    np.testing.assert_allclose(ds["theta_sq_mean"], np.mean(theta**2, axis=1), rtol=1e-12)

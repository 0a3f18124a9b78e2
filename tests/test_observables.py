import logging
import re
import warnings

import numpy as np
import pytest
import xarray as xr
from conftest import checkpoint_steps, make_trajectory

from bachglass import io
from bachglass.errors import DataError, ParamsError
from bachglass.observables import (
    LAG_COORD,
    ObservablesConfig,
    combine_runs,
    learning_time,
    msd,
    msd_on_lag_grid,
    run_observables,
    smoothed_loss,
    snap_to_grid,
)

CONFIG = ObservablesConfig(eps=[0.3, 0.1, 0.05], smoothing_decades=0.1, tau_w=[10, 30, 100])
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
    steps = checkpoint_steps(1000, 25)
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
    steps = checkpoint_steps(1000, 25)
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
    sigma, steps = 0.05, checkpoint_steps(1000, 10)
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
    steps = checkpoint_steps(100, 10)
    traj = make_trajectory(steps=steps, theta=np.tile(np.arange(11.0), (steps.size, 1)))
    delta = msd(traj["theta"], [10])
    assert np.nanmax(delta.where(delta[LAG_COORD] >= 0)) == 0.0
    assert delta.where(delta[LAG_COORD] >= 0).notnull().sum() > 10
    on_grid = msd_on_lag_grid(delta, [1, 5, 50, 90])
    np.testing.assert_array_equal(on_grid.squeeze().values, [np.nan, 0.0, 0.0, 0.0])  # lag 1 < first lag 3


def test_group_msds_weighted_by_group_size_average_to_the_total():
    traj = make_trajectory(depth=3, group_sizes={"layer1": 7, "layer2": 30, "layer3": 4, "readout": 12})
    total = msd(traj["theta"], [10, 100])
    grouped = msd(traj["theta"], [10, 100], groups=traj["group"])
    assert grouped.dims == ("depth", "width", "seed", "group", "tau_w", "time")
    assert grouped["group"].values.tolist() == ["layer1", "layer2", "layer3", "readout"]
    sizes = xr.DataArray([7, 30, 4, 12], coords={"group": grouped["group"]})
    xr.testing.assert_allclose((grouped * sizes).sum("group", skipna=False) / 53, total)


def test_lag_grid_interpolation_is_exact_for_a_power_law():
    steps = checkpoint_steps(1000, 10)
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
    out = msd_on_lag_grid(delta, lags)
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
    assert ds.attrs == {
        **PROVENANCE, "n_parameters": 17, "data_floor": 0.5, "status": "completed", "diverged_step": -1,
        "cell": "rnn_tanh", "lr": 0.5, "batch_size": 16, "device": "cpu",
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
    assert ds["msd"].where(after).isnull().all() and ds["msd_group"].where(after).isnull().all()
    assert ds["msd"].sel(tau_w=10).where(~after & (ds[LAG_COORD] > 0)).notnull().sum() > 5


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
        "cell": "rnn_tanh", "lr": 0.5, "batch_size": 16, "device": "cpu",
    }  # fmt: skip
    assert study["loss"].attrs["units"] == "nat per note"
    io.write_netcdf(study, tmp_path / "study.nc")
    xr.testing.assert_identical(io.read_netcdf(tmp_path / "study.nc"), study)


def test_combine_runs_keeps_each_runs_values(study):
    run = run_observables(make_trajectory(2, 8, 1), CONFIG, PROVENANCE)
    picked = study.sel(depth=[2], width=[8], seed=[1], group=run["group"].values)
    names = ["loss", "tau", "msd", "msd_lag", "msd_group"]
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
        traj.attrs |= {"cell": "rnn_tanh", "lr": lr, "batch_size": 8, "device": "cpu"}
        runs.append(run_observables(traj, CONFIG, PROVENANCE))
    study = combine_runs(runs, PROVENANCE)
    assert (study.attrs["cell"], study.attrs["lr"], study.attrs["batch_size"]) == ("rnn_tanh", 0.25, 8)
    runs[1].attrs["lr"] = 0.5
    assert "lr" not in combine_runs(runs, PROVENANCE).attrs

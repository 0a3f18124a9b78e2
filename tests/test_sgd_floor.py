"""The SGD floor runs, the κ fit, the restart test (check 7) and the stability scan, on small cases."""

from dataclasses import asdict

import numpy as np
import pytest
import xarray as xr
from conftest import make_encoded, train_config

from bachglass import checks, figures_sgd, sgd, stability, train
from bachglass.errors import ParamsError
from bachglass.floor_runs import OWN_KEYS, RESTART_KEYS, SETTING_KEYS, restart_setting, train_setting
from bachglass.io import setting_id
from bachglass.sgd_floor import FloorConfig, analyse

# the study's train section but the floor runs' own keys, as tests' plain SGD (a new train key follows)
TRAIN = {
    key: value
    for key, value in asdict(train_config(dtype="float64", resume_every=50)).items()
    if key not in OWN_KEYS
}


def floor_config(**overrides):
    base = dict(
        depth=1,
        width=6,
        seed=[0, 1],
        settings=[{"lr": 0.2, "batch_size": 2}],
        steps=200,
        window_start=20,
        restart_step=100,
        restart_factors=[0.5],
        restart_steps=100,
    )
    return FloorConfig(**(base | overrides))


def only(config, keys):
    """The keys of sgd_floor a training rule passes (floor_runs reads no other)."""
    return {k: v for k, v in asdict(config).items() if k in keys}


@pytest.fixture(scope="module")
def encoded():
    return make_encoded(n_chorales=4, length=10)


def test_floor_runs_are_the_study_trainer_unclipped_along_seed(encoded):
    config = floor_config()
    runs = train_setting(encoded, TRAIN, only(config, SETTING_KEYS), 0.2, 2, [None, None])
    assert runs["loss"].dims[:1] == ("seed",) and runs["seed"].values.tolist() == [0, 1]
    assert runs.attrs["lr"] == 0.2 and runs.attrs["batch_size"] == 2 and runs.attrs["clip_norm"] == "none"
    # the same run as the trainer gives on its own (pack of the two seeds)
    cfg = sgd.TrainConfig(**TRAIN, lr=0.2, batch_size=2, steps=200, clip_norm=None)
    alone = train.train_runs(encoded, 1, 6, [0, 1], cfg)[1]
    np.testing.assert_array_equal(runs["loss"].sel(seed=1).values.ravel(), alone["loss"].values.ravel())
    assert setting_id(0.2, 2) == "lr0.2_B2"


def test_a_restart_continues_the_parent_from_its_snapshot_at_the_new_lr(encoded):
    config = floor_config()
    parent = train_setting(encoded, TRAIN, only(config, SETTING_KEYS), 0.2, 2, [None, None])
    restart = restart_setting(encoded, parent, TRAIN, only(config, RESTART_KEYS), 0.5, [None, None])
    k = int(np.flatnonzero(parent["step"].values == restart.attrs["restart_step"])[0])
    assert restart.attrs["restart_step"] == 100 and restart.attrs["lr"] == pytest.approx(0.1)
    # step 0 of the restart is the parent's state at the restart step: same θ, same full-set loss
    np.testing.assert_array_equal(restart["theta"].isel(time=0).values, parent["theta"].isel(time=k).values)
    np.testing.assert_allclose(restart["loss"].isel(time=0).values, parent["loss"].isel(time=k).values)
    assert "lr0.2_B2 step 100" in restart.attrs["origin"]
    # and then it moves on its own: a different minibatch order and lr than the parent's continuation
    assert not np.allclose(restart["loss"].isel(time=-1).values, parent["loss"].isel(time=-1).values)


def synthetic_setting(
    lr, batch_size, floor, seeds=(0, 1, 2), data_floor=0.01, steps=None, noise=0.0, attrs=None
):
    """Loss curves floor + 0.5 (t/1000)^-1 (per seed a little scatter), as a floor run's file holds them."""
    steps = np.unique(np.rint(np.geomspace(1, 1e5, 120)).astype(int)) if steps is None else steps
    rng = np.random.default_rng(int(1e4 * lr) + batch_size)
    curves = [floor * (1 + noise * rng.normal()) + 0.5 * (steps / 1000.0) ** -1.0 for _ in seeds]
    ds = xr.Dataset(
        {"loss": (("seed", "time"), np.array(curves))},
        coords={"seed": list(seeds), "step": ("time", steps)},
        attrs={"lr": lr, "batch_size": batch_size, "data_floor": data_floor} | (attrs or {}),
    )
    return ds


def test_kappa_is_recovered_from_floors_that_scale_as_a_power_of_lr_over_b():
    data_floor, kappa, c = 0.01, 0.8, 0.5
    settings = [(0.1, 4), (0.05, 4), (0.025, 4), (0.05, 2)]
    runs = [synthetic_setting(lr, b, data_floor + c * (lr / b) ** kappa, noise=0.02) for lr, b in settings]
    config = floor_config(settings=[{"lr": a, "batch_size": b} for a, b in settings], window_start=3000)
    out = analyse(runs, [], config, n_boot=200, ci=0.95, seed=0, floor_factor=2.0)
    floors = data_floor + c * (np.array([a / b for a, b in settings])) ** kappa
    np.testing.assert_allclose(out["sgd_floor_measured"].values, floors, rtol=0.05)
    assert out["sgd_floor_kappa"].item() == pytest.approx(kappa, abs=0.05)
    assert out["sgd_floor_kappa_lo"] <= kappa <= out["sgd_floor_kappa_hi"]
    assert out["setting"].values.tolist() == ["lr0.1_B4", "lr0.05_B4", "lr0.025_B4", "lr0.05_B2"]
    assert out["sgd_floor_run"].dims == ("setting", "floor_seed")  # never merged with the grid's seed


def restart_fits(floors_after, parent_floor=0.05, data_floor=0.01):
    parent = synthetic_setting(0.1, 4, parent_floor)
    restarts = [
        synthetic_setting(0.1 * f, 4, floor, attrs={"restart_step": 40000})
        for f, floor in floors_after.items()
    ]
    config = floor_config(settings=[{"lr": 0.1, "batch_size": 4}], window_start=3000)
    out = analyse([parent], restarts, config, n_boot=50, ci=0.95, seed=0, floor_factor=2.0)
    return out.assign_attrs(data_floor=data_floor)


def test_the_restart_check_passes_when_the_floor_drops_with_lr_and_fails_when_it_does_not():
    dropping = restart_fits({0.5: 0.03, 0.25: 0.02})
    np.testing.assert_allclose(dropping["restart_floor_ratio"].sel(restart=0.5), 0.6, rtol=0.05)
    assert checks.restart_test(dropping).passed
    flat = restart_fits({0.5: 0.05, 0.25: 0.05})  # no SGD floor: the plateau does not move
    assert not checks.restart_test(flat).passed
    assert not checks.restart_test(xr.Dataset()).passed  # not run is no pass
    with pytest.raises(ParamsError, match=r"sgd_floor\.restart_factors"):
        restart_setting(
            xr.Dataset(), synthetic_setting(0.1, 4, 0.05), {}, only(floor_config(), RESTART_KEYS), 0.3, []
        )


def test_stability_scan_flags_a_blow_up_and_counts_unsafe_steps(encoded):
    config = stability.ScanConfig(
        depth=[1], width=[6], seed=[0], init=["pytorch", "orthogonal"], lr=[0.05, 200.0], batch_size=[2],
        steps=60, safety_norm=1e-3, checkpoints_per_decade=10, sharpness_per_decade=1, power_iterations=5,
        power_tolerance=0.0,
    )  # fmt: skip
    cell = stability.scan_cell(encoded, 1, 6, 2, config, "rnn_tanh", "float64", "cpu")
    scan = stability.combine([cell])
    sel = scan.squeeze(("depth", "width", "batch_size"))
    assert (sel["n_diverged"].sel(lr=0.05) == 0).all() and (sel["n_diverged"].sel(lr=200.0) == 1).all()
    assert (sel["over_share"].sel(lr=0.05) == 1.0).all()  # every gradient is above a safety norm of 1e-3
    assert (np.isfinite(sel["sharpness"].sel(lr=0.05)).sum("time") >= 2).all()
    # the two initialisations differ (recurrent weights) but share the seed's minibatch order
    loss = sel["loss"].sel(lr=0.05, seed=0)
    assert loss.sel(init="pytorch").isel(time=1) != loss.sel(init="orthogonal").isel(time=1)
    table = stability.table(scan)
    assert "| 1 | 6 | 2 | pytorch | 200 | 1/1 |" in table
    assert "| 1 | 6 | 2 | orthogonal | 0.05 | 0/1 |" in table
    # the figure writes each cell's divergences and unsafe share where the cell is drawn (rows: init, B)
    texts = {(t.get_position(), t.get_text()) for t in figures_sgd.stability(scan).axes[0].texts}
    assert ((0, 0), "100%") in texts and ((1, 1), "✗1\n-") in texts  # diverged before its first record


def test_floor_figure_plots_the_measured_floors_and_the_restarts():
    data_floor = 0.01
    settings = [(0.1, 4), (0.05, 4), (0.025, 4), (0.05, 2)]
    runs = [synthetic_setting(lr, b, data_floor + 0.5 * (lr / b) ** 0.8) for lr, b in settings]
    config = floor_config(settings=[{"lr": a, "batch_size": b} for a, b in settings], window_start=3000)
    restarts = [synthetic_setting(0.05, 4, 0.03, attrs={"restart_step": 40000})]
    fits = analyse(runs, restarts, config, n_boot=20, ci=0.95, seed=0, floor_factor=2.0)
    fits = fits.assign_attrs(data_floor=data_floor)
    fig = figures_sgd.sgd_floor_scaling(xr.Dataset(), fits)
    plotted = np.concatenate([bars.lines[0].get_ydata() for bars in fig.axes[0].containers])
    np.testing.assert_allclose(sorted(plotted), sorted(fits["sgd_floor_excess"].values))
    np.testing.assert_allclose(
        fig.axes[1].lines[0].get_ydata(), [fits["sgd_floor_measured"][0], 0.03], rtol=0.02
    )


def test_a_floor_run_knocked_back_above_its_initial_loss_has_no_floor():
    runs = synthetic_setting(0.1, 4, 0.05)
    step = runs["step"].values
    spike = (runs["seed"] == 1) & (runs["step"] >= 30000)
    runs["loss"] = runs["loss"].where(~spike, 600.0)  # above its initial 500: diverged at 3e4
    config = floor_config(settings=[{"lr": 0.1, "batch_size": 4}], window_start=3000)
    out = analyse([runs], [], config, n_boot=50, ci=0.95, seed=0, floor_factor=2.0)
    assert out["sgd_floor_run_diverged"].values.tolist() == [[False, True, False]]
    assert np.isnan(out["sgd_floor_run"].values[0, 1]) and np.isnan(out["floor_time"].values[0, 1])
    assert out["sgd_floor_measured"].item() == pytest.approx(0.05, rel=0.05)  # the other two seeds
    # a restart starts at its parent's late loss: noise above that start is not a divergence, only a
    # loss above the net's initial loss is
    restart = synthetic_setting(0.05, 4, 0.03, steps=step, attrs={"restart_step": 40000})
    restart["loss"] = xr.full_like(restart["loss"], 0.03).where(restart["step"] < 5e4, 0.031)
    out = analyse(
        [synthetic_setting(0.1, 4, 0.05)], [restart], config, n_boot=20, ci=0.95, seed=0, floor_factor=2
    )
    assert not out["restart_diverged"].any()
    # a restart above the net's initial loss diverged, also when its parent seed had (judged on the
    # parent as trained, not as left out)
    restart["loss"] = restart["loss"].where(restart["seed"] != 1, 600.0)
    out = analyse([runs], [restart], config, n_boot=20, ci=0.95, seed=0, floor_factor=2)
    assert out["restart_diverged"].values.tolist() == [[False, True, False]]
    assert out["restart_floor"].item() == pytest.approx(0.03, rel=0.01)  # the two that did not

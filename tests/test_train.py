import dataclasses
import re

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import Interrupted, make_encoded, train_config
from hypothesis import given, settings
from hypothesis import strategies as st

from bachglass import io, model, resume, sgd, train, trajectory
from bachglass.errors import DataError, ParamsError

torch.set_num_threads(1)

VOCAB = (5, 4, 5, 6)
config = train_config


@pytest.fixture(scope="module")
def encoded():
    return make_encoded(6, 12, VOCAB, seed=0, n_heldout=2)


def run(encoded, width=8, depth=2, seed=0, checkpoint=None, **changes):
    return train.train_run(encoded, depth, width, seed, config(**changes), checkpoint, False)


# --- checkpoint grid ---


def test_checkpoint_steps_are_log_spaced_from_zero_to_the_end():
    steps = trajectory.checkpoint_steps(20000, 25)
    assert steps.dtype == np.int64
    assert steps[0] == 0 and steps[-1] == 20000
    assert np.all(np.diff(steps) > 0)
    assert set(range(11)) <= set(steps.tolist())  # dense early: every step
    assert {1, 10, 100, 1000, 10000} <= set(steps.tolist())
    for lo in (10, 100, 1000):
        assert ((steps >= lo) & (steps < 10 * lo)).sum() >= 20


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 60))
def test_checkpoint_steps_grid_properties(steps, per_decade):
    grid = trajectory.checkpoint_steps(steps, per_decade)
    assert grid[0] == 0 and grid[-1] == steps
    assert np.all(np.diff(grid) > 0)
    late = grid[grid >= 100 * per_decade]  # where rounding no longer merges points
    ratios = late[1:] / late[:-1]
    assert np.all(ratios <= 10 ** (1 / per_decade) * 1.01 + 1e-12)
    if steps >= 1000 and per_decade >= 20:
        assert ((grid >= 100) & (grid < 1000)).sum() >= 20


# --- training ---


def test_trajectory_has_the_contract_layout(encoded):
    ds = run(encoded, width=8, depth=2, seed=3)
    grid = trajectory.checkpoint_steps(60, 10)
    n_params = model.n_parameters("rnn_tanh", 2, 8, VOCAB)
    assert dict(ds.sizes) == {"depth": 1, "width": 1, "seed": 1, "time": grid.size, "param": n_params}
    assert ds.theta.dims == ("depth", "width", "seed", "time", "param")
    assert ds.theta.dtype == np.float32 and ds.loss.dtype == np.float64
    np.testing.assert_array_equal(ds.step.values, grid)
    np.testing.assert_array_equal(ds.time.values, grid.astype(float))  # full batch: 1 step/epoch
    assert ds.time.attrs["units"] == "epoch"
    assert list(dict.fromkeys(ds.group.values)) == ["layer1", "layer2", "readout"]
    assert (ds.depth.item(), ds.width.item(), ds.seed.item()) == (2, 8, 3)
    assert ds.attrs["n_parameters"] == n_params
    assert ds.attrs["status"] == "completed" and ds.attrs["diverged_step"] == -1
    assert ds.attrs["batch_size"] == 6 and ds.attrs["device"] == "cpu"
    keys = {f.name for f in dataclasses.fields(sgd.TrainConfig)} - {"resume_every"}
    keys |= {"device_name", "cuda_version"}  # what the device it ran on was (bachglass.device.attrs)
    assert set(trajectory.training_attrs(ds.attrs)) == keys  # every train key, so a new option is recorded
    assert np.isfinite(ds.heldout_loss).all()
    for name in ("loss", "heldout_loss", "theta", "clip_fraction", "grad_norm_max"):
        assert {"units", "long_name"} <= set(ds[name].attrs)


def test_snapshot_and_loss_belong_to_the_same_step(encoded):
    ds = run(encoded, steps=30, batch_size=4)
    layout = model.HeadLayout(VOCAB)
    train_mask = encoded["split"].values == "train"
    tokens, mask = encoded["tokens"].values[train_mask], encoded["mask"].values[train_mask]
    batch = model.encode_batch(tokens, mask, layout, torch.float32, torch.device("cpu"))
    for k in (0, 10, -1):  # the initial state, a middle checkpoint, the final state
        theta = torch.as_tensor(ds.theta.values[0, 0, 0, k])
        engine = model.ReferenceEngine("rnn_tanh", 2, 8, layout, theta)
        assert engine.loss(batch).item() == pytest.approx(ds.loss.values.ravel()[k], rel=1e-6)
    np.testing.assert_array_equal(ds.time.values, ds.step.values / 2)  # 6 chorales, batches of 4


def test_initial_state_is_the_seeded_init(encoded):
    ds = run(encoded, width=5, depth=1, seed=7, steps=3)
    specs = model.param_specs("rnn_tanh", 1, 5, VOCAB)
    init = model.init_theta(specs, 5, 7, torch.float32, torch.device("cpu")).numpy()
    np.testing.assert_array_equal(ds.theta.values[0, 0, 0, 0], init)


def test_wide_net_memorises_better_than_a_narrow_one():
    data = make_encoded(4, 16, VOCAB, seed=1, n_heldout=0)
    narrow = run(data, width=2, depth=1, steps=400)
    wide = run(data, width=32, depth=1, steps=400)
    assert wide.loss.values.ravel()[-1] < 0.5 * wide.loss.values.ravel()[0]
    assert wide.loss.values.ravel()[-1] < 0.5 * narrow.loss.values.ravel()[-1]
    assert np.isnan(wide.heldout_loss).all()  # no held-out chorales


@pytest.mark.parametrize("batch_size", [None, 4])
def test_same_seed_gives_an_identical_trajectory(encoded, batch_size):
    xr.testing.assert_identical(run(encoded, batch_size=batch_size), run(encoded, batch_size=batch_size))
    assert not run(encoded, seed=1).theta.equals(run(encoded, seed=0).theta)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_resumed_run_is_bitwise_identical(encoded, tmp_path, die_after_first_save, batch_size):
    ckpt = tmp_path / "trajectory.ckpt.pt"
    # saved mid-epoch (step 23 of 2-step epochs) and mid clip-count window (20..25)
    settings = {"batch_size": batch_size, "resume_every": 23, "clip_norm": 0.1}
    with pytest.raises(Interrupted):
        run(encoded, checkpoint=ckpt, **settings)
    assert ckpt.exists()
    resumed = run(encoded, checkpoint=ckpt, **settings)
    xr.testing.assert_identical(resumed, run(encoded, **settings))
    assert ckpt.exists()  # the caller deletes it once the trajectory is written
    resume.remove_checkpoint(ckpt)
    assert not ckpt.exists()


@pytest.mark.parametrize(("key", "value"), [("lr", 0.25), ("clip_norm", None), ("steps", 70)])
def test_resume_refuses_a_checkpoint_of_another_config(encoded, tmp_path, die_after_first_save, key, value):
    ckpt = tmp_path / "trajectory.ckpt.pt"
    with pytest.raises(Interrupted):
        run(encoded, checkpoint=ckpt)
    with pytest.raises(ParamsError, match=rf"{re.escape(str(ckpt))}: .*{key}=.*delete it"):
        run(encoded, checkpoint=ckpt, **{key: value})


def test_resume_refuses_a_checkpoint_of_another_width(encoded, tmp_path, die_after_first_save):
    ckpt = tmp_path / "trajectory.ckpt.pt"
    with pytest.raises(Interrupted):
        run(encoded, checkpoint=ckpt)
    with pytest.raises(ParamsError, match=r"width=8 \(now 9\)"):
        run(encoded, width=9, checkpoint=ckpt)


def test_unreadable_checkpoint_is_a_data_error_naming_it(encoded, tmp_path):
    ckpt = tmp_path / "trajectory.ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=rf"{re.escape(str(ckpt))}: unreadable checkpoint"):
        run(encoded, checkpoint=ckpt)


def test_huge_lr_marks_the_run_diverged_and_keeps_earlier_checkpoints(encoded, caplog):
    ds = run(encoded, lr=1e38, clip_norm=None, steps=100)
    assert ds.attrs["status"] == "diverged"
    k = ds.attrs["diverged_step"]
    assert 0 < k < 100
    before = ds.step.values < k
    assert np.isfinite(ds.loss.values.ravel()[before]).all()
    assert np.isnan(ds.loss.values.ravel()[~before]).all()
    assert np.isnan(ds.theta.values[0, 0, 0, ~before]).all()
    assert "non-finite" in caplog.text


def test_clip_fraction_counts_clipped_steps(encoded):
    always = run(encoded, clip_norm=1e-9, steps=20).clip_fraction.values.ravel()
    never = run(encoded, clip_norm=None, steps=20).clip_fraction.values.ravel()
    assert always[0] == 0 and np.all(always[1:] == 1)
    assert np.all(never == 0)


def test_gradient_norm_is_logged_with_or_without_a_clip_and_a_clip_acts_exactly_above_it(encoded):
    clip = 0.1  # the norms fall from 0.15 to 0.07 over these 40 steps
    clipped = run(encoded, clip_norm=clip, steps=40)
    free = run(encoded, clip_norm=None, steps=40)
    norm, fraction = clipped.grad_norm_max.values.ravel(), clipped.clip_fraction.values.ravel()
    assert np.isnan(norm[0]) and np.isnan(free.grad_norm_max.values.ravel()[0])  # no step before step 0
    assert (
        ((fraction[1:] > 0) == (norm[1:] > clip)).all() and (fraction > 0).any() and (fraction[1:] < 1).any()
    )
    # the first step's gradient (the same θ_0 and batch) is what both logged, clip or not
    assert norm[1] == free.grad_norm_max.values.ravel()[1]
    # the norm is that of the full gradient: one full-batch step from θ_0 moves θ by lr·norm when unclipped
    step = np.linalg.norm(free.theta.values[0, 0, 0, 1].astype(float) - free.theta.values[0, 0, 0, 0])
    assert step == pytest.approx(0.5 * norm[1], rel=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gru_and_lstm_runs_have_the_same_layout(encoded, cell):
    ds = run(encoded, cell=cell, width=4, steps=20)
    assert ds.attrs["cell"] == cell
    assert ds.sizes["param"] == ds.attrs["n_parameters"] == model.n_parameters(cell, 2, 4, VOCAB)
    assert ds.loss.values.ravel()[-1] < ds.loss.values.ravel()[0]


def test_float64_run_is_stored_like_a_float32_run(encoded):
    ds = run(encoded, dtype="float64", steps=20)
    assert ds.theta.dtype == np.float32
    assert np.isfinite(ds.loss).all()


def test_trajectory_round_trips_through_netcdf(encoded, tmp_path):
    ds = run(encoded, steps=20)
    io.write_netcdf(ds, tmp_path / "trajectory.nc")
    xr.testing.assert_identical(io.read_netcdf(tmp_path / "trajectory.nc"), ds)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_agrees_with_cpu_in_float64(encoded):
    gpu = run(encoded, device="auto", dtype="float64", steps=20)
    cpu = run(encoded, device="cpu", dtype="float64", steps=20)
    assert gpu.attrs["device"] == "cuda"
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-9)


@pytest.mark.parametrize(("key", "bad"), [("cell", "elman"), ("dtype", "float16")])
def test_unknown_cell_or_dtype_is_a_params_error(encoded, key, bad):
    with pytest.raises(ParamsError, match=rf"train: cell .*{re.escape(repr(bad))}.* unknown"):
        run(encoded, **{key: bad})


def test_init_option_reaches_the_trajectory_and_an_unknown_one_is_a_params_error(encoded):
    ortho = run(encoded, init="orthogonal", steps=5)
    plain = run(encoded, steps=5)
    assert ortho.attrs["init"] == "orthogonal" and plain.attrs["init"] == "pytorch"
    assert not np.array_equal(ortho["theta"].isel(time=0).values, plain["theta"].isel(time=0).values)
    with pytest.raises(ParamsError, match=r"train\.init: 'identity'"):
        run(encoded, init="identity")

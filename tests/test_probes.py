import re

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import make_encoded, train_config

from bachglass import io, model, probes, train
from bachglass.errors import DataError
from bachglass.trajectory import checkpoint_steps

torch.set_num_threads(1)

F64, CPU = torch.float64, torch.device("cpu")
VOCAB = (5, 4, 5, 6)
TINY = (3, 2, 3, 2)  # vocabularies small enough for a full Hessian
CONFIG = probes.ProbesConfig(
    sharpness_per_decade=2, power_iterations=20, power_tolerance=0.0, sharpness_chorales=8, device="cpu"
)


def batch_of(encoded, split="train"):
    chosen = encoded["split"].values == split
    layout = model.HeadLayout(tuple(int(v) for v in encoded["vocab_size"].values))
    return model.encode_batch(
        encoded["tokens"].values[chosen], encoded["mask"].values[chosen], layout, F64, CPU
    )


def random_theta(net, seed=0, scale=1.0):
    return model.init_theta(net.specs, net.width, seed, F64, CPU) * scale


def reference_module(net, theta):
    """torch's RNN/GRU/LSTM (model.RNNModel) holding the flat ``theta``."""
    module = model.RNNModel(net.cell, net.depth, net.width, net.vocab_sizes).double()
    with torch.no_grad():
        for param, view in zip(module.parameters(), model.split_flat(theta, net.specs), strict=True):
            param.copy_(view)
    return module


def reference_loss(net, batch):
    """theta -> model.cross_entropy through torch's modules (differentiable in theta)."""
    module = reference_module(net, torch.zeros(sum(s.size for s in net.specs), dtype=F64))
    names = [name for name, _ in module.named_parameters()]

    def loss(theta):
        params = dict(zip(names, model.split_flat(theta, net.specs), strict=True))
        out = torch.func.functional_call(module, params, (batch.x,))
        return model.cross_entropy(out, batch.y, net.vocab_sizes)

    return loss


# --- power iteration ---


@pytest.mark.parametrize(
    ("spectrum", "top"),
    [([5.0, 3.0, 1.0, 0.5, 0.0], 5.0), ([4.0, -3.0, 1.0, -0.5, 2.0], 4.0), ([-6.0, 2.0, 1.0, 0.1, -1], -6.0)],
)
def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic(spectrum, top):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(len(spectrum), len(spectrum))))
    a = torch.as_tensor(q @ np.diag(spectrum) @ q.T)
    theta = torch.zeros(len(spectrum), dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(0.5 * theta @ a @ theta, theta, create_graph=True)

    def hvp(v):
        return torch.autograd.grad(grad, theta, v, retain_graph=True)[0]

    value, v = probes.top_eigenvalue(hvp, len(spectrum), iterations=100)
    assert value == pytest.approx(top, abs=1e-6)
    assert torch.linalg.vector_norm(a @ v - top * v).item() < 1e-6  # v is its eigenvector


def test_power_iteration_from_an_eigenvector_stays_there():
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    v0 = torch.tensor([0.0, 1.0, 0.0], dtype=F64)  # warm start on the eigenvalue-2 eigenvector
    assert probes.top_eigenvalue(lambda v: a @ v, 3, iterations=5, v0=v0)[0] == 2.0
    assert probes.top_eigenvalue(lambda v: a @ v, 3, iterations=200)[0] == pytest.approx(3.0, abs=1e-12)


def test_power_iteration_of_a_zero_hessian_is_zero():
    value, v = probes.top_eigenvalue(torch.zeros_like, 4, iterations=3)
    assert value == 0.0 and torch.linalg.vector_norm(v).item() == pytest.approx(1.0)


# --- the hand-written forward pass ---


@pytest.mark.parametrize("cell", sorted(model.CELLS))
def test_hand_written_forward_equals_torch_modules(cell):
    net = probes.Net(cell, 3, 5, VOCAB)
    batch = batch_of(make_encoded(4, 11, VOCAB, seed=1))
    thetas = torch.stack([random_theta(net, seed) for seed in range(3)])  # (K, N)
    out = probes.logits(net, thetas, batch.x)  # (K, T·B, n_io)
    for k, theta in enumerate(thetas):
        with torch.no_grad():
            expected = reference_module(net, theta)(batch.x)
        assert (out[k] - expected.flatten(0, 1)).abs().max().item() < 1e-10
        loss = model.cross_entropy(expected, batch.y, VOCAB).item()
        assert probes.losses(net, thetas, batch)[k].item() == pytest.approx(loss, abs=1e-12)


# --- sharpness ---


@pytest.mark.parametrize("cell", sorted(model.CELLS))
def test_hessian_products_and_sharpness_match_the_full_hessian(cell):
    net = probes.Net(cell, 2, 2, TINY)
    batch = batch_of(make_encoded(2, 5, TINY, seed=2, n_heldout=0))
    theta = random_theta(net, seed=3, scale=3.0)  # scaled: a clear top eigenvalue
    hessian = torch.autograd.functional.hessian(reference_loss(net, batch), theta)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    top = eigenvalues.max().item()  # λ_max, the largest algebraic eigenvalue
    hvp = probes.hessian_product(net, theta.unsqueeze(0), batch)
    columns = torch.stack([hvp(e.unsqueeze(0))[0] for e in torch.eye(len(theta), dtype=F64)], 1)
    assert (columns - hessian).abs().max().item() < 1e-10
    value, residual = probes.sharpness(net, theta.unsqueeze(0), batch, iterations=500)
    assert value.item() == pytest.approx(top, rel=1e-6)
    assert residual.item() < 1e-6


@pytest.mark.parametrize("cell", sorted(model.CELLS))
def test_the_residual_bounds_the_error_and_the_tolerance_stops_early(cell):
    """Krylov-Weinstein: an eigenvalue lies within residual·|λ| of λ; with a tolerance, fewer products."""
    net = probes.Net(cell, 2, 2, TINY)
    batch = batch_of(make_encoded(2, 5, TINY, seed=2, n_heldout=0))
    theta = random_theta(net, seed=3, scale=3.0).unsqueeze(0)
    eigenvalues = torch.linalg.eigvalsh(
        torch.autograd.functional.hessian(reference_loss(net, batch), theta[0])
    )
    for iterations in (2, 5, 20):
        value, residual = probes.sharpness(net, theta, batch, iterations)
        nearest = (eigenvalues - value).abs().min()
        assert nearest <= residual * value.abs() * (1 + 1e-9), (iterations, residual)
    hvp = probes.hessian_product(net, theta, batch)
    products = []
    counted = lambda v: products.append(1) or hvp(v)  # noqa: E731
    start = probes.start_vector(theta.shape[1])
    value, residual = probes.top_algebraic(counted, start.unsqueeze(0), 500, tolerance=1e-3)
    assert residual.item() <= 1e-3 and len(products) < 500
    assert value.item() == pytest.approx(eigenvalues.max().item(), rel=1e-2)
    unstopped = probes.top_algebraic(hvp, start.unsqueeze(0), len(products), tolerance=0.0)
    assert torch.equal(unstopped[0], value)  # the stop keeps the value of the product that met it


def test_batched_sharpness_equals_one_checkpoint_at_a_time():
    net = probes.Net("rnn_tanh", 2, 3, VOCAB)
    batch = batch_of(make_encoded(3, 8, VOCAB, seed=4))
    thetas = torch.stack([random_theta(net, seed) for seed in range(3)])
    thetas[1] = torch.nan  # a diverged checkpoint is NaN and spoils no other
    for tolerance in (0.0, 0.05):  # with a tolerance each row stops at its own product, whoever shares it
        together = probes.sharpness(net, thetas, batch, iterations=10, tolerance=tolerance)
        apart = [probes.sharpness(net, theta.unsqueeze(0), batch, 10, tolerance) for theta in thetas]
        for k, name in enumerate(("sharpness", "residual")):
            assert torch.isnan(together[k][1]), name
            alone = torch.cat([a[k] for a in apart])
            torch.testing.assert_close(together[k], alone, rtol=1e-10, atol=0, equal_nan=True)


def test_sharpness_steps_are_log_spaced_with_the_first_and_last_checkpoint():
    grid = checkpoint_steps(40000, 25)
    steps = probes.sharpness_steps(grid, 3)
    assert {0, 1, 10, 100, 1000, 10000, 40000} <= set(steps.tolist())
    assert len(steps) == 16 and np.all(np.isin(steps, grid)) and np.all(np.diff(steps) > 0)
    assert probes.sharpness_steps(np.arange(11), 1).tolist() == [0, 1, 10]
    assert probes.sharpness_steps(grid, 0).size == 0


# --- accuracy ---


def test_accuracy_of_a_constant_readout_is_the_frequency_of_its_tokens():
    encoded = make_encoded(5, 10, VOCAB, seed=5)
    net = probes.Net("gru", 2, 3, VOCAB)
    theta = random_theta(net)
    readout_bias = model.split_flat(theta, net.specs)[-1]
    model.split_flat(theta, net.specs)[-2].zero_()  # readout weights 0: the bias decides
    favourite = [1, 3, 0, 2]
    for voice, (offset, k) in enumerate(zip(model.HeadLayout(VOCAB).offsets, favourite, strict=True)):
        readout_bias[offset : offset + VOCAB[voice]] = 0.0
        readout_bias[offset + k] = 1.0
    train = encoded["split"].values == "train"
    tokens, lengths = encoded["tokens"].values[train], encoded["length"].values[train]
    targets = np.concatenate([tokens[c, 1:n] for c, n in enumerate(lengths)])  # every chord but the first
    expected = (targets == favourite).mean()
    thetas = torch.stack([theta, torch.full_like(theta, torch.nan)])
    accuracy = probes.accuracy(net, thetas, batch_of(encoded))
    assert accuracy[0].item() == pytest.approx(expected, abs=1e-12)
    assert torch.isnan(accuracy[1])


# --- one run's probes ---


@pytest.fixture(scope="module")
def encoded():
    return make_encoded(4, 10, VOCAB, seed=0, n_heldout=2)


@pytest.fixture(scope="module")
def trajectory(encoded):
    return train.train_run(encoded, 2, 4, 0, train_config(steps=100), None, progress=False)


def test_probe_run_has_the_trajectorys_coordinates_and_units(encoded, trajectory, tmp_path):
    ds = probes.probe_run(trajectory, encoded, CONFIG, CPU)
    assert dict(ds.sizes) == {"depth": 1, "width": 1, "seed": 1, "time": trajectory.sizes["time"]}
    for name in ("depth", "width", "seed", "time", "step"):
        xr.testing.assert_identical(ds[name], trajectory[name])
    for name in ("accuracy", "heldout_accuracy", "sharpness"):
        assert ds[name].dims == ("depth", "width", "seed", "time")
        assert {"long_name", "units"} <= set(ds[name].attrs)
    assert ds.sharpness.attrs["sharpness_chorales"] == 4  # asked for 8, there are 4
    io.write_netcdf(ds, tmp_path / "probes.nc")
    xr.testing.assert_identical(io.read_netcdf(tmp_path / "probes.nc"), ds)


def test_sharpness_is_the_largest_eigenvalue_of_a_net_whose_negative_one_dominates():
    """rnn_tanh, seed 9: spectrum from -5.83 to 0.92; power iteration alone would give -5.83."""
    net = probes.Net("rnn_tanh", 2, 2, TINY)
    batch = batch_of(make_encoded(2, 5, TINY, seed=2, n_heldout=0))
    theta = random_theta(net, seed=9, scale=3.0)
    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(reference_loss(net, batch), theta))
    assert -eigenvalues.min() > 5 * eigenvalues.max() > 0  # the case this test is about
    value, residual = probes.sharpness(net, theta.unsqueeze(0), batch, iterations=2000)
    assert value.item() == pytest.approx(eigenvalues.max().item(), rel=1e-6)
    assert residual.item() < 1e-6  # of H at λ_max, though found on the shifted operator


def test_probe_run_values(encoded, trajectory):
    ds = probes.probe_run(trajectory, encoded, CONFIG, CPU).squeeze(("depth", "width", "seed"))
    measured = np.isin(ds.step, probes.sharpness_steps(ds.step.values, CONFIG.sharpness_per_decade))
    assert np.isfinite(ds.sharpness.values[measured]).all() and np.isnan(ds.sharpness.values[~measured]).all()
    residual = ds.sharpness_residual.values
    assert (residual[measured] >= 0).all() and np.isnan(residual[~measured]).all()
    net = probes.Net("rnn_tanh", 2, 4, VOCAB)
    last = torch.as_tensor(trajectory.theta.values[0, 0, 0, -1:], dtype=F64)
    hvp = probes.hessian_product(net, last, batch_of(encoded))
    value, _ = probes.top_eigenvalue(lambda v: hvp(v.unsqueeze(0))[0], last.shape[1], 20)
    assert ds.sharpness.values[-1] == pytest.approx(value, rel=1e-12)
    for split, name in (("train", "accuracy"), ("heldout", "heldout_accuracy")):
        batch = batch_of(encoded, split)
        with torch.no_grad():
            out = reference_module(net, last[0])(batch.x)
        guess = torch.stack([h.argmax(-1) for h in torch.split(out, VOCAB, -1)], -1)
        scored = batch.y[..., 0] >= 0
        assert ds[name].values[-1] == pytest.approx((guess == batch.y)[scored].double().mean().item())
    assert ds.accuracy.values[-1] > ds.accuracy.values[0]  # it learnt something


def test_sharpness_uses_the_first_training_chorales_only(encoded, trajectory):
    config = probes.ProbesConfig(
        sharpness_per_decade=1, power_iterations=5, power_tolerance=0.0, sharpness_chorales=2, device="cpu"
    )
    ds = probes.probe_run(trajectory, encoded, config, CPU).squeeze(("depth", "width", "seed"))
    first_two = batch_of(encoded.isel(chorale=[0, 1]))
    net, last = probes.Net("rnn_tanh", 2, 4, VOCAB), torch.as_tensor(trajectory.theta.values[0, 0, 0, -1:])
    assert ds.sharpness.values[-1] == pytest.approx(
        probes.sharpness(net, last.double(), first_two, 5)[0].item()
    )
    assert ds.sharpness.attrs["sharpness_chorales"] == 2


def test_no_sharpness_and_no_heldout_chorales_give_nan(encoded, trajectory):
    config = probes.ProbesConfig(
        sharpness_per_decade=0, power_iterations=20, power_tolerance=0.0, sharpness_chorales=8, device="cpu"
    )
    ds = probes.probe_run(trajectory, encoded.isel(chorale=slice(0, 4)), config, CPU)
    assert ds.sharpness.isnull().all() and ds.heldout_accuracy.isnull().all()
    assert ds.accuracy.notnull().all()


def test_diverged_run_is_nan_from_its_divergence_on(encoded):
    diverged = train.train_run(
        encoded, 1, 4, 0, train_config(lr=1e38, clip_norm=None, steps=100), None, False
    )
    assert diverged.attrs["status"] == "diverged"
    ds = probes.probe_run(diverged, encoded, CONFIG, CPU).squeeze(("depth", "width", "seed"))
    before = ds.step.values < diverged.attrs["diverged_step"]
    for name in ("accuracy", "heldout_accuracy", "sharpness"):
        assert ds[name].isel(time=~before).isnull().all()
    assert np.isfinite(ds.accuracy.values[before]).all() and np.isfinite(ds.sharpness.values[0])


def test_probe_run_follows_the_trajectorys_cell(encoded):
    run = train.train_run(encoded, 1, 3, 0, train_config(cell="lstm", steps=10), None, False)
    ds = probes.probe_run(run, encoded, CONFIG, CPU)
    assert np.isfinite(ds.accuracy).all() and np.isfinite(ds.sharpness.isel(time=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", sorted(model.CELLS))
def test_cuda_probes_agree_with_cpu(encoded, cell):
    run = train.train_run(encoded, 2, 4, 0, train_config(cell=cell, steps=30), None, False)
    gpu = probes.probe_run(run, encoded, CONFIG, torch.device("cuda"))
    cpu = probes.probe_run(run, encoded, CONFIG, CPU)
    xr.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-12)
    assert gpu.sharpness.notnull().sum() > 3


# --- bad inputs ---


def test_trajectory_without_theta_is_a_data_error(encoded, trajectory):
    with pytest.raises(DataError, match=re.escape("trajectory: no variable 'theta'; re-create it")):
        probes.probe_run(trajectory.drop_vars("theta"), encoded, CONFIG, CPU)


def test_encoded_without_mask_is_a_data_error(encoded, trajectory):
    with pytest.raises(DataError, match=re.escape("encoded.nc: no variable 'mask'")):
        probes.probe_run(trajectory, encoded.drop_vars("mask"), CONFIG, CPU)


def test_trajectory_of_other_vocabularies_is_a_data_error(trajectory):
    other = make_encoded(4, 10, (5, 4, 5, 7), seed=0)
    with pytest.raises(DataError, match=r"trajectory d2_w4_s0: theta has \d+ parameters, but .* has \d+"):
        probes.probe_run(trajectory, other, CONFIG, CPU)


def test_unknown_cell_is_a_data_error(encoded, trajectory):
    with pytest.raises(DataError, match=r"trajectory d2_w4_s0: cell 'elman' unknown"):
        probes.probe_run(trajectory.assign_attrs(cell="elman"), encoded, CONFIG, CPU)


def test_sharpness_is_the_largest_algebraic_eigenvalue_when_a_negative_one_dominates():
    """λ_max of ½θᵀAθ with spectrum {-10, 3, 1, ...}: 3, not the -10 plain power iteration finds."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    spectrum = torch.tensor([-10.0, 3.0, 1.0, 0.5, *[0.1] * 8], dtype=torch.float64)
    a = q @ torch.diag(spectrum) @ q.T
    b = q @ torch.diag(spectrum.abs()) @ q.T  # a second row without a negative eigenvalue: top 10
    hvp = lambda v: torch.stack([a @ v[0], b @ v[1]])  # noqa: E731
    start = probes.start_vector(12).expand(2, 12)
    top, residual = probes.top_algebraic(hvp, start, iterations=300)
    assert torch.allclose(top, torch.tensor([3.0, 10.0], dtype=torch.float64), atol=1e-6)
    assert (residual < 1e-6).all()


def test_the_tolerance_is_relative_to_lambda_max_on_the_shifted_pass_too():
    """Spectrum {-50, 5, 4.95, ...}: the shifted pass must stop on ‖Hv − λv‖/|λ_max|, not /|λ_max − λ_1|."""
    gen = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
    spectrum = torch.tensor([-50.0, 5.0, 4.95, 1.0, *[0.1] * 6], dtype=torch.float64)
    a = q @ torch.diag(spectrum) @ q.T
    start = probes.start_vector(10).unsqueeze(0)
    value, residual = probes.top_algebraic(lambda v: v @ a, start, iterations=5000, tolerance=1e-3)
    assert residual.item() <= 1e-3
    assert (spectrum - value).abs().min() <= residual.item() * value.abs().item() + 1e-12
    zero, zero_residual = probes.top_algebraic(torch.zeros_like, start, iterations=3, tolerance=1e-3)
    assert zero.item() == 0.0 and zero_residual.item() == 0.0  # an exact eigenvector of 0, not 0/0

"""Langevin training (train.temperature > 0): noise scale, T = 0 unchanged, resume, packs, identity."""

import logging
import math
import re

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import Interrupted, die_at_save, make_encoded, make_trajectory, train_config

from bachglass import langevin, model, pack_state, sgd, train
from bachglass.errors import DataError, ParamsError

torch.set_num_threads(1)

VOCAB = (5, 4, 5, 6)
CPU = torch.device("cpu")
F64 = torch.float64


def config(**changes):
    """Langevin at T = 0.01 on minibatches of 4 of 6 chorales, float64, resumable every 10 steps."""
    base = dict(batch_size=4, steps=40, checkpoints_per_decade=20, resume_every=10, dtype="float64")
    return train_config(**(base | {"temperature": 0.01} | changes))


@pytest.fixture(scope="module")
def encoded():
    return make_encoded(6, 14, VOCAB, seed=3, n_heldout=2)


def scored_notes(enc):
    """P: a training chorale of length L scores its chords 2..L, 4 notes each."""
    lengths = enc["length"].values[enc["split"].values == "train"]
    return 4 * int((lengths - 1).sum())


def ensemble(enc, seeds, cfg, width=32, device=CPU):
    """A PackState of depth-1 nets of ``width``, built as train_runs builds one."""
    layout = model.HeadLayout(VOCAB)
    data, heldout = model.encode_splits(enc, layout, F64, device)
    specs = model.param_specs(cfg.cell, 1, width, VOCAB)
    thetas = torch.stack([model.init_theta(specs, width, s, F64, device) for s in seeds])
    engine = pack_state.make_engine(cfg.cell, 1, width, layout, thetas)
    return pack_state.PackState(engine, pack_state.Data(data, heldout, layout), cfg, seeds)


def runs(enc, seeds, cfg, paths=None):
    return train.train_runs(enc, 1, 6, seeds, cfg, paths, progress=False)


def assert_diffuses_with_variance_2_T_lr_over_P_per_step(encoded, cfg, device=CPU):
    """n updates with a zero gradient: θ_n - θ_0 is N(0, n·2Tη/P) per parameter, independent across runs."""
    ens = ensemble(encoded, [0, 1, 2], cfg, device=device)
    assert ens.n_scored_notes == scored_notes(encoded)
    start, n = ens.engine.theta.clone(), 50
    for _ in range(n):
        ens.update(torch.zeros_like(start))
    step = (ens.engine.theta - start).cpu()  # (3, N)
    variance = n * 2 * cfg.temperature * cfg.lr / scored_notes(encoded)  # minibatches or not: P of the set
    size = step.numel()  # 3 x 2388 independent Gaussians
    # the sample variance's relative standard error is sqrt(2/size) = 1.7 %: allow 5 standard errors
    assert step.pow(2).mean().item() == pytest.approx(variance, rel=5 * math.sqrt(2 / size))
    assert abs(step.mean().item()) < 5 * math.sqrt(variance / size)
    corr = np.corrcoef(step.numpy())  # each run its own stream
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 5 / math.sqrt(step.shape[1])


@pytest.mark.parametrize("batch_size", [None, 2])
def test_with_zero_gradient_theta_diffuses_with_variance_2_T_lr_over_P_per_step(encoded, batch_size):
    assert_diffuses_with_variance_2_T_lr_over_P_per_step(
        encoded, config(temperature=0.3, lr=0.25, batch_size=batch_size)
    )


def test_each_run_has_its_own_noise_stream_apart_from_its_init_stream():
    def draw(generator):
        return torch.randn(1000, generator=generator, dtype=F64)

    noise = [draw(sgd.noise_generator(seed, CPU)) for seed in (0, 1)]
    assert torch.equal(noise[0], draw(sgd.noise_generator(0, CPU)))  # reproducible
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[0], draw(torch.Generator().manual_seed(0)))  # model.init_theta's generator


def test_at_zero_temperature_nothing_is_drawn_and_the_trajectory_is_plain_sgd(encoded, monkeypatch):
    def plain_update(self, theta, grad, active, n_stopped):  # SGD.step as before Langevin (norm logged)
        clip = self.clip_norm
        norm = torch.linalg.vector_norm(grad, dim=1)
        torch.fmax(self.grad_max, norm, out=self.grad_max)
        if clip is not None:
            self.clipped.add_(norm > clip)
            grad.mul_((clip / norm).clamp_(max=1.0).unsqueeze(1))
        if n_stopped:
            grad.masked_fill_(active.unsqueeze(1) == 0, 0.0)
        theta.add_(grad, alpha=-self.lr)

    for cfg in (config(temperature=0.0), config(temperature=0.0, batch_size=None, dtype="float32")):
        with monkeypatch.context() as patch:
            patch.setattr(sgd.SGD, "step", plain_update)
            before = runs(encoded, [0, 1], cfg)
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "normal_", lambda *a, **k: pytest.fail("drew noise at T = 0"))
            now = runs(encoded, [0, 1], cfg)
        for a, b in zip(now, before, strict=True):
            xr.testing.assert_identical(a, b)
        assert now[0].attrs["temperature"] == 0.0


def test_trajectory_records_temperature_and_scored_notes(encoded, caplog):
    with caplog.at_level(logging.INFO, logger="bachglass.train"):
        (run,) = runs(encoded, [0], config(temperature=0.02, lr=0.5))
    assert run.attrs["temperature"] == 0.02
    assert run.attrs["n_scored_notes"] == scored_notes(encoded)
    scale = math.sqrt(2 * 0.02 * 0.5 / scored_notes(encoded))
    assert f"T = 0.02 nats per note: θ += {scale:.4g}·ξ per step" in caplog.text
    assert f"P = {scored_notes(encoded)} scored training notes" in caplog.text


@pytest.mark.parametrize("batch_size", [None, 4])
def test_interrupted_langevin_run_resumes_bitwise(encoded, tmp_path, die_after_first_save, batch_size):
    cfg = config(batch_size=batch_size, resume_every=23, clip_norm=0.2)  # mid-epoch, mid clip window
    ckpt = tmp_path / "trajectory.ckpt.pt"
    with pytest.raises(Interrupted):
        runs(encoded, [0], cfg, [ckpt])
    state = torch.load(ckpt, weights_only=True)
    assert state["counters"][0] == 23 and state["optimizer"]["noise"].dtype == torch.uint8
    resumed = runs(encoded, [0], cfg, [ckpt])
    uninterrupted = runs(encoded, [0], cfg)
    xr.testing.assert_identical(resumed[0], uninterrupted[0])
    assert not resumed[0].theta.equals(
        runs(encoded, [0], config(batch_size=batch_size, temperature=0.0))[0].theta
    )


def interrupt_between_files(encoded, cfg, paths, monkeypatch, n):
    """Train the pack (0, 1), killed just before the ``n``-th checkpoint file; return the saved steps."""
    die_at_save(monkeypatch, n)
    with pytest.raises(Interrupted):
        runs(encoded, [0, 1], cfg, paths)
    monkeypatch.undo()
    states = [torch.load(path, weights_only=True) for path in paths]
    return [(s["counters"][0], s["previous"] and s["previous"]["counters"][0]) for s in states]


def test_a_pack_saved_apart_steps_back_to_the_noise_state_of_the_save_before(encoded, tmp_path, monkeypatch):
    """Saved apart twice: from a fresh start (``previous`` is the last save), then from a resume
    (``previous`` is the restored state), each time resumed from the state one save back."""
    cfg = config(clip_norm=0.2)
    uninterrupted = runs(encoded, [0, 1], cfg)
    paths = [tmp_path / "s0.ckpt.pt", tmp_path / "s1.ckpt.pt"]
    # saves at 10 and 20, then seed 0 at 30 but not seed 1
    assert interrupt_between_files(encoded, cfg, paths, monkeypatch, 6) == [(30, 20), (20, 10)]
    ahead = torch.load(paths[0], weights_only=True)
    noise, before = ahead["optimizer"]["noise"], ahead["previous"]["optimizer"]["noise"]
    assert not torch.equal(noise, before)  # 10 steps of draws apart
    # both resume at 20 (seed 0 stepped back); seed 0 saved at 30, seed 1 not
    assert interrupt_between_files(encoded, cfg, paths, monkeypatch, 2) == [(30, 20), (20, 10)]
    for a, b in zip(runs(encoded, [0, 1], cfg, paths), uninterrupted, strict=True):
        xr.testing.assert_identical(a, b)


def test_a_langevin_run_follows_the_same_path_in_a_pack_and_alone(encoded):
    packed = runs(encoded, [0, 1], config())[1]
    alone = runs(encoded, [1], config())[0]
    # as for plain SGD (test_ensemble): equal up to the round-off of batched kernels, here in float64
    np.testing.assert_allclose(packed.theta.values, alone.theta.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(packed.loss.values, alone.loss.values, rtol=1e-12)
    cold = runs(encoded, [1], config(temperature=0.0))[0]
    assert np.abs(alone.theta.values - cold.theta.values).max() > 1e-3  # the noise is there


@pytest.mark.parametrize(("was", "now"), [(0.01, 0.02), (0.0, 0.01)])
def test_a_checkpoint_of_another_temperature_is_refused(encoded, tmp_path, die_after_first_save, was, now):
    ckpt = tmp_path / "trajectory.ckpt.pt"
    with pytest.raises(Interrupted):
        runs(encoded, [0], config(temperature=was), [ckpt])
    message = (
        rf"{re.escape(str(ckpt))}: checkpoint of a different run: temperature={was} \(now {now}\); delete it"
    )
    with pytest.raises(ParamsError, match=message):
        runs(encoded, [0], config(temperature=now), [ckpt])


def test_a_hotter_run_ends_at_a_higher_training_loss():
    data = make_encoded(4, 16, VOCAB, seed=1, n_heldout=0)
    late = {}
    for temperature in (0.0, 0.3, 1.0):
        cfg = train_config(steps=300, lr=0.5, temperature=temperature)
        run = train.train_run(data, 1, 16, 0, cfg, None, False)
        loss = run.loss.values.ravel()
        late[temperature] = loss[run.step.values >= 200].mean()
    # steps 200-300, N = 948, P = 216: 0.36, 0.64, 1.31 nats per note (equipartition N T / 2P bounds
    # the excess by 0.66, 2.2); the margins are a third of the gaps
    assert late[0.3] > late[0.0] + 0.1
    assert late[1.0] > late[0.3] + 0.2


def test_negative_temperature_is_a_params_error(encoded):
    with pytest.raises(ParamsError, match=r"train\.temperature: -0\.1 is not >= 0"):
        runs(encoded, [0], config(temperature=-0.1))


def test_langevin_without_scored_notes_is_a_data_error():
    data = make_encoded(2, 6, VOCAB, n_heldout=0)
    data["mask"][:, 1:] = 0  # one chord per chorale: nothing to predict
    data["tokens"].values[:, 1:] = -1
    with pytest.raises(DataError, match=r"encoded\.nc: no scored note"):
        runs(data, [0], config(temperature=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_langevin_is_deterministic_and_has_the_right_scale(encoded):
    cfg = config(device="cuda", temperature=0.3, lr=0.25)
    for a, b in zip(runs(encoded, [0, 1], cfg), runs(encoded, [0, 1], cfg), strict=True):
        xr.testing.assert_identical(a, b)
    assert_diffuses_with_variance_2_T_lr_over_P_per_step(encoded, cfg, torch.device("cuda"))


# --- the sweep: runs along temperature, and tau_e(T) ---


def sweep_runs(temperatures, seeds=(0, 1)):
    from bachglass.observables import ObservablesConfig, run_observables

    config = ObservablesConfig(eps=[0.5], smoothing_decades=0.1, tau_w=[10], overlap_f=100)
    runs = []
    for t in temperatures:
        for seed in seeds:
            traj = make_trajectory(1, 4, seed, sigma=0.01 * t**0.5)  # hotter: faster diffusion
            traj.attrs |= {"temperature": t, "lr": 0.25}
            runs.append(run_observables(traj, config, {}))
    return runs


def test_the_sweep_tiles_runs_along_temperature_and_hotter_runs_relax_sooner():
    sweep = langevin.combine_sweep(sweep_runs([0.1, 0.01, 1.0]), {"params_sha256": "x"})
    assert sweep["temperature"].values.tolist() == [0.01, 0.1, 1.0]
    assert {"temperature", "depth", "width", "seed", "tau_w", "time"} == set(sweep["overlap"].dims)
    assert "temperature" not in sweep.attrs and sweep["temperature"].attrs["units"] == "nat per note"
    tau_e = sweep["tau_e"].sel(tau_w=10).mean(("depth", "width", "seed")).values
    assert tau_e[0] > tau_e[1] > tau_e[2]


def test_relaxation_power_law_recovers_a_known_exponent():
    temperatures = np.array([1e-4, 1e-3, 1e-2, 1e-1])
    tau = xr.DataArray(5.0 * temperatures**-0.5, {"temperature": temperatures}, "temperature")
    slope, intercept = langevin.relaxation_power_law(tau.expand_dims(seed=[0, 1]))
    assert slope == pytest.approx(-0.5) and intercept == pytest.approx(np.log10(5.0))
    censored = tau.copy(data=[np.inf, *tau.values[1:]])  # not reached at the coldest T: left out
    assert langevin.relaxation_power_law(censored)[0] == pytest.approx(-0.5)


def test_relaxation_fits_give_each_waiting_time_its_exponent_for_fits_nc():
    temperatures = np.array([1e-3, 1e-2, 1e-1])
    slopes = xr.DataArray([-0.5, -1.0], {"tau_w": [10, 100]}, "tau_w")
    tau_e = 3.0 * xr.DataArray(temperatures, {"temperature": temperatures}, "temperature") ** slopes
    tau_e = tau_e.expand_dims(depth=[2], width=[8], seed=[0, 1])
    ds = langevin.relaxation_fits(xr.Dataset({"tau_e": tau_e}))
    np.testing.assert_allclose(ds["langevin_tau_e_exponent"].values, [-0.5, -1.0])
    np.testing.assert_allclose(ds["langevin_tau_e_log10_prefactor"].values, np.log10(3.0))
    assert ds["langevin_tau_w"].values.tolist() == [10, 100]
    assert all(set(ds[v].attrs) == {"long_name", "units"} for v in ds.variables)
    once = tau_e.where(tau_e.temperature == 1e-1, np.inf)  # relaxed at one temperature only: no exponent
    assert np.isnan(langevin.relaxation_fits(xr.Dataset({"tau_e": once}))["langevin_tau_e_exponent"]).all()


def test_an_empty_sweep_or_a_run_without_temperature_is_a_data_error():
    with pytest.raises(DataError, match="no runs to combine"):
        langevin.combine_sweep([], {})
    run = sweep_runs([0.1])[0]
    del run.attrs["temperature"]
    with pytest.raises(DataError, match="carry no temperature"):
        langevin.combine_sweep([run], {})

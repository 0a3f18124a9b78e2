"""The batched ensemble: each member trains as plain per-model SGD of its seed would; pack files."""

import contextlib
import signal

import numpy as np
import pytest
import torch
from conftest import Interrupted, die_at_save, make_encoded, train_config

from bachglass import ensemble, io, model, train, trajectory
from bachglass.errors import DataError

torch.set_num_threads(1)

VOCAB = (5, 4, 5, 6)
CPU = torch.device("cpu")
F64 = torch.float64


def config(**changes):
    """Minibatches of 4 of 6 chorales (epochs reshuffle), float64, resumable every 15 steps."""
    base = dict(batch_size=4, steps=40, checkpoints_per_decade=20, resume_every=15, dtype="float64")
    return train_config(**(base | changes))


CONFIG = config()


@pytest.fixture(scope="module")
def encoded():
    return make_encoded(6, 14, VOCAB, seed=3, n_heldout=2)  # varied lengths: padding and masking


def training_batch(enc, dtype=F64):
    layout = model.HeadLayout(VOCAB)
    split = enc["split"].values == "train"
    return model.encode_batch(enc["tokens"].values[split], enc["mask"].values[split], layout, dtype, CPU)


def thetas(depth, width, seeds, dtype=F64):
    specs = model.param_specs("rnn_tanh", depth, width, VOCAB)
    return torch.stack([model.init_theta(specs, width, s, dtype, CPU) for s in seeds])


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_each_member_has_the_loss_and_gradient_of_its_own_network(encoded, depth, chunked, monkeypatch):
    if chunked:  # the readout in chunks of 2 members (then 1): the CPU path for long sequences
        logits = 6 * 13 * 4 * max(VOCAB) * 8  # one member's (B·T, P) float64 logits
        monkeypatch.setattr(ensemble, "HEAD_BYTES", 2 * logits + 1)
    layout, batch = model.HeadLayout(VOCAB), training_batch(encoded)
    corpus = ensemble.Corpus(batch, layout)
    stacked = thetas(depth, 7, [0, 1, 2])
    engine = ensemble.BatchedElman(depth, 7, layout, stacked.clone())
    shared = corpus.select(corpus.all)
    own = torch.tensor([[4, 0, 2], [1, 3, 5], [2, 2, 0]])  # one minibatch per member
    for stacked_batch, members in ((shared, [[0, 1, 2, 3, 4, 5]] * 3), (corpus.select(own), own.tolist())):
        loss, grad = (t.clone() for t in engine.loss_grad(stacked_batch))
        assert torch.equal(engine.loss(stacked_batch), loss)
        for m, idx in enumerate(members):
            reference = model.ReferenceEngine("rnn_tanh", depth, 7, layout, stacked[m].clone())
            ref_loss, ref_grad = reference.loss_grad(model.select(batch, torch.tensor(idx), layout))
            assert abs(ref_loss.item() - loss[m].item()) <= 1e-12
            assert (ref_grad - grad[m]).abs().max().item() <= 1e-12
            assert ref_grad.abs().max().item() > 1e-3  # a real gradient, not two zeros


def plain_sgd(enc, depth, width, seed, cfg, steps):
    """Per-model training written out with nn.RNN + autograd: the trajectory a member must follow."""
    batch = training_batch(enc)
    specs = model.param_specs(cfg.cell, depth, width, VOCAB)
    net = model.RNNModel(cfg.cell, depth, width, VOCAB).to(F64)
    theta = model.init_theta(specs, width, seed, F64, CPU)
    with torch.no_grad():
        for param, view in zip(net.parameters(), model.split_flat(theta, specs), strict=True):
            param.copy_(view)
    rng, order = np.random.default_rng(seed), []
    snapshots = {}
    for step in range(steps + 1):
        snapshots[step] = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()
        if step == steps:
            break
        if not order:
            order = list(rng.permutation(batch.y.shape[1]))
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        x, y = batch.x[:, idx], batch.y[:, idx]
        net.zero_grad()
        model.cross_entropy(net(x), y, VOCAB).backward()
        grads = [p.grad for p in net.parameters()]
        norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])).item()
        scale = cfg.clip_norm / norm if norm > cfg.clip_norm else 1.0
        with torch.no_grad():
            for param, g in zip(net.parameters(), grads, strict=True):
                param.sub_(cfg.lr * scale * g)
    return snapshots


@pytest.mark.parametrize(("depth", "width"), [(1, 6), (2, 5)])
def test_packed_runs_follow_plain_per_model_sgd_in_float64(encoded, depth, width):
    """Own minibatch order (batch 4 of 6: epochs reshuffle), clipping and update per member."""
    runs = train.train_runs(encoded, depth, width, [0, 1, 2], config(), progress=False)
    for seed, run in zip([0, 1, 2], runs, strict=True):
        assert run.attrs["ensemble_size"] == 3 and run.seed.item() == seed
        plain = plain_sgd(encoded, depth, width, seed, CONFIG, CONFIG.steps)
        for k, step in enumerate(run.step.values):
            got = torch.as_tensor(run.theta.values[0, 0, 0, k], dtype=F64)
            # snapshots are stored in float32: compare at that precision, then the final loss in float64
            assert (got - plain[int(step)].float().double()).abs().max().item() == 0.0, (seed, step)
    alone = [train.train_run(encoded, depth, width, s, config(), None, False) for s in (0, 1, 2)]
    for a, b in zip(alone, runs, strict=True):
        np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-12)
        np.testing.assert_allclose(a.heldout_loss.values, b.heldout_loss.values, rtol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gru_and_lstm_packs_follow_plain_per_model_sgd(encoded, cell):
    cfg = config(cell=cell, steps=12)
    runs = train.train_runs(encoded, 1, 4, [0, 1], cfg, progress=False)
    for seed, run in zip([0, 1], runs, strict=True):
        plain = plain_sgd(encoded, 1, 4, seed, cfg, cfg.steps)
        for k, step in enumerate(run.step.values):
            got = torch.as_tensor(run.theta.values[0, 0, 0, k], dtype=F64)
            assert (got - plain[int(step)].float().double()).abs().max().item() == 0.0, (seed, step)


def test_float32_pack_matches_single_runs_to_round_off(encoded):
    cfg = config(dtype="float32", steps=60, lr=0.25)
    packed = train.train_runs(encoded, 2, 8, [0, 1, 2, 3], cfg, progress=False)
    for seed, run in enumerate(packed):
        alone = train.train_run(encoded, 2, 8, seed, cfg, None, False)
        # chaos amplifies round-off, but at lr 0.25 over 60 steps it stays far below the loss scale
        np.testing.assert_allclose(run.loss.values, alone.loss.values, rtol=1e-4)


def test_a_diverging_member_stops_alone(encoded, monkeypatch):
    real = ensemble.BatchedElman.loss_grad
    calls = []

    def poisoned(self, batch):
        loss, grad = real(self, batch)
        calls.append(1)
        if len(calls) == 8:  # step 7: member 1's loss and gradient become NaN
            loss[1], grad[1] = float("nan"), float("nan")
        return loss, grad

    clean = train.train_runs(encoded, 1, 6, [0, 1, 2], config(), progress=False)
    monkeypatch.setattr(ensemble.BatchedElman, "loss_grad", poisoned)
    runs = train.train_runs(encoded, 1, 6, [0, 1, 2], config(), progress=False)
    assert runs[1].attrs["status"] == "diverged" and runs[1].attrs["diverged_step"] == 7
    steps = runs[1].step.values
    assert np.isfinite(runs[1].loss.values.ravel()[steps < 7]).all()
    assert np.isnan(runs[1].loss.values.ravel()[steps >= 7]).all()
    np.testing.assert_array_equal(
        runs[1].theta.values[..., steps < 7, :], clean[1].theta.values[..., steps < 7, :]
    )
    for m in (0, 2):  # the others go on exactly as without the diverged one
        assert runs[m].attrs["status"] == "completed"
        np.testing.assert_array_equal(runs[m].theta.values, clean[m].theta.values)
        np.testing.assert_array_equal(runs[m].loss.values, clean[m].loss.values)


def test_runs_interrupted_at_different_steps_resume_as_separate_cohorts(
    encoded, tmp_path, die_after_first_save
):
    cfg = config(clip_norm=0.2)  # clipped in some steps, not in others
    uninterrupted = train.train_runs(encoded, 1, 6, [0, 1], cfg, progress=False)
    paths = [tmp_path / "s0.ckpt.pt", tmp_path / "s1.ckpt.pt"]
    with pytest.raises(Interrupted):  # seed 0 alone: killed just after its step-15 save
        train.train_runs(encoded, 1, 6, [0], cfg, [paths[0]], progress=False)
    assert paths[0].exists() and not paths[1].exists()
    resumed = train.train_runs(encoded, 1, 6, [0, 1], cfg, paths, progress=False)
    for a, b in zip(resumed, uninterrupted, strict=True):
        np.testing.assert_allclose(a.theta.values, b.theta.values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-12)
        np.testing.assert_array_equal(a.clip_fraction.values, b.clip_fraction.values)
        fraction = a.clip_fraction.values
        assert ((fraction > 0) & (fraction < 1)).any()  # clipping on and off between checkpoints
    assert resumed[0].attrs["ensemble_size"] == 1  # the resumed one trained on alone


def assert_bitwise(runs, reference):
    for a, b in zip(runs, reference, strict=True):
        assert a.identical(b)


def test_a_state_saved_at_step_0_beside_a_missing_one_resumes_as_a_fresh_start(
    encoded, tmp_path, monkeypatch
):
    """A stop signal pending when training starts saves step 0; a kill then leaves one run's file only."""
    cfg = config(clip_norm=0.2)
    uninterrupted = train.train_runs(encoded, 1, 6, [0, 1], cfg, progress=False)
    paths = [tmp_path / "s0.ckpt.pt", tmp_path / "s1.ckpt.pt"]

    @contextlib.contextmanager
    def pending_sigterm():
        yield [signal.SIGTERM]

    monkeypatch.setattr(train, "stop_signals", pending_sigterm)
    die_at_save(monkeypatch, 2)  # run 0 saved at step 0, run 1 not
    with pytest.raises(Interrupted):
        train.train_runs(encoded, 1, 6, [0, 1], cfg, paths, progress=False)
    monkeypatch.undo()
    assert torch.load(paths[0], weights_only=True)["counters"][0] == 0 and not paths[1].exists()
    assert_bitwise(train.train_runs(encoded, 1, 6, [0, 1], cfg, paths, progress=False), uninterrupted)


def test_a_cohort_saved_apart_rejoins_inside_a_job_that_trains_several_cohorts(
    encoded, tmp_path, monkeypatch
):
    """Seed 2 resumes alone at step 25; seeds 0 and 1 train as a cohort and are killed between their files."""
    cfg = config(clip_norm=0.2, resume_every=10)
    paths = [tmp_path / f"s{seed}.ckpt.pt" for seed in (0, 1, 2)]
    die_at_save(monkeypatch, 3)  # seed 2 alone: saves at 10 and 20, killed before the one at 30
    with pytest.raises(Interrupted):
        train.train_runs(encoded, 1, 6, [2], cfg, [paths[2]], progress=False)
    monkeypatch.undo()
    seed2 = paths[2].read_bytes()
    uninterrupted = train.train_runs(encoded, 1, 6, [0, 1, 2], cfg, paths, progress=False)
    paths[2].write_bytes(seed2)  # the same start for the interrupted job
    for path in paths[:2]:
        path.unlink()
    die_at_save(monkeypatch, 6)  # cohort (0, 1) saves at 10, 20, then seed 0 at 30, not seed 1
    with pytest.raises(Interrupted):
        train.train_runs(encoded, 1, 6, [0, 1, 2], cfg, paths, progress=False)
    monkeypatch.undo()
    assert [torch.load(p, weights_only=True)["counters"][0] for p in paths] == [30, 20, 20]
    assert_bitwise(train.train_runs(encoded, 1, 6, [0, 1, 2], cfg, paths, progress=False), uninterrupted)


def test_a_pack_is_one_file_along_seed_that_comes_apart_into_its_runs(encoded, tmp_path):
    """train_pack writes the runs of train_runs into one file; trajectory.runs gives each back, with the
    attributes a run of its own carries; the checkpoints beside the file are gone once it is written."""
    output = tmp_path / "runs/d1_w4_s0-1/trajectory.nc"
    cfg = config(steps=40)  # resume_every 15: checkpoints are written, then removed
    train.train_pack(encoded, 1, 4, [0, 1], cfg, output)
    assert not list(tmp_path.rglob("*.ckpt.pt"))
    packed = io.read_netcdf(output)
    assert packed["loss"].dims == ("depth", "width", "seed", "time") and list(packed["seed"].values) == [0, 1]
    expected = train.train_runs(encoded, 1, 4, [0, 1], cfg, progress=False)
    for run, alone in zip(trajectory.runs(packed), expected, strict=True):
        for name in trajectory.VARIABLES:
            np.testing.assert_array_equal(run[name].values, alone[name].values)
        for name in ("status", "diverged_step", "ensemble_size", "cell", "lr", "data_floor"):
            assert run.attrs[name] == alone.attrs[name], name
        assert "status" not in run.data_vars


def test_a_pack_without_its_per_run_variables_is_refused(encoded, tmp_path):
    runs = train.train_runs(encoded, 1, 4, [0], config(steps=10), progress=False)
    packed = trajectory.pack(runs, {}).drop_vars("status")
    with pytest.raises(DataError, match="no variable status"):
        trajectory.runs(packed)

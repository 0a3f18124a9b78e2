import math

import numpy as np
import pytest
import torch
from conftest import make_encoded

from bachglass import model
from bachglass.ensemble import BatchedElman, Corpus
from bachglass.errors import DataError, ParamsError

torch.set_num_threads(1)

VOCAB = (5, 4, 5, 6)
CPU = torch.device("cpu")
F64 = torch.float64


def training_batch(enc, dtype=F64):
    layout = model.HeadLayout(VOCAB)
    train = enc["split"].values == "train"
    tokens, mask = enc["tokens"].values[train], enc["mask"].values[train]
    return model.encode_batch(tokens, mask, layout, dtype, CPU), layout


class Fast:
    """The batched Elman engine with one member, behind ReferenceEngine's interface."""

    def __init__(self, depth, width, layout, theta):
        self.engine = BatchedElman(depth, width, layout, theta.unsqueeze(0))
        self.theta, self.layout = self.engine.theta[0], layout

    def stacked(self, batch):
        corpus = Corpus(batch, self.layout)
        return corpus.select(corpus.all)

    def loss(self, batch):
        return self.engine.loss(self.stacked(batch))[0]

    def loss_grad(self, batch):
        loss, grad = self.engine.loss_grad(self.stacked(batch))
        return loss[0], grad[0]


def engines(depth, width, layout, seed=0, dtype=F64):
    specs = model.param_specs("rnn_tanh", depth, width, layout.vocab_sizes)
    theta = model.init_theta(specs, width, seed, dtype, CPU)
    ref = model.ReferenceEngine("rnn_tanh", depth, width, layout, theta.clone())
    return ref, Fast(depth, width, layout, theta.clone())


@pytest.mark.parametrize("cell", sorted(model.CELLS))
@pytest.mark.parametrize("depth", [1, 3])
def test_param_specs_follow_the_reference_modules_parameters(cell, depth):
    specs = model.param_specs(cell, depth, 7, VOCAB)
    module = model.RNNModel(cell, depth, 7, VOCAB)
    expected = [(name, tuple(p.shape)) for name, p in module.named_parameters()]
    assert [(s.name, s.shape) for s in specs] == expected
    assert model.n_parameters(cell, depth, 7, VOCAB) == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("cell", "depth", "width", "expected"),
    [
        ("rnn_tanh", 1, 16, 3687),
        ("rnn_tanh", 2, 16, 4231),
        ("rnn_tanh", 3, 16, 4775),
        ("rnn_tanh", 4, 16, 5319),
        ("rnn_tanh", 3, 48, 21799),
        ("rnn_tanh", 4, 256, 513639),
        ("lstm", 2, 16, 11671),
        ("lstm", 2, 256, 922471),
    ],
)
def test_n_parameters_matches_the_paper_spec_table(cell, depth, width, expected):
    vocab = (23, 24, 25, 31)  # I = O = 103 as in docs/science.md §1.4
    assert model.n_parameters(cell, depth, width, vocab) == expected


def test_groups_label_each_layer_then_the_readout():
    specs = model.param_specs("rnn_tanh", 2, 3, VOCAB)
    groups = model.param_groups(specs)
    names, counts = np.unique(groups, return_counts=True)
    assert list(dict.fromkeys(groups)) == ["layer1", "layer2", "readout"]
    n_io = sum(VOCAB)
    expected = {"layer1": 3 * (n_io + 3 + 2), "layer2": 3 * (3 + 3 + 2), "readout": n_io * 3 + n_io}
    assert dict(zip(names, counts, strict=True)) == expected


def test_init_is_deterministic_per_seed_and_within_the_default_bound():
    specs = model.param_specs("rnn_tanh", 2, 9, VOCAB)
    a = model.init_theta(specs, 9, 3, torch.float32, CPU)
    b = model.init_theta(specs, 9, 3, torch.float32, CPU)
    c = model.init_theta(specs, 9, 4, torch.float32, CPU)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max() <= 1 / 3 and a.abs().max() > 0.3  # U(±1/√w), w = 9


def test_orthogonal_init_replaces_only_the_recurrent_weights_by_orthogonal_blocks():
    for cell, gates in (("rnn_tanh", 1), ("gru", 3)):
        specs = model.param_specs(cell, 2, 9, VOCAB)
        plain = model.init_theta(specs, 9, 3, torch.float64, CPU)
        ortho = model.init_theta(specs, 9, 3, torch.float64, CPU, "orthogonal")
        assert torch.equal(ortho, model.init_theta(specs, 9, 3, torch.float64, CPU, "orthogonal"))
        views = zip(specs, model.split_flat(plain, specs), model.split_flat(ortho, specs), strict=True)
        for spec, a, b in views:
            if "weight_hh" not in spec.name:
                assert torch.equal(a, b), spec.name  # inputs, biases, readout: the default draw
                continue
            assert len(b.split(9)) == gates
            for block in b.split(9):  # each gate's w x w block: Uᵀ U = 1
                torch.testing.assert_close(block.T @ block, torch.eye(9, dtype=torch.float64))
            assert not torch.equal(a, b)
    with pytest.raises(ParamsError, match=r"train\.init: 'identity'"):
        model.init_theta(specs, 9, 3, torch.float64, CPU, "identity")


def test_inputs_are_concatenated_one_hots_and_targets_the_next_chord():
    enc = make_encoded(3, 8, VOCAB, seed=1, n_heldout=0)
    batch, layout = training_batch(enc)
    tokens, lengths = enc["tokens"].values, enc["length"].values
    assert batch.x.shape == (7, 3, sum(VOCAB))
    for c, length in enumerate(lengths):
        for t in range(7):
            hot = torch.nonzero(batch.x[t, c]).squeeze(1).tolist()
            scored = t + 1 < length
            assert hot == ([] if t >= length else list(tokens[c, t] + layout.offsets))
            assert batch.y[t, c].tolist() == (list(tokens[c, t + 1]) if scored else [-1] * 4)
    assert batch.fidx.numel() == 4 * int((lengths - 1).sum())


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_loss_at_zero_parameters_is_the_mean_log_vocab_size(dtype):
    batch, layout = training_batch(make_encoded(4, 10, VOCAB, seed=2), dtype)
    ref, fast = engines(2, 5, layout, dtype=dtype)
    ref.theta.zero_()
    fast.theta.zero_()
    expected = np.mean(np.log(VOCAB))  # uniform softmaxes; every scored step has 4 notes
    assert ref.loss(batch).item() == pytest.approx(expected, rel=1e-6)
    assert fast.loss(batch).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_fast_elman_path_matches_autograd_in_float64(depth):
    enc = make_encoded(6, 14, VOCAB, seed=depth)  # varied lengths: padding and masking
    batch, layout = training_batch(enc)
    minibatch = model.select(batch, torch.tensor([4, 0, 2]), layout)
    ref, fast = engines(depth, 7, layout, seed=depth)
    for b in (batch, minibatch):
        ref_loss, ref_grad = ref.loss_grad(b)
        fast_loss, fast_grad = fast.loss_grad(b)
        assert abs(ref_loss.item() - fast_loss.item()) <= 1e-10
        assert (ref_grad - fast_grad).abs().max().item() <= 1e-10
        assert ref_grad.abs().max().item() > 1e-3  # a real gradient, not two zeros
        assert fast.loss(b).item() == fast_loss.item()


def test_fast_and_autograd_sgd_trajectories_agree_in_float64():
    batch, layout = training_batch(make_encoded(5, 12, VOCAB, seed=5))
    ref, fast = engines(2, 6, layout, seed=1)
    for _ in range(30):
        for engine in (ref, fast):
            _, grad = engine.loss_grad(batch)
            engine.theta.add_(grad, alpha=-0.5)
    assert (ref.theta - fast.theta).abs().max().item() <= 1e-10
    assert abs(ref.loss(batch).item() - fast.loss(batch).item()) <= 1e-10


def test_padding_steps_change_neither_loss_nor_gradient():
    enc = make_encoded(2, 12, VOCAB, seed=7, n_heldout=0)
    batch, layout = training_batch(enc)  # chorale 0 has the full length, chorale 1 is shorter
    short = enc["length"].values[1]
    assert short < 12
    alone, _ = training_batch(enc.isel(chorale=[1]))
    padded = model.select(batch, torch.tensor([1]), layout)
    assert alone.x.shape[0] == short - 1 < padded.x.shape[0]
    for ref_or_fast in engines(2, 5, layout):
        loss_a, grad_a = (v.clone() for v in ref_or_fast.loss_grad(alone))
        loss_p, grad_p = ref_or_fast.loss_grad(padded)
        assert abs(loss_a.item() - loss_p.item()) <= 1e-12
        assert (grad_a - grad_p).abs().max().item() <= 1e-12


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reference_engine_handles_gru_and_lstm(cell):
    batch, layout = training_batch(make_encoded(3, 9, VOCAB, seed=3))
    specs = model.param_specs(cell, 2, 4, VOCAB)
    theta = model.init_theta(specs, 4, 0, F64, CPU)
    engine = model.ReferenceEngine(cell, 2, 4, layout, theta)
    loss, grad = engine.loss_grad(batch)
    assert grad.shape == theta.shape
    assert math.isfinite(loss.item())
    assert loss.item() == engine.loss(batch).item()
    # a small step against the gradient lowers the loss (the gradient belongs to theta's layout)
    theta.add_(grad, alpha=-1e-3)
    assert engine.loss(batch).item() < loss.item()


def test_encode_splits_returns_training_and_heldout_batches():
    enc = make_encoded(4, 10, VOCAB, seed=4, n_heldout=3)
    train, heldout = model.encode_splits(enc, model.HeadLayout(VOCAB), F64, CPU)
    assert train.y.shape[1] == 4 and heldout.y.shape[1] == 3
    _, none = model.encode_splits(enc.isel(chorale=slice(0, 4)), model.HeadLayout(VOCAB), F64, CPU)
    assert none is None


def test_encoded_without_training_chorales_is_a_data_error():
    enc = make_encoded(2, 10, VOCAB, n_heldout=1).isel(chorale=[2])
    with pytest.raises(DataError, match=r"encoded\.nc: no chorale has split 'train'"):
        model.encode_splits(enc, model.HeadLayout(VOCAB), F64, CPU)


def test_padding_token_inside_a_chorale_is_a_data_error():
    enc = make_encoded(2, 10, VOCAB, n_heldout=0)
    enc["tokens"].values[0, 3, 1] = -1
    with pytest.raises(DataError, match=r"encoded\.nc: tokens: -1 inside a chorale"):
        model.encode_splits(enc, model.HeadLayout(VOCAB), F64, CPU)

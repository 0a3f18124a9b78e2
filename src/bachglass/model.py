"""Stacked recurrent networks with per-voice softmax heads: parameter layout, inputs, autograd reference.

The network reads the chord at step t (the 4 voices' one-hots, concatenated) and predicts the chord at
t + 1 through one linear readout split into 4 per-voice softmaxes (docs/science.md §1.4). Every parameter
lives in one flat vector ``theta`` whose order and grouping are defined here once, by
:func:`param_specs`; the batched Elman path (``bachglass.ensemble``), the autograd reference below and the
trajectory's ``theta``/``group`` all use it.

Biases follow PyTorch's two-bias convention (``bias_ih`` and ``bias_hh`` per layer, both kept as
parameters), which is what docs/science.md §1.4 counts. For the Elman cell only their sum enters the
forward pass, so both get the same gradient.
"""

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from bachglass.errors import DataError, ParamsError

CELLS: dict[str, type[nn.RNNBase]] = {"rnn_tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn_tanh": 1, "gru": 3, "lstm": 4}  # stacked gate blocks per weight matrix, as in torch


class ParamSpec(NamedTuple):
    """One parameter tensor: its torch name, shape (torch orientation) and group."""

    name: str
    shape: tuple[int, ...]
    group: str

    @property
    def size(self) -> int:
        """Number of scalar entries."""
        return int(np.prod(self.shape))


def param_specs(cell: str, depth: int, width: int, vocab_sizes: tuple[int, ...]) -> list[ParamSpec]:
    """All parameter tensors in flattening order: layer by layer, then the readout.

    The names and order are those of :class:`RNNModel`'s ``named_parameters()``, so the autograd
    reference and the flat vector agree without a translation table (a test locks this).
    """
    n_io, gates = sum(vocab_sizes), GATES[cell]
    specs = []
    for layer in range(depth):
        n_in = n_io if layer == 0 else width
        group = f"layer{layer + 1}"
        specs += [
            ParamSpec(f"rnn.weight_ih_l{layer}", (gates * width, n_in), group),
            ParamSpec(f"rnn.weight_hh_l{layer}", (gates * width, width), group),
            ParamSpec(f"rnn.bias_ih_l{layer}", (gates * width,), group),
            ParamSpec(f"rnn.bias_hh_l{layer}", (gates * width,), group),
        ]
    specs += [
        ParamSpec("readout.weight", (n_io, width), "readout"),
        ParamSpec("readout.bias", (n_io,), "readout"),
    ]
    return specs


def n_parameters(cell: str, depth: int, width: int, vocab_sizes: tuple[int, ...]) -> int:
    """Count the trainable parameters N(d, w) (two-bias convention, docs/science.md §1.4)."""
    return sum(spec.size for spec in param_specs(cell, depth, width, vocab_sizes))


def param_groups(specs: list[ParamSpec]) -> np.ndarray:
    """Label every entry of the flat parameter vector with its group, shape (N,)."""
    return np.repeat([s.group for s in specs], [s.size for s in specs])


def merged_biases(cell: str, specs: list[ParamSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How to read the flat θ as the parameters of the function the net computes, each once.

    A layer's two bias vectors enter its pre-activation only as their sum b_ih + b_hh, so they get
    identical gradients and are one parameter: the entries of ``bias_hh`` that are plain sums
    (all of them for rnn_tanh and LSTM; the r and z gates for GRU, whose n gate multiplies b_hn by
    r) are added to their ``bias_ih`` partner and dropped. Returns ``keep`` (indices of θ kept, in
    order), and ``source``, ``target``: θ[source] is added to kept entry ``target``.
    """
    offsets = np.cumsum([0] + [s.size for s in specs])
    dropped, source, target_flat = [], [], []
    for k, spec in enumerate(specs):
        if ".bias_hh_l" not in spec.name:
            continue
        n = spec.size if cell != "gru" else 2 * spec.size // 3  # GRU: r and z, not n
        partner = k - 1  # bias_ih of the same layer comes just before (param_specs' order)
        if specs[partner].name != spec.name.replace("bias_hh", "bias_ih"):
            raise ValueError(f"merged_biases: {spec.name} does not follow its bias_ih")
        src = offsets[k] + np.arange(n)
        dropped.append(src)
        source.append(src)
        target_flat.append(offsets[partner] + np.arange(n))
    drop = np.concatenate(dropped) if dropped else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(offsets[-1]), drop)
    source_idx = np.concatenate(source) if source else drop
    target = np.searchsorted(keep, np.concatenate(target_flat)) if target_flat else drop
    return keep, source_idx, target


def split_flat(flat: Tensor, specs: list[ParamSpec]) -> list[Tensor]:
    """Split ``flat`` (N,) into views shaped like each parameter; writing a view writes ``flat``."""
    views = torch.split(flat, [s.size for s in specs])
    return [v.view(s.shape) for v, s in zip(views, specs, strict=True)]


INITS = ("pytorch", "orthogonal")  # params.yaml train.init


def init_theta(
    specs: list[ParamSpec],
    width: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    init: str = "pytorch",
) -> Tensor:
    """Draw the initial flat parameters from a generator seeded with ``seed``.

    ``pytorch``: every entry U(±1/√w), PyTorch's default for these layers. ``orthogonal``: the same
    draw, then every w × w gate block of the recurrent weights U_l replaced by a random orthogonal
    matrix (Saxe et al. 2014), drawn from the same generator after the uniform entries: all singular
    values 1 instead of the uniform draw's spread up to 1.15, the standard initialisation against
    exploding and vanishing gradients through time. The input weights, biases
    and readout are the same as with ``pytorch``. Drawn in float64 in the flat order, then cast, so
    the initial state depends on the seed only, not on the global RNG or on the module's construction.
    """
    if init not in INITS:
        raise ParamsError(f"train.init: {init!r} is not one of {', '.join(INITS)}")
    gen = torch.Generator().manual_seed(seed)
    n = sum(s.size for s in specs)
    theta = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) / width**0.5
    if init == "orthogonal":
        for spec, view in zip(specs, split_flat(theta, specs), strict=True):
            if ".weight_hh_l" in spec.name:
                for block in view.split(width):  # one block per gate, as torch stacks them
                    nn.init.orthogonal_(block, generator=gen)
    return theta.to(dtype=dtype, device=device)


@dataclass(frozen=True)
class HeadLayout:
    """Where each voice's tokens sit in the concatenated one-hot input and the logits.

    The fast path evaluates the 4 softmaxes at once on a padded (4, n_max) layout; ``columns``
    maps each compact logit (voice v, token k) to its padded slot v·n_max + k.
    """

    vocab_sizes: tuple[int, ...]

    @property
    def n_io(self) -> int:
        """Input and output size: Σ vocab sizes."""
        return sum(self.vocab_sizes)

    @property
    def n_max(self) -> int:
        """Largest vocabulary: the padded width of one head."""
        return max(self.vocab_sizes)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Start of each voice's block in the compact layout, shape (4,)."""
        return np.concatenate([[0], np.cumsum(self.vocab_sizes)[:-1]]).astype(np.int64)

    @cached_property
    def columns(self) -> np.ndarray:
        """Padded slot of every compact logit, shape (n_io,)."""
        return np.concatenate([v * self.n_max + np.arange(n) for v, n in enumerate(self.vocab_sizes)])


class Batch(NamedTuple):
    """A set of chorales as time-major tensors; rows are flattened as t·B + b."""

    x: Tensor  # (T, B, n_io) concatenated one-hots of the chord at input step t; 0 on padding
    y: Tensor  # (T, B, 4) int64 target token at t + 1; -1 where not scored
    rows: Tensor  # (n,) flat rows whose targets are scored
    fidx: Tensor  # (4n,) targets' flat indices in the padded (n, 4·n_max) head layout


def make_batch(x: Tensor, y: Tensor, layout: HeadLayout) -> Batch:
    """Attach the scored-row indices the fast path needs (computed once per batch, not per step)."""
    n_steps, n_batch, n_voices = y.shape
    flat_y = y.reshape(n_steps * n_batch, n_voices)
    rows = torch.nonzero(flat_y[:, 0] >= 0).squeeze(1)
    slot = flat_y[rows] + torch.arange(n_voices, device=y.device) * layout.n_max  # (n, 4)
    base = torch.arange(len(rows), device=y.device).unsqueeze(1) * (n_voices * layout.n_max)
    return Batch(x, y, rows, (base + slot).reshape(-1))


def select(batch: Batch, idx: Tensor, layout: HeadLayout) -> Batch:
    """Take the sub-batch of chorales ``idx`` (a minibatch)."""
    return make_batch(batch.x.index_select(1, idx), batch.y.index_select(1, idx), layout)


def encode_batch(
    tokens: np.ndarray, mask: np.ndarray, layout: HeadLayout, dtype: torch.dtype, device: torch.device
) -> Batch:
    """Model inputs and targets of chorales ``tokens`` (C, L, 4) with ``mask`` (C, L).

    Input step t carries the chord at t and is scored against the chord at t + 1, for
    t = 0..length-2: the first chord is never a target. T = longest length - 1; shorter chorales
    are padded with zero inputs and unscored targets.
    """
    n_steps = max(int(mask.sum(axis=1).max()) - 1, 1)
    tok = torch.as_tensor(tokens[:, : n_steps + 1].astype(np.int64)).transpose(0, 1)  # (T+1, C, 4)
    exists = torch.as_tensor(mask[:, : n_steps + 1] > 0).transpose(0, 1)  # (T+1, C)
    onehot = torch.zeros(*tok.shape[:2], layout.n_io, dtype=dtype)  # (T+1, C, n_io)
    slot = tok + torch.as_tensor(layout.offsets)
    onehot.scatter_add_(2, slot.clamp(min=0), (tok >= 0).to(dtype))  # add: padding adds 0
    y = torch.where(exists[1:].unsqueeze(2), tok[1:], -1)
    return make_batch(onehot[:-1].to(device), y.to(device), layout)


def encode_splits(
    encoded: xr.Dataset, layout: HeadLayout, dtype: torch.dtype, device: torch.device
) -> tuple[Batch, Batch | None]:
    """Encode the training and the held-out chorales of ``encoded`` (None when there are none)."""
    split, mask = encoded["split"].values, encoded["mask"].values
    tokens = encoded["tokens"].values
    if not (split == "train").any():
        raise DataError("encoded.nc: no chorale has split 'train'; re-create it")
    if (tokens[mask > 0] < 0).any():
        raise DataError("encoded.nc: tokens: -1 inside a chorale (mask 1); re-create it")
    train, heldout = (
        encode_batch(tokens[split == s], mask[split == s], layout, dtype, device)
        if (split == s).any()
        else None
        for s in ("train", "heldout")
    )
    return train, heldout


class RNNModel(nn.Module):
    """Autograd reference: torch's stacked RNN/GRU/LSTM plus one linear readout, h_0 = 0."""

    def __init__(self, cell: str, depth: int, width: int, vocab_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.vocab_sizes = tuple(vocab_sizes)
        self.rnn = CELLS[cell](sum(vocab_sizes), width, depth)  # nn.RNN: tanh, time-major
        self.readout = nn.Linear(width, sum(vocab_sizes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (T, B, n_io) of the next chord for inputs ``x`` (T, B, n_io)."""
        return self.readout(self.rnn(x)[0])


def cross_entropy(logits: Tensor, y: Tensor, vocab_sizes: tuple[int, ...]) -> Tensor:
    """Mean -log p of the scored targets, in nats per note (4 per-voice softmaxes)."""
    scored = y[..., 0] >= 0  # (T, B)
    total = logits.new_zeros(())
    for voice, logit in enumerate(torch.split(logits, list(vocab_sizes), dim=-1)):
        logp = torch.log_softmax(logit, dim=-1)
        picked = logp.gather(-1, y[..., voice : voice + 1].clamp(min=0)).squeeze(-1)
        total = total + torch.where(scored, picked, 0.0).sum()
    return -total / (len(vocab_sizes) * scored.sum())


class ReferenceEngine:
    """Loss and gradient of the flat ``theta`` through :class:`RNNModel` and autograd (any cell)."""

    def __init__(self, cell: str, depth: int, width: int, layout: HeadLayout, theta: Tensor) -> None:
        self.theta = theta  # (N,) the state the trainer updates
        self.vocab_sizes = layout.vocab_sizes
        self.module = RNNModel(cell, depth, width, layout.vocab_sizes).to(theta)
        self.params = list(self.module.parameters())
        self.specs = param_specs(cell, depth, width, layout.vocab_sizes)

    def _load(self) -> None:
        with torch.no_grad():
            for param, view in zip(self.params, split_flat(self.theta, self.specs), strict=True):
                param.copy_(view)

    def loss(self, batch: Batch) -> Tensor:
        """Mean cross-entropy of ``batch`` at ``theta``, shape ()."""
        self._load()
        with torch.no_grad():
            return cross_entropy(self.module(batch.x), batch.y, self.vocab_sizes)

    def loss_grad(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Loss, shape (), and its gradient with respect to ``theta``, shape (N,)."""
        self._load()
        loss = cross_entropy(self.module(batch.x), batch.y, self.vocab_sizes)
        grads = torch.autograd.grad(loss, self.params)
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])

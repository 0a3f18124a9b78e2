"""Probes of one run's parameter snapshots with the model: next-note accuracy and sharpness.

Accuracy is measured at every checkpoint, on the training and on the held-out chorales; sharpness,
the top eigenvalue of the training loss's Hessian in θ, at a log-spaced subset of them (Kalra &
Barkeshli 2023 protocol: power iteration on Hessian-vector products). Both run the network from
the flat ``theta`` through a hand-written forward pass (:func:`logits`): cuDNN's RNN kernels have
no double backward, and a batch of checkpoints runs as one batched model (the leading dim K), which
is what makes ~20 sharpness checkpoints × up to 100 Hessian-vector products cheap on a CPU (seconds a run).
Everything is computed in float64 (snapshots are stored in float32).
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from bachglass import device as devices
from bachglass import labels, model
from bachglass.errors import DataError

RUN_DIMS = ("depth", "width", "seed")
ENCODED_VARIABLES = ("tokens", "mask", "vocab_size", "split")  # what probe_run reads of encoded.nc
TRAJECTORY_ATTRS = ("cell", "status", "diverged_step")
F64 = torch.float64
CHUNK = 64  # checkpoints per batched accuracy pass (bounds memory: K·T·B·gates·width floats)
VARIABLES = {  # name: (long_name, units); sharpness: bachglass.labels (the stability scan writes it too)
    "accuracy": ("next-note accuracy on the training chorales (argmax of each voice's softmax)", "1"),
    "heldout_accuracy": ("next-note accuracy on the held-out chorales", "1"),
    "sharpness": labels.LABELS["sharpness"],
    "sharpness_residual": labels.LABELS["sharpness_residual"],
}


@dataclass(frozen=True)
class ProbesConfig:
    """The ``probes`` section of params.yaml (see the comments there)."""

    sharpness_per_decade: int  # sharpness checkpoints per decade of step; 0 = no sharpness
    power_iterations: int  # at most this many Hessian-vector products per sharpness value
    power_tolerance: float  # ... fewer once the relative residual ‖Hv − λv‖/|λ| is below this
    sharpness_chorales: int  # the first N training chorales define the loss whose Hessian is probed
    device: str  # cpu | cuda | auto (CUDA when present)


@dataclass(frozen=True)
class Net:
    """The architecture that reads a flat ``theta``: cell, depth, width and the per-voice vocabularies."""

    cell: str
    depth: int
    width: int
    vocab_sizes: tuple[int, ...]

    @property
    def specs(self) -> list[model.ParamSpec]:
        """Parameter tensors in flat order (:func:`model.param_specs`)."""
        return model.param_specs(self.cell, self.depth, self.width, self.vocab_sizes)


class _Stack(torch.autograd.Function):
    """``torch.stack(tensors, 1)`` with ``unbind`` as its backward, which double backward can afford.

    torch's own backward selects slice by slice, and the backward of each select fills a zero tensor
    of the full (K, T, B, w) size: O(T²) work per Hessian-vector product (half of it, measured).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, *tensors: Tensor) -> Tensor:
        return torch.stack(tensors, 1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, ...]:
        return grad.unbind(1)  # differentiable: double backward goes through it


def _layer(cell: str, pre: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """Run one recurrent layer over time from h_0 = 0; ``pre`` (K, T, B, G·w) is W_ih x + b_ih.

    Gate order and biases as torch's RNN/GRU/LSTM: GRU r, z, n with n = tanh(W_in x + b_in +
    r (W_hn h + b_hn)); LSTM i, f, g, o. Returns the hidden states (K, T, B, w).
    """
    width, w_t, bias = w_hh.shape[2], w_hh.transpose(1, 2), b_hh.unsqueeze(1)  # w_t: (K, w, G·w)
    if cell == "rnn_tanh":  # only b_ih + b_hh enters; h_0 = 0 skips the first product
        steps = (pre + bias.unsqueeze(1)).unbind(1)  # T × (K, B, w)
        hs = [torch.tanh(steps[0])]
        for p in steps[1:]:
            hs.append(torch.tanh(torch.baddbmm(p, hs[-1], w_t)))
        return _Stack.apply(*hs)
    steps = pre.unbind(1)
    h = c = pre.new_zeros(*steps[0].shape[:2], width)
    hs = []
    for p in steps:
        gh = torch.baddbmm(bias, h, w_t)  # (K, B, G·w)
        if cell == "gru":
            r, z = torch.sigmoid(p[..., : 2 * width] + gh[..., : 2 * width]).chunk(2, -1)
            n = torch.tanh(p[..., 2 * width :] + r * gh[..., 2 * width :])
            h = n + z * (h - n)  # (1 - z) n + z h
        else:
            gates = p + gh
            i, f, _, o = torch.sigmoid(gates).chunk(4, -1)
            c = f * c + i * torch.tanh(gates[..., 2 * width : 3 * width])
            h = o * torch.tanh(c)
        hs.append(h)
    return _Stack.apply(*hs)


def logits(net: Net, theta: Tensor, x: Tensor, rows: Tensor | None = None) -> Tensor:
    """Logits of the next chord at each of the K parameter vectors ``theta`` (K, N), from inputs ``x``.

    ``x`` is (T, B, n_io), time-major as :class:`model.Batch`. Returns (K, T·B, n_io), rows t·B + b,
    or only the ``rows`` given (the scored ones). Equals :class:`model.RNNModel` (a test locks it).
    """
    specs, n_batch = net.specs, x.shape[1]
    parts = torch.split(theta, [s.size for s in specs], dim=1)
    params = [p.reshape(len(theta), *s.shape) for p, s in zip(parts, specs, strict=True)]  # (K, *shape)
    inputs = x.reshape(-1, x.shape[2])  # (T·B, n_io), shared by the K nets
    for layer in range(net.depth):
        w_ih, w_hh, b_ih, b_hh = params[4 * layer : 4 * layer + 4]
        pre = torch.matmul(inputs, w_ih.transpose(1, 2)) + b_ih.unsqueeze(1)  # (K, T·B, G·w)
        hidden = _layer(net.cell, pre.unflatten(1, (-1, n_batch)), w_hh, b_hh)
        inputs = hidden.flatten(1, 2)  # (K, T·B, w)
    if rows is not None:
        inputs = inputs.index_select(1, rows)
    w_out, b_out = params[-2:]
    return torch.baddbmm(b_out.unsqueeze(1), inputs, w_out.transpose(1, 2))


def losses(net: Net, theta: Tensor, batch: model.Batch) -> Tensor:
    """Mean cross-entropy (K,) in nats per note, as :func:`model.cross_entropy`, at each ``theta`` row."""
    out, target = logits(net, theta, batch.x, batch.rows), _targets(batch)  # (K, n, n_io), (n, 4)
    total = out.new_zeros(len(theta))
    for voice, logit in enumerate(torch.split(out, list(net.vocab_sizes), dim=2)):
        index = target[:, voice].view(1, -1, 1).expand(len(theta), -1, 1)
        picked = torch.log_softmax(logit, dim=2).gather(2, index)
        total = total + picked.sum((1, 2))
    return -total / target.numel()


def accuracy(net: Net, theta: Tensor, batch: model.Batch) -> Tensor:
    """Fraction (K,) of scored notes whose voice's argmax is the target; NaN where ``theta`` is not finite.

    Each voice of each scored chord counts as one note, as in :func:`model.cross_entropy`.
    """
    finite = torch.isfinite(theta).all(1)
    safe = torch.where(finite.unsqueeze(1), theta, 0.0)
    target, hits = _targets(batch), []
    with torch.no_grad():
        for chunk in safe.split(CHUNK):
            out = logits(net, chunk, batch.x, batch.rows)
            heads = torch.split(out, list(net.vocab_sizes), dim=2)
            guess = torch.stack([head.argmax(2) for head in heads], 2)  # (K, n, 4)
            hits.append((guess == target).to(theta.dtype).mean((1, 2)))
    return torch.where(finite, torch.cat(hits), torch.nan)


def _targets(batch: model.Batch) -> Tensor:
    """Target tokens of the scored rows, (n, 4)."""
    return batch.y.reshape(-1, batch.y.shape[2]).index_select(0, batch.rows)


def sharpness_steps(steps: np.ndarray, per_decade: int) -> np.ndarray:
    """Pick the checkpoints where sharpness is measured: ``per_decade`` per decade, step 0 and the last.

    Log-spaced targets 10^(k/per_decade) ≤ the last step, each snapped to the nearest checkpoint in
    log step (so any checkpoint grid works); sorted, without duplicates. ``per_decade`` 0: none.
    """
    steps = np.asarray(steps, dtype=np.int64)
    if per_decade <= 0 or steps.size == 0:
        return steps[:0]
    chosen = [steps[steps == 0], steps[-1:]]
    positive = steps[steps > 0]
    if positive.size:
        k = np.arange(math.floor(per_decade * math.log10(positive[-1]) + 1e-9) + 1)
        distance = np.abs(np.log10(positive)[None, :] - k[:, None] / per_decade)  # (targets, checkpoints)
        chosen.append(positive[distance.argmin(1)])
    return np.unique(np.concatenate(chosen))


def start_vector(n: int, seed: int = 0, device: torch.device | None = None) -> Tensor:
    """Draw the seeded unit start vector (n,) of power iteration, on the CPU so every device gets it."""
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return (v / torch.linalg.vector_norm(v)).to(device)


def _power_iteration(
    hvp: Callable[[Tensor], Tensor],
    v: Tensor,
    iterations: int,
    tolerance: float = 0.0,
    shift: Tensor | float = 0.0,
    skip: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rayleigh quotients λ (...,), unit vectors v (..., n) and residuals ‖Hv − λv‖ (...,), rowwise.

    At most ``iterations`` products; a row stops, keeping its λ and v, at the first product after which
    its relative residual ‖Hv − λv‖/|λ + shift| is at most ``tolerance`` (``hvp`` being H − shift·I, that
    is the residual relative to the eigenvalue of the unshifted H), and the loop stops once every row has.
    A row's result is thus the same whichever rows share its batch (up to the batch's round-off). Rows
    in ``skip`` count as stopped from the start (their result is not wanted); a row whose λ is not finite
    stops too.
    """
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    for i in range(iterations):
        hv = hvp(v)
        value = (v * hv).sum(-1)
        residual = torch.linalg.vector_norm(hv - value.unsqueeze(-1) * v, dim=-1)
        if i == 0:
            kept, kept_v, kept_residual = value, v, residual
            done = torch.zeros_like(value, dtype=torch.bool) if skip is None else skip.clone()
        else:
            kept = torch.where(done, kept, value)
            kept_v = torch.where(done.unsqueeze(-1), kept_v, v)
            kept_residual = torch.where(done, kept_residual, residual)
        done = done | (residual <= tolerance * (value + shift).abs()) | ~torch.isfinite(value)
        if i == iterations - 1 or bool(done.all()):
            break
        norm = torch.linalg.vector_norm(hv, dim=-1, keepdim=True)
        v = torch.where(norm > 0, hv / norm, v)  # H v = 0: v is an eigenvector (of 0) already
    return kept, kept_v, kept_residual


def top_eigenvalue(
    hvp: Callable[[Tensor], Tensor], n: int, iterations: int, v0: Tensor | None = None, seed: int = 0
) -> tuple[float, Tensor]:
    """Eigenvalue of largest magnitude of the symmetric operator ``hvp`` (n,) -> (n,), by power iteration.

    Starts from ``v0`` (a warm start) or else :func:`start_vector` (``seed``, float64 on the CPU) and
    applies ``hvp`` ``iterations`` times. Returns the Rayleigh quotient vᵀHv of the final unit vector
    v, signed (a negative eigenvalue of larger magnitude than the top one is what it finds), and v.
    """
    if iterations < 1:
        raise ValueError(f"top_eigenvalue: iterations {iterations} must be at least 1")
    v = start_vector(n, seed) if v0 is None else v0
    value, v, _ = _power_iteration(hvp, v, iterations)
    return float(value), v


def hessian_product(net: Net, theta: Tensor, batch: model.Batch) -> Callable[[Tensor], Tensor]:
    """Return v (K, N) ↦ H_k v_k for the loss of ``batch`` at each row θ_k of ``theta`` (K, N).

    Double backward through time: the gradient's graph is built once, then each product is one
    backward pass through it. The K losses are summed: each row's gradient depends on its own θ only.
    """
    theta = theta.detach().requires_grad_()
    (grad,) = torch.autograd.grad(losses(net, theta, batch).sum(), theta, create_graph=True)
    return lambda v: torch.autograd.grad(grad, theta, v, retain_graph=True)[0]


def sharpness(
    net: Net, theta: Tensor, batch: model.Batch, iterations: int, tolerance: float = 0.0, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Return λ_max (K,), the top Hessian eigenvalue, and its residual (K,) at each row θ_k of ``theta``.

    The Hessian is that of the loss of ``batch``; the residual is the relative ‖Hv − λv‖/|λ|; both are
    NaN where θ_k is not finite. Power
    iteration (:func:`top_algebraic`) of at most ``iterations`` products, fewer for a row once its
    residual is at most ``tolerance``. The residual bounds the error: some eigenvalue of H lies within
    residual·|λ| of λ (Krylov-Weinstein), though not necessarily the top one. All K power iterations
    run as one batched model from the same seeded start vector, not chained warm starts: 2-4x cheaper
    on a CPU, and each value independent of which other checkpoints are probed. On real runs (20
    iterations vs 400) warm starts had the smaller median error but the larger worst one (13 % vs 6 %):
    the top eigenvector rotates between log-spaced checkpoints.
    """
    finite = torch.isfinite(theta).all(1)
    value = theta.new_full((len(theta),), torch.nan)
    residual = value.clone()
    if finite.any() and iterations > 0:
        live = theta[finite]
        start = start_vector(theta.shape[1], seed, theta.device).expand_as(live)
        top, res = top_algebraic(hessian_product(net, live, batch), start, iterations, tolerance)
        value[finite], residual[finite] = top.detach(), res.detach()
    return value, residual


def top_algebraic(
    hvp: Callable[[Tensor], Tensor], start: Tensor, iterations: int, tolerance: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Largest (algebraic, not absolute) eigenvalue λ_max per row, and its residual ‖Hv − λ_max v‖/|λ_max|.

    λ_max is the sharpness compared with 2/η. Power iteration finds the eigenvalue of largest magnitude
    λ_1. Where that is negative (a saddle direction steeper than the sharpest valley; seen late in some
    runs), a second pass on the shifted operator H − λ_1 I, whose spectrum is ≥ 0 with top λ_max − λ_1,
    gives λ_max; its residual vector is that of H at λ_max.
    """
    first, _, residual = _power_iteration(hvp, start, iterations, tolerance)
    negative = first < 0
    if negative.any():
        shift = torch.where(negative, first, 0.0).detach()
        second, _, second_residual = _power_iteration(
            lambda v: hvp(v) - shift.unsqueeze(-1) * v, start, iterations, tolerance, shift, ~negative
        )
        first = torch.where(negative, second + shift, first)
        residual = torch.where(negative, second_residual, residual)
    # an exact eigenvector of 0 (H v = 0) has residual 0, not 0/0
    return first, torch.where(residual == 0, 0.0, residual / first.abs())


def probe_run(
    trajectory: xr.Dataset, encoded: xr.Dataset, config: ProbesConfig, device: torch.device | None = None
) -> xr.Dataset:
    """Accuracy at every checkpoint and sharpness at :func:`sharpness_steps` of one run's trajectory.

    Dims (depth, width, seed, time) and the coordinates of ``trajectory``. Sharpness is that of the
    training loss on the first ``sharpness_chorales`` training chorales (all of them if fewer), NaN
    where not measured; every probe is NaN at the checkpoints of a diverged run from its divergence on,
    and the held-out accuracy is NaN without held-out chorales. ``device`` None: ``config.device``,
    recorded in the sharpness attributes (CPU and CUDA values differ by round-off).
    """
    net = _check(trajectory, encoded)
    device = devices.resolve(config.device, "probes.device") if device is None else torch.device(device)
    devices.announce(device)
    layout = model.HeadLayout(net.vocab_sizes)
    train, heldout = model.encode_splits(encoded, layout, F64, device)
    theta, steps = _snapshots(trajectory).to(device), trajectory["step"].values
    nan = theta.new_full((len(theta),), torch.nan)
    values = {
        "accuracy": accuracy(net, theta, train),
        "heldout_accuracy": nan if heldout is None else accuracy(net, theta, heldout),
        "sharpness": nan.clone(),
        "sharpness_residual": nan.clone(),
    }
    probed = np.isin(steps, sharpness_steps(steps, config.sharpness_per_decade))
    index = torch.as_tensor(np.flatnonzero(probed), device=device)
    first = (encoded["split"].values == "train").nonzero()[0][: config.sharpness_chorales]
    tokens, mask = encoded["tokens"].values[first], encoded["mask"].values[first]
    subset = model.encode_batch(tokens, mask, layout, F64, device)  # trimmed to their own length
    values["sharpness"][index], values["sharpness_residual"][index] = sharpness(
        net, theta[index], subset, config.power_iterations, config.power_tolerance
    )
    attrs = asdict(config) | {"sharpness_chorales": len(first)} | devices.attrs(device)  # as used
    return _dataset(trajectory, {k: v.cpu().numpy() for k, v in values.items()}, attrs)


def _snapshots(trajectory: xr.Dataset) -> Tensor:
    """Read the snapshots θ (time, N) in float64; NaN from a diverged run's divergence on."""
    theta = torch.as_tensor(trajectory["theta"].transpose(*RUN_DIMS, "time", "param").values[0, 0, 0])
    alive = np.ones(trajectory.sizes["time"], dtype=bool)
    if trajectory.attrs["status"] == "diverged" and int(trajectory.attrs["diverged_step"]) >= 0:
        alive = trajectory["step"].values < int(trajectory.attrs["diverged_step"])
    return torch.where(torch.as_tensor(alive).unsqueeze(1), theta.to(F64), torch.nan)


def _dataset(trajectory: xr.Dataset, values: dict[str, np.ndarray], sharpness_attrs: dict) -> xr.Dataset:
    """Label the probes (time,) as (depth, width, seed, time) variables with the trajectory's coordinates."""
    coords = {
        name: (trajectory[name].dims, trajectory[name].values, trajectory[name].attrs)
        for name in (*RUN_DIMS, "time", "step")
    }
    data = {}
    for name, (long_name, units) in VARIABLES.items():
        attrs = {"long_name": long_name, "units": units} | (sharpness_attrs if name == "sharpness" else {})
        data[name] = ((*RUN_DIMS, "time"), values[name][None, None, None], attrs)
    return xr.Dataset(data, coords)


def _check(trajectory: xr.Dataset, encoded: xr.Dataset) -> Net:
    """Return the architecture of ``trajectory``; a ``DataError`` names what is missing or inconsistent."""
    missing = [f"dimension '{d}'" for d in (*RUN_DIMS, "time", "param") if d not in trajectory.dims]
    missing += [f"dimension '{d}' of length 1" for d in RUN_DIMS if trajectory.sizes.get(d, 1) != 1]
    missing += [f"variable '{v}'" for v in ("theta", "step") if v not in trajectory]
    missing += [f"attribute '{a}'" for a in TRAJECTORY_ATTRS if a not in trajectory.attrs]
    if missing:
        raise DataError(f"trajectory: no {', no '.join(missing)}; re-create it with rule train_pack")
    absent = [v for v in ENCODED_VARIABLES if v not in encoded.variables]
    if absent:
        raise DataError(
            f"encoded.nc: no variable {absent[0]!r}; re-create it: snakemake results/data/encoded.nc -f"
        )
    depth, width, seed = (int(trajectory[d].item()) for d in RUN_DIMS)
    run, cell = f"d{depth}_w{width}_s{seed}", trajectory.attrs["cell"]
    if cell not in model.CELLS:
        raise DataError(f"trajectory {run}: cell {cell!r} unknown; expected one of {list(model.CELLS)}")
    net = Net(cell, depth, width, tuple(int(v) for v in encoded["vocab_size"].values))
    expected = model.n_parameters(cell, depth, width, net.vocab_sizes)
    if trajectory.sizes["param"] != expected:
        raise DataError(
            f"trajectory {run}: theta has {trajectory.sizes['param']} parameters, but a {cell} net on "
            f"encoded.nc's vocabularies has {expected}; probe it with the encoded.nc it was trained on"
        )
    return net

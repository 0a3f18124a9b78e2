"""The state of S runs trained together by SGD: parameters, minibatch orders, noise and records.

Plain SGD at constant lr (no momentum, no weight decay): a schedule would add its own time scale to
the glassy dynamics under study. The one deviation is an optional per-net global gradient-norm
clip, whose activity is recorded as ``clip_fraction``; the largest gradient norm between two
records is logged whether or not a clip is set (``grad_norm_max``).

At ``temperature`` T > 0 the dynamics is Langevin (Kerr Winter & Janssen): every step adds
sqrt(2 T η / P)·ξ, ξ ~ N(0, I), where P is the number of scored notes of the training set, so that
exp(-P L / T) is stationary and T is in nats per note (see :meth:`Ensemble.update`). Each run draws
its noise from a generator of its own, seeded from its seed, whose state is checkpointed with it.

:class:`Ensemble` holds the mutable state and takes the steps; :mod:`bachglass.train` drives it
(the step loop, records, trajectories) and :mod:`bachglass.resume` saves and restores it.
"""

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bachglass import model, trajectory
from bachglass.ensemble import Corpus, EnsembleEngine, StackedBatch
from bachglass.errors import DataError, ParamsError

CHECK_EVERY = 50  # steps between divergence checks on a GPU (each waits for the queued work)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
RECORDS = tuple(trajectory.VARIABLES)  # recorded at every checkpoint, in this order
SAVED = ("counters", "rng", "noise", "perm", "theta", "n_records")  # a resumable state, less its records
NOISE_TAG = 0x4C414E47  # "LANG": a run's Langevin stream is seeded (seed, tag), apart from init and batches


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml, key for key (see the comments there)."""

    cell: str
    lr: float
    batch_size: int | None
    steps: int
    clip_norm: float | None
    checkpoints_per_decade: int
    resume_every: int
    dtype: str
    device: str
    temperature: float = 0.0  # Langevin T, nats per note; 0: plain (S)GD, no random numbers drawn
    init: str = "pytorch"  # model.INITS: the recurrent weights' initialisation


def resolve(config: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """Device (``auto``: CUDA when present, else CPU) and dtype of a run."""
    if config.init not in model.INITS:
        raise ParamsError(f"train.init: {config.init!r} is not one of {', '.join(model.INITS)}")
    if config.cell not in model.CELLS or config.dtype not in DTYPES:
        raise ParamsError(
            f"train: cell {config.cell!r} or dtype {config.dtype!r} unknown; "
            f"use one of {list(model.CELLS)} and {list(DTYPES)}"
        )
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device: 'cuda' but no CUDA device is available; use auto or cpu")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), DTYPES[config.dtype]
    return torch.device(config.device), DTYPES[config.dtype]


def make_engine(
    cell: str, depth: int, width: int, layout: model.HeadLayout, thetas: torch.Tensor
) -> "EnsembleEngine | _ReferenceStack":
    """Pick the fast batched Elman path for rnn_tanh, the autograd reference (one net at a time) otherwise."""
    if cell == "rnn_tanh":
        return EnsembleEngine(depth, width, layout, thetas)
    return _ReferenceStack(cell, depth, width, layout, thetas)


class _ReferenceStack:
    """:class:`model.ReferenceEngine` for each member in turn, behind the ensemble's interface (GRU, LSTM)."""

    def __init__(
        self, cell: str, depth: int, width: int, layout: model.HeadLayout, theta: torch.Tensor
    ) -> None:
        self.theta, self.grad, self.layout = theta, torch.zeros_like(theta), layout
        self.engines = [model.ReferenceEngine(cell, depth, width, layout, row) for row in theta]

    def _batch(self, batch: StackedBatch, m: int) -> model.Batch:
        """Member ``m``'s batch in the reference layout (time-major one-hots and targets)."""
        m = 0 if batch.shared else m
        n_io = self.layout.n_io
        x = self.theta.new_zeros(batch.inputs.shape[1], n_io + 1).scatter_(1, batch.inputs[m], 1.0)
        offsets = torch.arange(batch.slots.shape[2], device=self.theta.device) * self.layout.n_max
        y = torch.where(batch.weight[m].unsqueeze(1) > 0, batch.slots[m] - offsets, -1)
        rows = (batch.n_batch, batch.n_steps)  # rows are b·T + t
        x, y = x[:, :n_io].view(*rows, -1).transpose(0, 1), y.view(*rows, -1).transpose(0, 1)
        return model.make_batch(x, y, self.layout)

    def loss(self, batch: StackedBatch) -> torch.Tensor:
        """Losses (S,) of ``batch``."""
        return torch.stack([e.loss(self._batch(batch, m)) for m, e in enumerate(self.engines)])

    def loss_grad(self, batch: StackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses (S,) and gradients ``grad`` (S, N)."""
        losses = []
        for m, engine in enumerate(self.engines):
            loss, grad = engine.loss_grad(self._batch(batch, m))
            self.grad[m].copy_(grad)
            losses.append(loss)
        return torch.stack(losses), self.grad


class Data:
    """The training and held-out chorales, and the full-set batches every member shares."""

    def __init__(self, train: model.Batch, heldout: model.Batch | None, layout: model.HeadLayout) -> None:
        self.train = Corpus(train, layout)
        self.full = self.train.select(self.train.all)
        # P: the loss is the mean over these (each voice of each scored chord is one note)
        self.n_scored_notes = int(self.train.scored.sum().item()) * self.train.slots.shape[2]
        self.heldout = (
            None
            if heldout is None
            else Corpus(heldout, layout).select(
                torch.arange(heldout.y.shape[1], device=heldout.y.device).unsqueeze(0)
            )
        )


def noise_generator(seed: int, device: torch.device) -> torch.Generator:
    """Return run ``seed``'s Langevin noise generator on ``device``: its own stream, whatever its pack.

    Seeded from (seed, :data:`NOISE_TAG`), not from the seed alone, which already seeds the init
    (a torch generator too) and the batch order. On CUDA it is a device (Philox) generator: drawing
    on the host would need a host-to-device copy, and so a wait for the GPU, at every step.
    """
    key = int(np.random.SeedSequence([seed, NOISE_TAG]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(key)


@dataclass(frozen=True)
class Start:
    """Where restarted runs begin: each run's parameters, its minibatch stream and what it continues."""

    theta: list[np.ndarray]  # per run, flat (N,)
    stream: int  # minibatch orders are seeded (seed, stream): apart from the continued runs' own
    origin: str  # the run and step continued, for the identity (a checkpoint resumes only its restart)


class Member:
    """What is one run's own in an ensemble: minibatch order, Langevin noise and its records."""

    def __init__(
        self, seed: int, n_train: int, noise: torch.Generator | None, stream: int | None = None
    ) -> None:
        # minibatch order; init uses its own torch generator
        self.rng = np.random.default_rng(seed if stream is None else [seed, stream])
        self.noise = noise  # Langevin noise (None at temperature 0)
        # the current epoch's permutation and position in it (exhausted: draw one at the first step)
        self.perm, self.pos, self.diverged_step = np.arange(0), n_train, -1
        self.records: dict[str, list[Any]] = {key: [] for key in RECORDS}
        self.saved: dict[str, Any] | None = None  # the state of the last save, without its records

    def next_indices(self, n_train: int, batch_size: int) -> np.ndarray:
        """Return the chorales of this run's next minibatch: the next slice of its shuffled epoch."""
        if self.pos >= n_train:
            self.perm, self.pos = self.rng.permutation(n_train), 0
        idx = self.perm[self.pos : self.pos + batch_size]
        self.pos += len(idx)
        return idx


class Ensemble:
    """The mutable state of S runs trained together: engine (θ), members, clip counters."""

    def __init__(
        self,
        engine: "EnsembleEngine | _ReferenceStack",
        data: Data,
        config: TrainConfig,
        seeds: list[int],
        stream: int | None = None,
    ) -> None:
        self.engine, self.data, self.config = engine, data, config
        self.n_train = data.train.n_chorales
        self.batch_size = min(config.batch_size or self.n_train, self.n_train)
        self.full_batch = self.batch_size == self.n_train
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        theta = engine.theta
        self.n_scored_notes = data.n_scored_notes
        self.noise_scale, self.noise = 0.0, None  # Langevin: θ += noise_scale·ξ after each step
        if config.temperature > 0:
            if self.n_scored_notes == 0:
                raise DataError("encoded.nc: no scored note in the training chorales; re-create it")
            self.noise_scale = math.sqrt(2 * config.temperature * config.lr / self.n_scored_notes)
            self.noise = torch.empty_like(theta)  # (S, N) this step's ξ
        self.members = [
            Member(
                seed,
                self.n_train,
                None if self.noise is None else noise_generator(seed, theta.device),
                stream,
            )
            for seed in seeds
        ]
        self.seeds = list(seeds)
        self.clipped = theta.new_zeros(len(seeds))  # clipped steps since the last record, per run
        self.grad_max = theta.new_zeros(len(seeds))  # largest gradient norm since the last record, per run
        self.active = theta.new_ones(len(seeds))  # 0 once a run has diverged: its θ is frozen
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, losses) not yet checked (GPU)
        self.step, self.last_record, self.n_stopped = 0, 0, 0
        self.record_seconds = 0.0  # time spent on checkpoint records (losses, snapshots)

    def next_batch(self) -> StackedBatch:
        """Return this step's batch: the full training set, or each run's next minibatch."""
        if self.full_batch:
            return self.data.full
        idx = np.stack([m.next_indices(self.n_train, self.batch_size) for m in self.members])
        return self.data.train.select(torch.as_tensor(idx, device=self.engine.theta.device))

    def watch(self, losses: torch.Tensor, step: int) -> None:
        """Check this step's ``losses`` for divergence: now on CPU, in batches on a GPU.

        Reading a value back from a GPU waits for all queued work, so there the losses of
        ``CHECK_EVERY`` steps are checked together (and before any record or save): a run that
        diverged goes on for a few steps in NaN, on its own, and is then stopped at its first
        non-finite step as if checked at once.
        """
        self.pending.append((step, losses))
        if len(self.pending) >= (1 if losses.device.type == "cpu" else CHECK_EVERY):
            self.flush()

    def flush(self) -> None:
        """Stop every run whose loss became non-finite in the steps not checked yet."""
        pending, self.pending = self.pending, []
        if pending and not bool(torch.isfinite(torch.stack([losses for _, losses in pending])).all()):
            for step, losses in pending:
                self.diverge(losses, step)

    def diverge(self, losses: torch.Tensor, step: int) -> None:
        """Stop the runs whose ``losses`` (S,) are not finite at ``step``: freeze θ (at 0) for good."""
        for m in torch.nonzero(~torch.isfinite(losses) & (self.active > 0)).flatten().tolist():
            self.members[m].diverged_step = step
            self.active[m] = 0
            self.n_stopped += 1
            self.engine.theta[m].zero_()  # a finite stand-in, so NaN never reaches a shared op

    def record(self, step: int, losses: torch.Tensor | None) -> None:
        """Snapshot θ_step and its losses for every live run; stop the runs whose loss is not finite.

        ``losses`` are this step's full-batch training losses when the step already computed them.
        """
        start = time.perf_counter()
        self.flush()
        losses = self.engine.loss(self.data.full) if losses is None else losses
        self.diverge(losses, step)
        heldout = None if self.data.heldout is None else self.engine.loss(self.data.heldout).tolist()
        since = max(step - self.last_record, 1)
        thetas = self.engine.theta.to(device="cpu", dtype=torch.float32, copy=True).numpy()
        clipped, grad_max = self.clipped.tolist(), self.grad_max.tolist()
        for m, member in enumerate(self.members):
            if member.diverged_step >= 0:
                continue
            values = (
                losses[m].item(),
                math.nan if heldout is None else heldout[m],
                clipped[m] / since,
                grad_max[m] if step > self.last_record else math.nan,  # step 0: no step taken yet
                thetas[m],
            )
            for key, value in zip(RECORDS, values, strict=True):
                member.records[key].append(value)
        self.clipped.zero_()
        self.grad_max.zero_()
        self.last_record = step
        self.record_seconds += time.perf_counter() - start

    def sgd_step(self, record: bool) -> torch.Tensor:
        """Take SGD step ``self.step`` for every live run (recording θ before it first); return the losses.

        The losses (S,) are of this step's batches, at θ before the update.
        """
        losses, grad = self.engine.loss_grad(self.next_batch())
        self.watch(losses, self.step)  # a run whose batch loss is not finite records nothing more
        if record:
            self.record(self.step, losses if self.full_batch else None)
        self.update(grad)
        return losses

    def update(self, grad: torch.Tensor) -> None:
        """One SGD step θ ← θ - lr·g per run, with g rescaled to norm ``clip_norm`` when longer.

        At temperature T > 0, then θ ← θ + sqrt(2 T lr / P)·ξ (:meth:`add_noise`). With minibatches
        the same noise is added to the minibatch gradient step (stochastic-gradient Langevin, Welling
        & Teh 2011): P stays the training set's, whose mean loss the minibatch gradient estimates,
        and the minibatch noise comes on top (the stationary state is then only approximately
        exp(-P L / T)).
        """
        clip = self.config.clip_norm
        norm = torch.linalg.vector_norm(grad, dim=1)
        torch.fmax(self.grad_max, norm, out=self.grad_max)  # logged whether or not a clip acts
        if clip is not None:
            self.clipped.add_(norm > clip)
            grad.mul_((clip / norm).clamp_(max=1.0).unsqueeze(1))
        if self.n_stopped:  # NaN·0 is NaN: a diverged run's gradient is dropped, not scaled
            grad.masked_fill_(self.active.unsqueeze(1) == 0, 0.0)
        self.engine.theta.add_(grad, alpha=-self.config.lr)
        self.add_noise()

    def add_noise(self) -> None:
        """θ ← θ + sqrt(2 T lr / P)·ξ per run, ξ ~ N(0, I) from the run's own generator (T > 0 only).

        The stationary density of this Langevin step is exp(-P L / T), L the mean loss per note and
        P the number of scored training notes, so T is in nats per note. Row m of ξ comes from run
        m's generator alone, so a run's noise does not depend on its pack; a diverged run's θ stays 0.
        At T = 0 nothing is drawn, so plain (S)GD is bitwise what it was without this step.
        """
        noise = self.noise
        if noise is None:
            return
        for row, member in zip(noise, self.members, strict=True):
            row.normal_(generator=member.noise)  # (N,) on θ's device
        if self.n_stopped:
            noise.mul_(self.active.unsqueeze(1))
        self.engine.theta.add_(noise, alpha=self.noise_scale)

    def state(self, m: int, identity: dict[str, Any]) -> dict[str, Any]:
        """All run ``m``'s resume needs, as tensors and plain Python types (loadable with weights_only).

        It carries the state of the save before too (``previous``, records as a count: they are a
        prefix of these), so that a run saved one step ahead of its pack can rejoin it (:func:`_align`).
        """
        member = self.members[m]
        snapshots = member.records["theta"]
        clipped, grad_max = int(self.clipped[m].item()), float(self.grad_max[m].item())
        now = {
            "counters": [self.step, member.pos, clipped, self.last_record, member.diverged_step, grad_max],
            "rng": member.rng.bit_generator.state,
            "noise": None if member.noise is None else member.noise.get_state(),  # uint8, on the CPU
            "perm": torch.as_tensor(member.perm).clone(),
            "theta": self.engine.theta[m].cpu().clone(),
            "n_records": len(member.records["loss"]),
        }
        previous, member.saved = member.saved, now
        return now | {
            "identity": identity,
            "records": {key: member.records[key] for key in RECORDS[:-1]},
            "snapshots": torch.as_tensor(np.array(snapshots)) if snapshots else None,
            "previous": previous,
            "pack": self.seeds,
        }

    def restore(self, states: list[dict[str, Any]]) -> None:
        """Continue every run from its saved state (all at the same step)."""
        for m, (member, state) in enumerate(zip(self.members, states, strict=True)):
            self.step, member.pos, clipped, self.last_record, member.diverged_step, grad_max = state[
                "counters"
            ]
            self.clipped[m], self.grad_max[m] = clipped, grad_max
            member.rng.bit_generator.state = state["rng"]
            if member.noise is not None:  # the identity holds the temperature: None only at T = 0
                member.noise.set_state(state["noise"])
            member.perm = state["perm"].numpy()
            self.engine.theta[m].copy_(state["theta"])
            if member.diverged_step >= 0:
                self.active[m] = 0
                self.n_stopped += 1
            member.records = {key: list(state["records"][key]) for key in RECORDS[:-1]}
            snapshots = state["snapshots"]
            member.records["theta"] = [] if snapshots is None else list(snapshots.numpy())
            member.saved = {key: state[key] for key in SAVED}

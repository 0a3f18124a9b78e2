"""The state of the runs of one seed pack in training, and the step that moves it.

:class:`PackState` holds what S runs trained together share and own: the engine with their
parameters θ (:class:`bachglass.ensemble.BatchedElman`, or :class:`ReferenceEngines` for GRU and
LSTM), each run's minibatch order, divergence and records (:class:`Member`), and the update rule
with its per-run state (:class:`bachglass.sgd.SGD`). It takes a step, records a checkpoint, and
gives each run's resumable state; :mod:`bachglass.train` drives it, :mod:`bachglass.resume` saves it.
"""

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bachglass import model, sgd, trajectory
from bachglass.ensemble import BatchedElman, Corpus, StackedBatch
from bachglass.sgd import TrainConfig

CHECK_EVERY = 50  # steps between divergence checks on a GPU (each waits for the queued work)
RECORDS = tuple(trajectory.VARIABLES)  # recorded at every checkpoint, in this order
SAVED = ("counters", "rng", "optimizer", "perm", "theta", "n_records")  # a resumable state, less its records


def make_engine(
    cell: str, depth: int, width: int, layout: model.HeadLayout, thetas: torch.Tensor
) -> "BatchedElman | ReferenceEngines":
    """Pick the fast batched Elman path for rnn_tanh, the autograd reference (one net at a time) otherwise."""
    if cell == "rnn_tanh":
        return BatchedElman(depth, width, layout, thetas)
    return ReferenceEngines(cell, depth, width, layout, thetas)


class ReferenceEngines:
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


@dataclass(frozen=True)
class Start:
    """Where restarted runs begin: each run's parameters, its minibatch stream and what it continues."""

    theta: list[np.ndarray]  # per run, flat (N,)
    stream: int  # minibatch orders are seeded (seed, stream): apart from the continued runs' own
    origin: str  # the run and step continued, for the identity (a checkpoint resumes only its restart)


class Member:
    """What is one run's own in a pack besides θ and its update rule's state: batches, divergence, records."""

    def __init__(self, seed: int, n_train: int, stream: int | None = None) -> None:
        # minibatch order; init uses its own torch generator
        self.rng = np.random.default_rng(seed if stream is None else [seed, stream])
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


class PackState:
    """The mutable state of the S runs of a pack trained together: engine (θ), members, update rule.

    It takes the steps (:meth:`sgd_step`), records the checkpoints and saves and restores each run.
    """

    def __init__(
        self,
        engine: "BatchedElman | ReferenceEngines",
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
        self.optimizer = sgd.SGD(config, theta, seeds, self.n_scored_notes)
        self.members = [Member(seed, self.n_train, stream) for seed in seeds]
        self.seeds = list(seeds)
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
        clipped, grad_max = self.optimizer.clipped.tolist(), self.optimizer.grad_max.tolist()
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
        self.optimizer.reset_counters()
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
        """One step of the update rule (:meth:`bachglass.sgd.SGD.step`) for every live run."""
        self.optimizer.step(self.engine.theta, grad, self.active, self.n_stopped)

    def state(self, m: int, identity: dict[str, Any]) -> dict[str, Any]:
        """All run ``m``'s resume needs, as tensors and plain Python types (loadable with weights_only).

        It carries the state of the save before too (``previous``, records as a count: they are a
        prefix of these), so that a run saved one step ahead of its pack can rejoin it
        (:func:`bachglass.resume.align`). The update rule's state is one entry, ``optimizer``.
        """
        member = self.members[m]
        snapshots = member.records["theta"]
        now = {
            "counters": [self.step, member.pos, self.last_record, member.diverged_step],
            "rng": member.rng.bit_generator.state,
            "optimizer": self.optimizer.state_dict(m),
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
            self.step, member.pos, self.last_record, member.diverged_step = state["counters"]
            member.rng.bit_generator.state = state["rng"]
            self.optimizer.load_state_dict(m, state["optimizer"])
            member.perm = state["perm"].numpy()
            self.engine.theta[m].copy_(state["theta"])
            if member.diverged_step >= 0:
                self.active[m] = 0
                self.n_stopped += 1
            member.records = {key: list(state["records"][key]) for key in RECORDS[:-1]}
            snapshots = state["snapshots"]
            member.records["theta"] = [] if snapshots is None else list(snapshots.numpy())
            member.saved = {key: state[key] for key in SAVED}

"""SGD training of one (depth, width, seed) network, with log-spaced snapshots, resume and divergence.

Plain SGD at constant lr (no momentum, no weight decay): a schedule would add its own time scale to
the glassy dynamics under study. The one deviation is an optional per-net global gradient-norm
clip, whose activity is recorded as ``clip_fraction`` (unclipped, d = 1 blows up: docs/stability.md).

At ``temperature`` T > 0 the dynamics is Langevin (Kerr Winter & Janssen): every step adds
sqrt(2 T η / P)·ξ, ξ ~ N(0, I), where P is the number of scored notes of the training set, so that
exp(-P L / T) is stationary and T is in nats per note (see :meth:`Ensemble.update`). Each run draws
its noise from a generator of its own, seeded from its seed, whose state is checkpointed with it.

A checkpoint at step k records the parameters θ_k *before* update k (k = 0 is the initial state,
k = steps the final one) and the full training-set loss L(θ_k). The resumable state is written
every ``resume_every`` steps to the ``checkpoint`` file; the caller deletes it
(:func:`remove_checkpoint`) once the trajectory is safely written. SIGTERM (SLURM preemption, time
limit, scancel) and SIGINT (Ctrl-C) save it at the next step boundary and then stop the process
(exit status 143, resp. KeyboardInterrupt), so no step is lost. A SIGKILL loses the steps
since the last save; a kill while a checkpoint is written leaves the previous one intact.
"""

import contextlib
import hashlib
import json
import logging
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from bachglass import io, model
from bachglass.ensemble import Corpus, EnsembleEngine, StackedBatch
from bachglass.errors import DataError, ParamsError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHECK_EVERY = 50  # steps between divergence checks on a GPU (each waits for the queued work)
MODULES = ("model", "ensemble", "train")  # code whose hash goes into the provenance
ENCODED_VARIABLES = ("tokens", "mask", "vocab_size", "split")  # what train_run reads of encoded.nc
DTYPES = {"float32": torch.float32, "float64": torch.float64}
VARIABLES = {  # name: (long_name, units)
    "loss": ("training cross-entropy (full training set)", "nat per note"),
    "heldout_loss": ("held-out cross-entropy", "nat per note"),
    "clip_fraction": ("fraction of the steps since the previous checkpoint that were clipped", "1"),
    "grad_norm_max": (
        "largest gradient norm (before any clip) of the steps since the previous checkpoint",
        "1",
    ),
    "theta": ("parameter snapshot, flattened in model.param_specs order", "1"),
}
RECORDS = tuple(VARIABLES)  # recorded at every checkpoint, in this order
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
    pack: int = 1
    temperature: float = 0.0  # Langevin T, nats per note; 0: plain (S)GD, no random numbers drawn


def checkpoint_steps(steps: int, per_decade: int) -> np.ndarray:
    """Return the snapshot grid: 0, round(10^(k/per_decade)) for k = 0, 1, ..., and ``steps``.

    Log-spaced because aging needs many waiting times per decade; anchored at the powers of ten so
    that runs of different length share their grid. Early on, rounding merges points, so the grid
    holds every step up to ~per_decade/ln 10. Depends only on its arguments (identical across runs).
    """
    k = np.arange(math.floor(per_decade * math.log10(steps) + 1e-9) + 1)
    grid = np.rint(10.0 ** (k / per_decade))
    return np.unique(np.concatenate([[0], grid[grid <= steps], [steps]])).astype(np.int64)


def remove_checkpoint(path: str | Path) -> None:
    """Delete a run's resumable checkpoint, and any half-written one, once its trajectory is written."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Catch SIGTERM and SIGINT for the block: the list it yields receives their numbers.

    Outside the main thread (where Python cannot install handlers) nothing is caught.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_run(
    encoded: xr.Dataset,
    depth: int,
    width: int,
    seed: int,
    config: TrainConfig,
    checkpoint: Path | None,
    progress: bool = True,
) -> xr.Dataset:
    """Train one network from its seed and return its trajectory: :func:`train_runs` of one seed."""
    return train_runs(encoded, depth, width, [seed], config, [checkpoint], progress)[0]


def train_runs(
    encoded: xr.Dataset,
    depth: int,
    width: int,
    seeds: list[int],
    config: TrainConfig,
    checkpoints: list[Path | None] | None = None,
    progress: bool = True,
    start: "Start | None" = None,
) -> list[xr.Dataset]:
    """Train the networks ``seeds`` of one (depth, width) as one batched ensemble; one trajectory each.

    ``start`` continues other runs instead of starting from the seeds' initialisation (a restart at
    another learning rate): each run from its parameters ``start.theta[k]``, with a minibatch order
    of its own (seeded by its seed and ``start.stream``), and ``start.origin`` in its identity.

    Each run keeps its own parameters, minibatch order, clipping and divergence, so its trajectory
    is that of training it alone up to floating-point round-off (docs/science.md Conventions).
    Runs resume from their ``checkpoints`` files where those exist; runs whose checkpoints stand
    at different steps, or were saved by different ensembles, train as separate ensembles, so no
    finished step is lost and a resumed run ends bitwise as it would have uninterrupted. A non-finite loss
    does not raise: that run stops, is marked ``status="diverged"`` and keeps the snapshots taken
    before (later ones are NaN); the others go on.
    """
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ParamsError(f"train_runs: seeds {seeds} must be distinct and at least one")
    if not config.temperature >= 0:  # NaN too
        raise ParamsError(f"train.temperature: {config.temperature} is not >= 0; use 0 (no noise) or more")
    checkpoints = [None] * len(seeds) if checkpoints is None else checkpoints
    device, dtype = _resolve(config)
    layout = model.HeadLayout(tuple(int(v) for v in encoded["vocab_size"].values))
    train, heldout = model.encode_splits(encoded, layout, dtype, device)
    specs = model.param_specs(config.cell, depth, width, layout.vocab_sizes)
    identities = run_identities(encoded, depth, width, seeds, config)
    if start is not None:
        identities = [identity | {"origin": start.origin} for identity in identities]
    states = [
        _load(Path(path), identity) if path is not None and Path(path).exists() else None
        for path, identity in zip(checkpoints, identities, strict=True)
    ]
    states = _align(states, checkpoints, seeds)
    for path, state in zip(checkpoints, states, strict=True):
        if state is not None:
            log.info("%s: resuming at step %d", path, state["counters"][0])
    # runs train together that resume at the same step from the same ensemble (or start fresh): the
    # round-off of a batched step depends on who is in the batch, so this keeps a resumed run bitwise
    cohorts: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for k, state in enumerate(states):
        key = (0, ()) if state is None else (state["counters"][0], tuple(state["pack"]))
        cohorts.setdefault(key, []).append(k)
    grid = checkpoint_steps(config.steps, config.checkpoints_per_decade)
    data = Data(train, heldout, layout)
    trajectories: list[xr.Dataset | None] = [None] * len(seeds)
    with stop_signals() as received:  # SIGTERM/SIGINT: save at the next step of the cohort at work, stop
        for members in cohorts.values():
            if start is None:
                thetas = torch.stack(
                    [model.init_theta(specs, width, seeds[k], dtype, device) for k in members]
                )
            else:
                thetas = torch.stack(
                    [torch.as_tensor(start.theta[k], dtype=dtype, device=device) for k in members]
                )
            cohort = [seeds[k] for k in members]
            engine = make_engine(config.cell, depth, width, layout, thetas)
            ens = Ensemble(engine, data, config, cohort, stream=None if start is None else start.stream)
            if states[members[0]] is not None:
                ens.restore([states[k] for k in members])
            paths = [checkpoints[k] for k in members]
            name = f"d{depth}_w{width}_s" + ",".join(map(str, cohort))
            _train(ens, grid, paths, [identities[k] for k in members], name, progress, received)
            floor = float(encoded.attrs["data_floor"])
            for m, k in enumerate(members):
                trajectories[k] = _trajectory(ens, m, grid, specs, identities[k], str(device), floor)
    return trajectories  # type: ignore[return-value]


def run_identities(
    encoded: xr.Dataset, depth: int, width: int, seeds: list[int], config: TrainConfig
) -> list[dict[str, Any]]:
    """Return what determines each run's result: its params, data, code, torch build and device.

    A checkpoint resumes only a run of the same identity. ``pack`` is left out: packing changes
    round-off only, and a run interrupted in one pack may resume in another.
    """
    device, _ = _resolve(config)
    base = {k: v for k, v in asdict(config).items() if k != "pack"} | {"depth": depth, "width": width}
    base |= {"data_sha256": _data_sha256(encoded), "code_sha256": io.code_sha256(MODULES)}
    base |= {"torch": str(torch.__version__), "device_used": str(device)}
    return [base | {"seed": seed} for seed in seeds]


def train_pack(
    encoded: xr.Dataset,
    depth: int,
    width: int,
    seeds: list[int],
    config: TrainConfig,
    runs: list[Path],
    wanted: list[Path],
    cache: Path | None,
) -> bool:
    """Train the pack ``seeds`` (trajectory files ``runs``) and write the ``wanted`` ones; True if cached.

    A job writes what its rule declares: every run of the pack (Snakemake), or its own run only
    (``dvc repro``, whose stages are per run). There the first job of a pack trains all of it and
    puts the other runs' trajectories in ``cache``, named by a key of everything that determines
    their bytes (identity, pack, provenance), and the next jobs take them from there instead of
    training again. A key never matches a stale file; older entries of a run are removed.
    """
    identities = run_identities(encoded, depth, width, seeds, config)
    entries = {}
    for seed, run, identity in zip(seeds, runs, identities, strict=True):
        params = {"train": asdict(config), "depth": depth, "width": width, "seed": seed}
        what = {"identity": identity, "pack": seeds, "provenance": io.provenance(params, MODULES)}
        key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
        if cache is not None:
            entries[run] = cache / f"{run.parent.parent.name}-{run.parent.name}.{key}.nc"
    if entries and all(entries[run].exists() for run in wanted):
        for run in wanted:
            with io.atomic_path(run) as tmp:
                shutil.move(entries[run], tmp)
        log.info(
            "d%d_w%d seeds %s: taken from %s (trained with the pack %s), not trained",
            depth,
            width,
            [seeds[runs.index(r)] for r in wanted],
            cache,
            seeds,
        )
        return True
    checkpoints = [io.checkpoint_path(run) for run in runs]
    trajectories = train_runs(encoded, depth, width, seeds, config, checkpoints)
    for run, trajectory in zip(runs, trajectories, strict=True):
        if run in wanted:
            io.write_netcdf(trajectory, run)
        elif run in entries:
            for old in entries[run].parent.glob(entries[run].name.split(".")[0] + ".*.nc"):
                old.unlink(missing_ok=True)
            io.write_netcdf(trajectory, entries[run])
    for checkpoint in checkpoints:  # only once every trajectory is safely written
        remove_checkpoint(checkpoint)
    return False


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


class _Member:
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
            _Member(
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


def _train(
    ens: Ensemble,
    grid: np.ndarray,
    checkpoints: list[Path | None],
    identities: list[dict[str, Any]],
    name: str,
    progress: bool,
    received: list[int],
) -> None:
    """Run the ensemble's SGD steps to the end, with a progress bar and divergence warnings.

    ``received`` collects the stop signals (:func:`stop_signals`): the run saves and stops on one.
    """
    config = ens.config
    _log_temperature(ens, name)
    # in a log file (no terminal) a bar redrawn 10 times a second would bloat it: redraw every 30 s
    interval = 0.1 if sys.stderr.isatty() else 30.0
    bar = tqdm(
        total=config.steps,
        initial=ens.step,
        desc=name,
        file=sys.stderr,
        disable=not progress,
        mininterval=interval,
        maxinterval=max(interval, 10.0),
    )
    start, first = time.perf_counter(), ens.step
    with bar:
        _loop(ens, grid, checkpoints, identities, bar, received)
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d steps x %d runs in %.1f s (%.0f model-steps/s); checkpoint records took %.2f s (%.2f %%)",
        *(name, ens.step - first, len(ens.members), seconds, (ens.step - first) * len(ens.members) / seconds),
        *(ens.record_seconds, 100 * ens.record_seconds / seconds),
    )
    for member, identity in zip(ens.members, identities, strict=True):
        if member.diverged_step >= 0:
            k = member.diverged_step
            log.warning(
                "d%d_w%d_s%d: loss became non-finite at step %d (epoch %g); lower train.lr (now %g) or "
                "clip harder; the %d checkpoints before it are kept",
                *(identity["depth"], identity["width"], identity["seed"], k, k / ens.steps_per_epoch),
                *(config.lr, len(member.records["loss"])),
            )


def _log_temperature(ens: Ensemble, name: str) -> None:
    """Log the Langevin temperature and the noise it adds per step (or that there is none)."""
    config = ens.config
    if ens.noise is None:
        log.info("%s: temperature 0, plain (S)GD without noise", name)
        return
    log.info(
        "%s: Langevin temperature T = %g nats per note: θ += %.4g·ξ per step, = sqrt(2 T lr / P) with "
        "lr = %g and P = %d scored training notes",
        *(name, config.temperature, ens.noise_scale, config.lr, ens.n_scored_notes),
    )


def _loop(
    ens: Ensemble,
    grid: np.ndarray,
    checkpoints: list[Path | None],
    identities: list[dict[str, Any]],
    bar: tqdm,
    received: list[int],
) -> None:
    """SGD steps from ``ens.step`` to the end: save, record, update, in that order per step.

    On a signal in ``received`` the state is saved at the next step boundary and the process stops.
    """
    steps, start, record_at = ens.config.steps, ens.step, set(grid.tolist())
    saving = [(path, m) for m, path in enumerate(checkpoints) if path is not None]
    for step in range(start, steps + 1):
        ens.step = step
        if received and step < steps:
            _stop(ens, saving, identities, received[0])
        if saving and start < step < steps and step % ens.config.resume_every == 0:
            _save(ens, saving, identities)
        if step == steps:  # the final state: evaluate, no update
            ens.record(step, None)
            return
        losses = ens.sgd_step(record=step in record_at)
        if step % 100 == 0:
            live = losses[ens.active > 0]
            shown = f"{live.median().item():.4g}" if live.numel() else "nan"
            bar.set_postfix(loss=shown, refresh=False)  # this step's (mini)batch loss, median of runs
        if ens.n_stopped == len(ens.members):
            return
        bar.update()


def _save(ens: Ensemble, saving: list[tuple[Path, int]], identities: list[dict[str, Any]]) -> None:
    """Write every run's resumable state at ``ens.step``, each file atomically."""
    ens.flush()
    for path, m in saving:
        with io.atomic_path(path) as tmp:
            torch.save(ens.state(m, identities[m]), tmp)
    log.info("step %d of %d: resumable state saved", ens.step, ens.config.steps)


def _stop(
    ens: Ensemble, saving: list[tuple[Path, int]], identities: list[dict[str, Any]], signum: int
) -> None:
    """Save the state (when there is a checkpoint file) and stop as the signal ``signum`` asks."""
    name = signal.Signals(signum).name
    if saving:
        _save(ens, saving, identities)
    log.warning(
        "%s at step %d of %d: %s; run the step again to resume",
        *(name, ens.step, ens.config.steps),
        "resumable state saved" if saving else "no checkpoint file given, nothing saved",
    )
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _align(
    states: list[dict[str, Any] | None], paths: list[Path | None], seeds: list[int]
) -> list[dict[str, Any] | None]:
    """Step back the runs of a cohort saved one save ahead of the rest, so that it trains as one again.

    A cohort's runs are saved one file after the other; a kill in between leaves some a save ahead.
    Resumed apart they would differ from an uninterrupted run by round-off; from the state of the
    save before, which their checkpoint carries (none before the first: start over), they rejoin
    their cohort-mates and resume bitwise. Runs saved in other cohorts, or further apart, stay apart.
    A state at step 0 is the seeded initial state itself, so it counts as none.
    """
    states = [None if state is None or state["counters"][0] == 0 else state for state in states]
    step = {
        seed: 0 if state is None else state["counters"][0] for seed, state in zip(seeds, states, strict=True)
    }
    aligned = []
    for state, path in zip(states, paths, strict=True):
        if state is not None:
            start = min(step.get(mate, state["counters"][0]) for mate in state["pack"])
            previous = state["previous"]
            if state["counters"][0] > start and previous is None and start == 0:
                log.info("%s: starts over with the rest of its pack", path)
                state = None
            elif state["counters"][0] > start and previous is not None and previous["counters"][0] == start:
                log.info("%s: back to step %d, where the rest of its pack resumes", path, start)
                n, snapshots = previous["n_records"], state["snapshots"]
                records = {key: values[:n] for key, values in state["records"].items()}
                state = state | previous | {"records": records, "snapshots": snapshots[:n] if n else None}
                state["previous"] = None
        aligned.append(state)
    return aligned


def _load(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a resumable state; refuse one written for another run (or by other code) or unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = dict(state["identity"])
    except Exception as err:  # torch.load raises many kinds for a damaged file
        raise DataError(f"{path}: unreadable checkpoint ({err}); delete it to start over") from err
    differ = sorted(k for k in identity.keys() | stored.keys() if stored.get(k) != identity.get(k))
    if differ:
        was = ", ".join(f"{k}={stored.get(k)!r} (now {identity.get(k)!r})" for k in differ)
        raise ParamsError(f"{path}: checkpoint of a different run: {was}; delete it to start over")
    missing = {*SAVED, "records", "snapshots", "previous", "pack"} - state.keys()
    if missing:
        raise DataError(f"{path}: checkpoint without {sorted(missing)}; delete it to start over")
    return state


def _resolve(config: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """Device (``auto``: CUDA when present, else CPU) and dtype of a run."""
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


def _data_sha256(encoded: xr.Dataset) -> str:
    """Fingerprint of the training data, so a checkpoint of other data is never resumed."""
    digest = hashlib.sha256(np.ascontiguousarray(encoded["tokens"].values).tobytes())
    digest.update(np.ascontiguousarray(encoded["mask"].values).tobytes())
    digest.update("\n".join(map(str, encoded["split"].values)).encode())
    return digest.hexdigest()


def _trajectory(
    ens: Ensemble,
    m: int,
    grid: np.ndarray,
    specs: list[model.ParamSpec],
    identity: dict[str, Any],
    device: str,
    data_floor: float,
) -> xr.Dataset:
    """Assemble the contract's trajectory Dataset; checkpoints not reached (divergence) are NaN."""
    member = ens.members[m]
    n_params, n_done = sum(s.size for s in specs), len(member.records["loss"])
    data_vars = {}
    for key, (long_name, units) in VARIABLES.items():
        dims = ("depth", "width", "seed", "time") + (("param",) if key == "theta" else ())
        dtype = np.float32 if key == "theta" else np.float64
        values = np.full((len(grid), n_params) if key == "theta" else len(grid), np.nan, dtype)
        if n_done:
            values[:n_done] = np.asarray(member.records[key])
        data_vars[key] = (dims, values[None, None, None], {"long_name": long_name, "units": units})
    coords = {
        **{key: [identity[key]] for key in ("depth", "width", "seed")},
        "time": ("time", grid / ens.steps_per_epoch, {"units": "epoch", "long_name": "training time"}),
        "step": ("time", grid, {"units": "SGD steps", "long_name": "SGD step"}),
        "group": ("param", model.param_groups(specs), {"long_name": "parameter group"}),
    }
    attrs = {
        "cell": ens.config.cell,
        "lr": float(ens.config.lr),
        "batch_size": int(ens.batch_size),  # chorales per step; = n_train for full batch
        "clip_norm": "none" if ens.config.clip_norm is None else float(ens.config.clip_norm),
        "steps": int(ens.config.steps),
        "checkpoints_per_decade": int(ens.config.checkpoints_per_decade),
        "dtype": ens.config.dtype,
        "n_parameters": int(n_params),
        "data_floor": data_floor,
        "device": device,
        "status": "diverged" if member.diverged_step >= 0 else "completed",
        "diverged_step": int(member.diverged_step),
        "temperature": float(ens.config.temperature),  # Langevin T, nats per note (0: plain (S)GD)
        "n_scored_notes": int(ens.n_scored_notes),  # P, the training notes the loss is the mean over
        "ensemble_size": len(ens.members),  # runs trained with it as one batched model (round-off only)
    }
    params = {"train": asdict(ens.config), **{k: identity[k] for k in ("depth", "width", "seed")}}
    if "origin" in identity:  # a restart: what it continues
        attrs["origin"] = params["origin"] = identity["origin"]
    return xr.Dataset(data_vars, coords, attrs | io.provenance(params, MODULES))

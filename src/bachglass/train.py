"""SGD training of one (depth, width, seed) network, with log-spaced snapshots, resume and divergence.

Plain SGD at constant lr (no momentum, no weight decay): a schedule would add its own time scale to
the glassy dynamics under study. The one deviation is an optional per-net global gradient-norm
clip, whose activity is recorded as ``clip_fraction`` (feasibility: unclipped runs blow up at lr 0.5).

A checkpoint at step k records the parameters θ_k *before* update k (k = 0 is the initial state,
k = steps the final one) and the full training-set loss L(θ_k). The resumable state is written
every ``resume_every`` steps to the ``checkpoint`` file; the caller deletes it
(:func:`remove_checkpoint`) once the trajectory is safely written.
"""

import hashlib
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from bachglass import io, model
from bachglass.elman import ElmanEngine
from bachglass.errors import DataError, ParamsError

log = logging.getLogger(__name__)

MODULES = ("model", "elman", "train")  # code whose hash goes into the provenance
ENCODED_VARIABLES = ("tokens", "mask", "vocab_size", "split")  # what train_run reads of encoded.nc
DTYPES = {"float32": torch.float32, "float64": torch.float64}
VARIABLES = {  # name: (long_name, units)
    "loss": ("training cross-entropy (full training set)", "nat per note"),
    "heldout_loss": ("held-out cross-entropy", "nat per note"),
    "clip_fraction": ("fraction of the steps since the previous checkpoint that were clipped", "1"),
    "theta": ("parameter snapshot, flattened in model.param_specs order", "1"),
}
RECORDS = tuple(VARIABLES)  # recorded at every checkpoint, in this order


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
    """Delete a run's resumable checkpoint, once its trajectory has been written."""
    Path(path).unlink(missing_ok=True)


def train_run(
    encoded: xr.Dataset,
    depth: int,
    width: int,
    seed: int,
    config: TrainConfig,
    checkpoint: Path | None,
    progress: bool = True,
) -> xr.Dataset:
    """Train one network from its seed and return its trajectory (contract §3).

    Resumes from ``checkpoint`` when that file exists; the result is then bitwise identical to an
    uninterrupted run on the same machine. A non-finite loss does not raise: the run stops, is
    marked ``status="diverged"`` and keeps the snapshots taken before (later ones are NaN).
    """
    device, dtype = _resolve(config)
    layout = model.HeadLayout(tuple(int(v) for v in encoded["vocab_size"].values))
    train, heldout = model.encode_splits(encoded, layout, dtype, device)
    specs = model.param_specs(config.cell, depth, width, layout.vocab_sizes)
    theta = model.init_theta(specs, width, seed, dtype, device)
    if config.cell == "rnn_tanh":
        engine = ElmanEngine(depth, width, layout, theta)
    else:
        engine = model.ReferenceEngine(config.cell, depth, width, layout, theta)
    identity = {**asdict(config), "depth": depth, "width": width, "seed": seed}
    # resume only what this very code, torch build and device would have computed
    identity |= {"data_sha256": _data_sha256(encoded), "code_sha256": io.code_sha256(MODULES)}
    identity |= {"torch": str(torch.__version__), "device_used": str(device)}
    run = _Run(engine, train, heldout, layout, config, seed)
    if checkpoint is not None and Path(checkpoint).exists():
        run.restore(_load(Path(checkpoint), identity))
    grid = checkpoint_steps(config.steps, config.checkpoints_per_decade)
    name = f"d{depth}_w{width}_s{seed}"
    # in a log file (no terminal) a bar redrawn 10 times a second would bloat it: redraw every 30 s
    interval = 0.1 if sys.stderr.isatty() else 30.0
    bar = tqdm(
        total=config.steps,
        initial=run.step,
        desc=name,
        file=sys.stderr,
        disable=not progress,
        mininterval=interval,
        maxinterval=max(interval, 10.0),
    )
    with bar:
        _loop(run, grid, checkpoint, identity, bar)
    if run.diverged_step >= 0:
        k = run.diverged_step
        log.warning(
            "%s: loss became non-finite at step %d (epoch %g); lower train.lr (now %g) or clip harder; "
            "the %d checkpoints before it are kept",
            *(name, k, k / run.steps_per_epoch, config.lr, len(run.records["loss"])),
        )
    return _trajectory(run, grid, specs, identity, str(device), float(encoded.attrs["data_floor"]))


class _Run:
    """The mutable state of one run: engine (θ), minibatch order, clip counter, records so far."""

    def __init__(
        self,
        engine: ElmanEngine | model.ReferenceEngine,
        train: model.Batch,
        heldout: model.Batch | None,
        layout: model.HeadLayout,
        config: TrainConfig,
        seed: int,
    ) -> None:
        self.engine, self.train, self.heldout, self.layout = engine, train, heldout, layout
        self.config, self.n_train = config, train.y.shape[1]
        self.batch_size = min(config.batch_size or self.n_train, self.n_train)
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        self.rng = np.random.default_rng(seed)  # minibatch order; init uses its own torch generator
        # the current epoch's permutation and position in it (exhausted: draw one at the first step)
        self.perm, self.pos = np.arange(0), self.n_train
        self.step, self.clipped, self.last_record, self.diverged_step = 0, 0, 0, -1
        self.records: dict[str, list[Any]] = {key: [] for key in RECORDS}

    def next_batch(self) -> model.Batch:
        """Return the training batch of this step: all chorales, or the next slice of a shuffled epoch."""
        if self.batch_size == self.n_train:
            return self.train
        if self.pos >= self.n_train:
            self.perm, self.pos = self.rng.permutation(self.n_train), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += len(idx)
        return model.select(self.train, torch.as_tensor(idx, device=self.train.y.device), self.layout)

    def record(self, step: int, batch_loss: float | None) -> bool:
        """Snapshot θ_step and its losses; False (nothing recorded) if the training loss is not finite.

        ``batch_loss`` is this step's full-batch training loss when the step already computed it.
        """
        loss = self.engine.loss(self.train).item() if batch_loss is None else batch_loss
        if not math.isfinite(loss):
            return False
        heldout = math.nan if self.heldout is None else self.engine.loss(self.heldout).item()
        since = step - self.last_record
        theta = self.engine.theta.to(device="cpu", dtype=torch.float32, copy=True).numpy()
        for key, value in zip(RECORDS, (loss, heldout, self.clipped / max(since, 1), theta), strict=True):
            self.records[key].append(value)
        self.clipped, self.last_record = 0, step
        return True

    def update(self, grad: torch.Tensor) -> None:
        """One SGD step θ ← θ - lr·g, with g rescaled to norm ``clip_norm`` when it is longer."""
        clip = self.config.clip_norm
        if clip is not None:
            norm = torch.linalg.vector_norm(grad).item()
            if norm > clip:
                grad.mul_(clip / norm)
                self.clipped += 1
        self.engine.theta.add_(grad, alpha=-self.config.lr)

    def state(self, identity: dict[str, Any]) -> dict[str, Any]:
        """All a resume needs, as tensors and plain Python types (loadable with weights_only)."""
        snapshots = self.records["theta"]
        return {
            "identity": identity,
            "counters": [self.step, self.pos, self.clipped, self.last_record],
            "rng": self.rng.bit_generator.state,
            "perm": torch.as_tensor(self.perm),
            "theta": self.engine.theta.cpu().clone(),
            "records": {key: self.records[key] for key in RECORDS[:3]},
            "snapshots": torch.as_tensor(np.array(snapshots)) if snapshots else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a saved ``state``."""
        self.step, self.pos, self.clipped, self.last_record = state["counters"]
        self.rng.bit_generator.state = state["rng"]
        self.perm = state["perm"].numpy()
        self.engine.theta.copy_(state["theta"])
        self.records = {key: list(state["records"][key]) for key in RECORDS[:3]}
        snapshots = state["snapshots"]
        self.records["theta"] = [] if snapshots is None else list(snapshots.numpy())


def _loop(run: _Run, grid: np.ndarray, checkpoint: Path | None, identity: dict, bar: tqdm) -> None:
    """SGD steps from ``run.step`` to the end: save, record, update, in that order per step."""
    steps, start, record_at = run.config.steps, run.step, set(grid.tolist())
    full_batch = run.batch_size == run.n_train
    for step in range(start, steps + 1):
        run.step = step
        if checkpoint is not None and start < step < steps and step % run.config.resume_every == 0:
            with io.atomic_path(checkpoint) as tmp:
                torch.save(run.state(identity), tmp)
            log.info("step %d of %d: loss %.4g, resumable state saved", step, steps, run.records["loss"][-1])
        if step == steps:  # the final state: evaluate, no update
            if not run.record(step, None):
                run.diverged_step = step
            return
        loss, grad = run.engine.loss_grad(run.next_batch())
        value = loss.item()
        finite = math.isfinite(value)
        if finite and step in record_at:
            finite = run.record(step, value if full_batch else None)
            bar.set_postfix(loss=f"{run.records['loss'][-1]:.4g}" if finite else "nan", refresh=False)
        elif step % 100 == 0:
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)  # this step's (mini)batch loss
        if not finite:
            run.diverged_step = step
            return
        run.update(grad)
        bar.update()


def _load(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a resumable state; refuse one written for another run or unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = dict(state["identity"])
        missing = {"counters", "rng", "perm", "theta", "records", "snapshots"} - state.keys()
        if missing:
            raise KeyError(f"no {sorted(missing)}")
    except Exception as err:  # torch.load raises many kinds for a damaged file
        raise DataError(f"{path}: unreadable checkpoint ({err}); delete it to start over") from err
    differ = sorted(k for k in identity.keys() | stored.keys() if stored.get(k) != identity.get(k))
    if differ:
        was = ", ".join(f"{k}={stored.get(k)!r} (now {identity.get(k)!r})" for k in differ)
        raise ParamsError(f"{path}: checkpoint of a different run: {was}; delete it to start over")
    log.info("%s: resuming at step %d", path, state["counters"][0])
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
    run: _Run,
    grid: np.ndarray,
    specs: list[model.ParamSpec],
    identity: dict[str, Any],
    device: str,
    data_floor: float,
) -> xr.Dataset:
    """Assemble the contract's trajectory Dataset; checkpoints not reached (divergence) are NaN."""
    n_params, n_done = sum(s.size for s in specs), len(run.records["loss"])
    data_vars = {}
    for key, (long_name, units) in VARIABLES.items():
        dims = ("depth", "width", "seed", "time") + (("param",) if key == "theta" else ())
        dtype = np.float32 if key == "theta" else np.float64
        values = np.full((len(grid), n_params) if key == "theta" else len(grid), np.nan, dtype)
        if n_done:
            values[:n_done] = np.asarray(run.records[key])
        data_vars[key] = (dims, values[None, None, None], {"long_name": long_name, "units": units})
    coords = {
        **{key: [identity[key]] for key in ("depth", "width", "seed")},
        "time": ("time", grid / run.steps_per_epoch, {"units": "epoch", "long_name": "training time"}),
        "step": ("time", grid, {"units": "SGD steps", "long_name": "SGD step"}),
        "group": ("param", model.param_groups(specs), {"long_name": "parameter group"}),
    }
    attrs = {
        "cell": run.config.cell,
        "lr": float(run.config.lr),
        "batch_size": int(run.batch_size),  # chorales per step; = n_train for full batch
        "clip_norm": "none" if run.config.clip_norm is None else float(run.config.clip_norm),
        "steps": int(run.config.steps),
        "checkpoints_per_decade": int(run.config.checkpoints_per_decade),
        "dtype": run.config.dtype,
        "n_parameters": int(n_params),
        "data_floor": data_floor,
        "device": device,
        "status": "diverged" if run.diverged_step >= 0 else "completed",
        "diverged_step": int(run.diverged_step),
    }
    params = {"train": asdict(run.config), **{k: identity[k] for k in ("depth", "width", "seed")}}
    return xr.Dataset(data_vars, coords, attrs | io.provenance(params, MODULES))

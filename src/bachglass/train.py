"""SGD training of the networks of one (depth, width): log-spaced snapshots, resume and divergence.

The runs of one pack train as one batched model (:class:`bachglass.pack_state.PackState`, which holds their
state and takes the SGD, clip and Langevin steps); :func:`train_runs` drives it: the step loop, the
records at the checkpoint grid and the trajectory files. A checkpoint at step k records the
parameters θ_k *before* update k (k = 0 is the initial state, k = steps the final one) and the full
training-set loss L(θ_k). Resumable states, their checks and the stop signals are
:mod:`bachglass.resume`'s: a killed or preempted run resumes bitwise.
"""

import hashlib
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from bachglass import device as devices
from bachglass import io, model, trajectory
from bachglass.errors import ParamsError
from bachglass.pack_state import Data, PackState, Start, make_engine
from bachglass.resume import align, load, remove_checkpoint, save, stop, stop_signals
from bachglass.sgd import TrainConfig, resolve

log = logging.getLogger(__name__)

ENCODED_VARIABLES = ("tokens", "mask", "vocab_size", "split")  # what training reads of encoded.nc


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
    start: Start | None = None,
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
    device, dtype = resolve(config)
    devices.announce(device)
    layout = model.HeadLayout(tuple(int(v) for v in encoded["vocab_size"].values))
    train, heldout = model.encode_splits(encoded, layout, dtype, device)
    specs = model.param_specs(config.cell, depth, width, layout.vocab_sizes)
    identities = run_identities(encoded, depth, width, seeds, config)
    if start is not None:
        identities = [identity | {"origin": start.origin} for identity in identities]
    states = [
        load(Path(path), identity) if path is not None and Path(path).exists() else None
        for path, identity in zip(checkpoints, identities, strict=True)
    ]
    states = align(states, checkpoints, seeds)
    for path, state in zip(checkpoints, states, strict=True):
        if state is not None:
            log.info("%s: resuming at step %d", path, state["counters"][0])
    # runs train together that resume at the same step from the same ensemble (or start fresh): the
    # round-off of a batched step depends on who is in the batch, so this keeps a resumed run bitwise
    cohorts: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for k, state in enumerate(states):
        key = (0, ()) if state is None else (state["counters"][0], tuple(state["pack"]))
        cohorts.setdefault(key, []).append(k)
    grid = trajectory.checkpoint_steps(config.steps, config.checkpoints_per_decade)
    data = Data(train, heldout, layout)
    trajectories: list[xr.Dataset | None] = [None] * len(seeds)
    with stop_signals() as received:  # SIGTERM/SIGINT: save at the next step of the cohort at work, stop
        for members in cohorts.values():
            if start is None:
                thetas = torch.stack(
                    [model.init_theta(specs, width, seeds[k], dtype, device, config.init) for k in members]
                )
            else:
                thetas = torch.stack(
                    [torch.as_tensor(start.theta[k], dtype=dtype, device=device) for k in members]
                )
            cohort = [seeds[k] for k in members]
            engine = make_engine(config.cell, depth, width, layout, thetas)
            ens = PackState(engine, data, config, cohort, stream=None if start is None else start.stream)
            if states[members[0]] is not None:
                ens.restore([states[k] for k in members])
            paths = [checkpoints[k] for k in members]
            name = f"d{depth}_w{width}_s" + ",".join(map(str, cohort))
            _train(ens, grid, paths, [identities[k] for k in members], name, progress, received)
            floor = float(encoded.attrs["data_floor"])
            for m, k in enumerate(members):
                trajectories[k] = _trajectory(ens, m, grid, specs, identities[k], device, floor)
    return trajectories  # type: ignore[return-value]


def run_identities(
    encoded: xr.Dataset, depth: int, width: int, seeds: list[int], config: TrainConfig
) -> list[dict[str, Any]]:
    """Return what determines each run's result: its params, data, code, torch build and device.

    A checkpoint resumes only a run of the same identity. The pack is not part of it: packing changes
    round-off only, and a run interrupted in one pack may resume in another.
    """
    device, _ = resolve(config)
    base = asdict(config) | {"depth": depth, "width": width}
    base |= {"data_sha256": _data_sha256(encoded), "code_sha256": io.code_sha256(io.code_modules(__file__))}
    base |= {"torch": str(torch.__version__), "device_used": str(device)}
    return [base | {"seed": seed} for seed in seeds]


def train_pack(
    encoded: xr.Dataset, depth: int, width: int, seeds: list[int], config: TrainConfig, output: Path
) -> None:
    """Train the seed pack ``seeds`` of one (depth, width) and write it to ``output`` along ``seed``.

    Each run resumes from its checkpoint beside ``output`` (:func:`bachglass.io.checkpoint_paths`);
    the checkpoints are removed only once the file is safely written.
    """
    checkpoints = io.checkpoint_paths(output, seeds)
    runs = train_runs(encoded, depth, width, seeds, config, checkpoints)
    params = {"train": asdict(config), "depth": depth, "width": width, "seed": seeds}
    io.write_netcdf(trajectory.pack(runs, io.provenance(params, __file__)), output)
    for checkpoint in checkpoints:
        remove_checkpoint(checkpoint)


def _train(
    ens: PackState,
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


def _log_temperature(ens: PackState, name: str) -> None:
    """Log the Langevin temperature and the noise it adds per step (or that there is none)."""
    config = ens.config
    if ens.optimizer.noise is None:
        log.info("%s: temperature 0, plain (S)GD without noise", name)
        return
    log.info(
        "%s: Langevin temperature T = %g nats per note: θ += %.4g·ξ per step, = sqrt(2 T lr / P) with "
        "lr = %g and P = %d scored training notes",
        *(name, config.temperature, ens.optimizer.noise_scale, config.lr, ens.n_scored_notes),
    )


def _loop(
    ens: PackState,
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
            stop(ens, saving, identities, received[0])
        if saving and start < step < steps and step % ens.config.resume_every == 0:
            save(ens, saving, identities)
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


def _data_sha256(encoded: xr.Dataset) -> str:
    """Fingerprint of the training data, so a checkpoint of other data is never resumed."""
    digest = hashlib.sha256(np.ascontiguousarray(encoded["tokens"].values).tobytes())
    digest.update(np.ascontiguousarray(encoded["mask"].values).tobytes())
    digest.update("\n".join(map(str, encoded["split"].values)).encode())
    return digest.hexdigest()


def _trajectory(
    ens: PackState,
    m: int,
    grid: np.ndarray,
    specs: list[model.ParamSpec],
    identity: dict[str, Any],
    device: torch.device,
    data_floor: float,
) -> xr.Dataset:
    """Member ``m``'s trajectory (:func:`bachglass.trajectory.run_dataset`) with the training attributes."""
    member = ens.members[m]
    coords = {key: identity[key] for key in ("depth", "width", "seed")}
    coords |= {"time": grid / ens.steps_per_epoch, "group": model.param_groups(specs)}
    attrs = {
        "cell": ens.config.cell,
        "lr": float(ens.config.lr),
        "batch_size": int(ens.batch_size),  # chorales per step; = n_train for full batch
        "clip_norm": "none" if ens.config.clip_norm is None else float(ens.config.clip_norm),
        "init": ens.config.init,  # of the recurrent weights (model.INITS)
        "steps": int(ens.config.steps),
        "checkpoints_per_decade": int(ens.config.checkpoints_per_decade),
        "dtype": ens.config.dtype,
        "n_parameters": int(sum(s.size for s in specs)),
        "data_floor": data_floor,
        **devices.attrs(device),  # device, device_name, cuda_version
        "status": "diverged" if member.diverged_step >= 0 else "completed",
        "diverged_step": int(member.diverged_step),
        "temperature": float(ens.config.temperature),  # Langevin T, nats per note (0: plain (S)GD)
        "n_scored_notes": int(ens.n_scored_notes),  # P, the training notes the loss is the mean over
        "ensemble_size": len(ens.members),  # runs trained with it as one batched model (round-off only)
    }
    recorded = set(attrs) | {"resume_every"}  # (when a run saves its state is not how it trains)
    attrs |= {key: "none" if v is None else v for key, v in asdict(ens.config).items() if key not in recorded}
    params = {"train": asdict(ens.config), **{k: identity[k] for k in ("depth", "width", "seed")}}
    if "origin" in identity:  # a restart: what it continues
        attrs["origin"] = params["origin"] = identity["origin"]
    return trajectory.run_dataset(member.records, grid, coords, attrs | io.provenance(params, __file__))

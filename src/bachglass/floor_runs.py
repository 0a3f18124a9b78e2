"""Training the SGD-floor runs: the widest net at one (η, B), and the restarts at η × f.

The training side of :mod:`bachglass.sgd_floor` (which measures the floor and κ from these files).
It reads only the keys of ``sgd_floor`` that decide what is trained (:data:`SETTING_KEYS`,
:data:`RESTART_KEYS`), so an edit of the analysis (the fit window, say) re-trains nothing. Every
run is unclipped: the floor is a property of plain SGD.
"""

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import xarray as xr

from bachglass import io, trajectory
from bachglass.errors import DataError, ParamsError

# of train, the floor runs' own (the rest of the section is the study's dynamics, which they share)
OWN_KEYS = ("lr", "batch_size", "steps", "clip_norm")
SETTING_KEYS = ("depth", "width", "seed", "steps")  # of sgd_floor: what a floor setting's runs read
RESTART_KEYS = (
    "depth",
    "width",
    "seed",
    "restart_step",
    "restart_factors",
    "restart_steps",
)  # ... a restart's
RESTART_STREAM = 0x52455354  # "REST": a restart's minibatch order is seeded (seed, this, factor index)


def combine_seeds(trajectories: Sequence[xr.Dataset], params: dict[str, Any]) -> xr.Dataset:
    """One setting's runs (trajectories of one (depth, width)) along ``seed``, with their training attrs."""
    if not trajectories:
        raise DataError("sgd_floor: no run to combine; list sgd_floor.seed")
    packed = trajectory.pack(trajectories, io.provenance(params, __file__))
    return packed.squeeze(("depth", "width"), drop=False)


def _config(train_params: dict[str, Any], **own: Any) -> Any:
    """Build the trainer's config: the study's train section but for :data:`OWN_KEYS`, then the run's own."""
    from bachglass import sgd  # torch: only the training steps need it

    shared = {k: v for k, v in train_params.items() if k not in OWN_KEYS}
    return sgd.TrainConfig(**shared, clip_norm=None, **own)


def train_setting(
    encoded: xr.Dataset,
    train_params: dict[str, Any],
    runs: dict[str, Any],
    lr: float,
    batch_size: int,
    checkpoints: list[Any],
) -> xr.Dataset:
    """Train the floor runs of one (η, B) (``runs``: :data:`SETTING_KEYS`) as one batched model."""
    from bachglass import train

    seeds = list(runs["seed"])
    cfg = _config(train_params, lr=lr, batch_size=batch_size, steps=runs["steps"])
    trained = train.train_runs(encoded, runs["depth"], runs["width"], seeds, cfg, checkpoints)
    return combine_seeds(trained, {"sgd_floor": runs, "train": asdict(cfg)})


def restart_setting(
    encoded: xr.Dataset,
    parent: xr.Dataset,
    train_params: dict[str, Any],
    runs: dict[str, Any],
    factor: float,
    checkpoints: list[Any],
) -> xr.Dataset:
    """Continue the parent's runs from ``restart_step`` at η × ``factor`` (``runs``: :data:`RESTART_KEYS`)."""
    from bachglass import pack_state, train

    factors = list(runs["restart_factors"])
    if factor not in factors:
        raise ParamsError(f"params.yaml: sgd_floor.restart_factors: {factor} is not one of {factors}")
    step = parent["step"].values
    if not 0 < runs["restart_step"] <= step[-1]:
        raise DataError(
            f"sgd_floor.restart_step: {runs['restart_step']} is not within the floor runs' 1..{step[-1]}"
        )
    k = int(np.abs(np.log(np.maximum(step, 1)) - np.log(runs["restart_step"])).argmin())  # nearest checkpoint
    lr, batch_size = float(parent.attrs["lr"]) * factor, int(parent.attrs["batch_size"])
    seeds = [int(s) for s in parent["seed"].values]
    cfg = _config(train_params, lr=lr, batch_size=batch_size, steps=runs["restart_steps"])
    theta = [parent["theta"].sel(seed=s).isel(time=k).values.ravel() for s in seeds]
    origin = f"{io.setting_id(float(parent.attrs['lr']), batch_size)} step {int(step[k])}"
    start = pack_state.Start(theta=theta, stream=RESTART_STREAM + factors.index(factor), origin=origin)
    restarted = train.train_runs(encoded, runs["depth"], runs["width"], seeds, cfg, checkpoints, start=start)
    packed = combine_seeds(restarted, {"sgd_floor": runs, "train": asdict(cfg), "origin": origin})
    return packed.assign_attrs(restart_step=int(step[k]), restart_factor=float(factor))

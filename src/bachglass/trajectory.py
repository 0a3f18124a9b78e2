"""The trajectory files: a training job's record of its runs, one file per seed pack.

A run's trajectory holds, at the log-spaced checkpoints of :func:`checkpoint_steps`, the full
training-set loss L(θ_k), the held-out loss, the clipped fraction, the largest gradient norm and the
parameters θ_k *before* update k (k = 0 is the initial state, k = steps the final one). A training
job writes the runs of its seed pack into one file along ``seed`` (:func:`pack`); what differs from
run to run (whether it diverged, and where) is a variable on ``seed`` there, an attribute of the run
once :func:`runs` takes the file apart. Torch-free: the analysis reads these files without it.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from bachglass import labels
from bachglass.errors import DataError
from bachglass.io import PROVENANCE_KEYS

# recorded at every checkpoint, in this order (their labels: bachglass.labels, as for every name below)
VARIABLES = ("loss", "heldout_loss", "clip_fraction", "grad_norm_max", "theta")
PER_RUN = ("status", "diverged_step", "ensemble_size")  # run attributes a pack keeps as variables on seed
# attributes of a run that are facts about it, not how it was trained (with PER_RUN and the provenance)
RUN_FACTS = ("n_parameters", "data_floor", "n_scored_notes", "origin")


def training_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Return how a run was trained, from its attributes: every ``train`` setting the trainer recorded.

    The trainer records each key of the train section (resolved: the device it ran on, the batch size
    it used), so a new option reaches the observables and the study without a list to extend.
    """
    skip = {*RUN_FACTS, *PER_RUN, *PROVENANCE_KEYS}
    return {key: value for key, value in attrs.items() if key not in skip}


def checkpoint_steps(steps: int, per_decade: int) -> np.ndarray:
    """Return the snapshot grid: 0, round(10^(k/per_decade)) for k = 0, 1, ..., and ``steps``.

    Log-spaced because aging needs many waiting times per decade; anchored at the powers of ten so
    that runs of different length share their grid. Early on, rounding merges points, so the grid
    holds every step up to ~per_decade/ln 10. Depends only on its arguments (identical across runs).
    """
    k = np.arange(math.floor(per_decade * math.log10(steps) + 1e-9) + 1)
    grid = np.rint(10.0 ** (k / per_decade))
    return np.unique(np.concatenate([[0], grid[grid <= steps], [steps]])).astype(np.int64)


def run_dataset(
    records: dict[str, Any],
    grid: np.ndarray,
    coords: dict[str, Any],
    attrs: dict[str, Any],
) -> xr.Dataset:
    """One run's trajectory from its ``records`` (:data:`VARIABLES`, one entry per checkpoint reached).

    ``coords`` holds the run's depth, width and seed, its epochs (``time``) and parameter groups
    (``group``); checkpoints not reached (divergence) are NaN.
    """
    n_params = len(coords["group"])
    n_done = len(records["loss"])
    data_vars = {}
    for key in VARIABLES:
        dims = ("depth", "width", "seed", "time") + (("param",) if key == "theta" else ())
        dtype = np.float32 if key == "theta" else np.float64
        values = np.full((len(grid), n_params) if key == "theta" else len(grid), np.nan, dtype)
        if n_done:
            values[:n_done] = np.asarray(records[key])
        data_vars[key] = (dims, values[None, None, None])
    ds_coords = {
        **{key: [coords[key]] for key in ("depth", "width", "seed")},
        "time": ("time", coords["time"]),
        "step": ("time", grid),
        "group": ("param", coords["group"]),
    }
    return labels.label(xr.Dataset(data_vars, ds_coords, attrs))


def pack(runs: Sequence[xr.Dataset], provenance: dict[str, Any]) -> xr.Dataset:
    """Put the runs of one (depth, width) along ``seed``, their :data:`PER_RUN` attributes as variables.

    The attributes every run shares are kept; ``provenance`` replaces the runs' own.
    """
    if not runs:
        raise DataError("trajectory: no run to pack; list the pack's seeds")
    per_run = {
        name: xr.DataArray(
            [run.attrs[name] for run in runs],
            {"seed": [int(run["seed"].item()) for run in runs]},
            "seed",
            attrs=labels.attrs(name),
        )
        for name in PER_RUN
    }
    packed = xr.concat(
        [run.drop_attrs(deep=False) for run in runs],
        dim="seed",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="exact",
    )
    shared = {key: value for key, value in runs[0].attrs.items() if key not in PER_RUN}
    differ = sorted(
        key
        for key in {k for run in runs for k in run.attrs} - set(PER_RUN) - set(provenance)
        if not all(_same(run.attrs.get(key), shared.get(key)) for run in runs)
    )
    if differ:
        raise DataError(f"trajectory: the runs of a pack differ in {', '.join(differ)}; train them apart")
    return labels.label(packed.assign(per_run).assign_attrs({**shared, **provenance}))


def _same(a: Any, b: Any) -> bool:
    """Whether two attribute values are equal (NaN equal to NaN)."""
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or bool(np.array_equal(a, b))


def runs(packed: xr.Dataset) -> list[xr.Dataset]:
    """Take a pack apart: one dataset per seed (``seed`` of length 1), its :data:`PER_RUN` as attributes."""
    missing = [name for name in PER_RUN if name not in packed]
    if missing:
        raise DataError(f"trajectory: no variable {', '.join(missing)}; re-create it with its training rule")
    out = []
    for seed in packed["seed"].values:
        run = packed.sel(seed=[seed])
        attrs = {name: run[name].item() for name in PER_RUN}
        out.append(run.drop_vars(list(PER_RUN)).assign_attrs(packed.attrs | attrs))
    return out

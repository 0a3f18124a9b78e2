"""Observables of training runs (learning times, two-time quantities), as labelled arrays over the grid.

A run's ``trajectory.nc`` becomes its ``observables.nc``; :func:`combine_runs` tiles those into
``study.nc`` along (depth, width, seed). Time is counted in SGD steps (the ``step`` coordinate) and
in epochs (the ``time`` coordinate); the checkpoint grid is the same for every run of a study. The
two-time quantities themselves (Δ, D, Y, α₂, Q, C, τ_e) are computed in :mod:`bachglass.two_time`.
"""

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from bachglass import labels, model
from bachglass.divergence import divergence_step
from bachglass.errors import DataError, ParamsError
from bachglass.labels import EPOCHS, NATS, STEPS
from bachglass.trajectory import training_attrs
from bachglass.two_time import LAG_COORD, on_lag_grid, relaxation_time, two_time_observables

log = logging.getLogger(__name__)

RUN_DIMS = ("depth", "width", "seed")
TRAJECTORY_VARS = ("loss", "heldout_loss", "clip_fraction", "theta")
TRAJECTORY_ATTRS = ("n_parameters", "data_floor", "status", "diverged_step")
TAU_CLOCKS = {"tau": "step", "tau_epoch": "time"}  # variable: coordinate that measures its time
RELAXATION = {"tau_e": 1 / np.e, "tau_90": 0.9}  # variable: fraction of Q(τ_w, τ_w) it waits for
LAG_INTERP = {
    "msd": True,
    "msd_normalised": True,
    "overlap": False,
    "cosine": False,
}  # on the lag grid, log-log or semi-log
# name: (long_name, units) of what only the observables write (the rest: bachglass.labels)
ATTRS = {
    "tau": ("learning time: first checkpoint with smoothed loss <= data floor + eps", STEPS),
    "tau_epoch": ("learning time: first checkpoint with smoothed loss <= data floor + eps", EPOCHS),
    "msd": ("mean-square displacement of all parameters since tau_w", "1"),
    "msd_lag": ("mean-square displacement since tau_w on the common lag grid", "1"),
    "msd_group": ("mean-square displacement since tau_w within a parameter group", "1"),
    "msd_normalised": ("mean-square displacement since tau_w over the mean square parameter at tau_w", "1"),
    "msd_normalised_lag": ("normalised mean-square displacement since tau_w on the common lag grid", "1"),
    "theta_sq_mean": ("mean square parameter |theta|^2 / N", "1"),
    "quartic": ("mean fourth power of the parameter displacement since tau_w", "1"),
    "quartic_group": ("mean fourth power of the parameter displacement within a parameter group", "1"),
    "y_ratio": ("fourth moment over squared mean-square displacement (3: Gaussian)", "1"),
    "alpha2": ("non-Gaussian parameter of the displacement since tau_w (0: Gaussian)", "1"),
    "alpha2_group": ("non-Gaussian parameter of the displacement within a parameter group", "1"),
    "overlap": ("fraction of parameters within overlap_eps of their value at tau_w", "1"),
    "overlap_lag": ("overlap since tau_w on the common lag grid", "1"),
    "overlap_group": ("fraction of a group's parameters within overlap_eps_group of their tau_w value", "1"),
    "overlap_eps": ("overlap distance: std of all parameters at tau_w / overlap_f", "1"),
    "overlap_eps_group": ("overlap distance: std of the group's parameters at tau_w / overlap_f", "1"),
    "cosine": ("cosine between the parameter vectors at tau_w and at t'", "1"),
    "cosine_lag": ("cosine between the parameter vectors at tau_w and tau_w + lag", "1"),
    "cosine_group": ("cosine between a group's parameter vectors at tau_w and at t'", "1"),
    "tau_e": ("relaxation time: lag at which the overlap first drops below 1/e of its start", STEPS),
    "tau_90": ("relaxation time: lag at which the overlap first drops below 0.9 of its start", STEPS),
    "n_parameters_group": ("parameters of the group, a layer's two biases counted once", "1"),
    "diverged": ("the loss became non-finite or went back above its initial value", "1"),
    "eps": ("learning-time threshold above the data floor", NATS),
    "tau_w": ("waiting time (snapped to the checkpoint grid)", STEPS),
    "tau_w_epoch": ("waiting time", EPOCHS),
    "lag": ("lag since tau_w", STEPS),
    LAG_COORD: ("lag t' - tau_w", STEPS),
}


@dataclass(frozen=True)
class ObservablesConfig:
    """The ``observables`` section of params.yaml."""

    eps: Sequence[float]  # nats/note above the data floor
    smoothing_decades: float  # running-median window in log10(step)
    tau_w: Sequence[int]  # SGD steps
    overlap_f: float  # overlap distance ε = std(θ(τ_w)) / overlap_f


def smoothed_loss(loss: xr.DataArray, decades: float) -> xr.DataArray:
    """Smooth the loss by a running median over a window of ±``decades``/2 in log10(step).

    A median, not a mean: a single-checkpoint dip (edge of stability, a lucky batch) must not set
    the learning time. Step 0 has no logarithm and keeps its own value; where the grid is sparser
    than the window (early integer steps) a checkpoint is its own median. NaN stays NaN (a diverged
    run must not be revived by finite neighbours).
    """
    step = loss["step"].values.astype(np.float64)
    with np.errstate(divide="ignore"):
        logt = np.where(step > 0, np.log10(step), np.nan)
    window = np.abs(logt[:, None] - logt[None, :]) <= decades / 2 + 1e-9  # (K, K)
    window |= np.eye(step.size, dtype=bool)

    def median(values: np.ndarray) -> np.ndarray:  # (..., K) -> (..., K)
        stacked = np.where(window, values[..., None, :], np.nan)  # (..., K, K)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
            return np.nanmedian(stacked, axis=-1)

    out = xr.apply_ufunc(median, loss, input_core_dims=[["time"]], output_core_dims=[["time"]])
    return out.transpose(*loss.dims).where(loss.notnull()).assign_attrs(loss.attrs)


def learning_time(
    loss: xr.DataArray, floor: float, eps: float | Sequence[float], clock: str = "step"
) -> xr.DataArray:
    """First checkpoint at which the (already smoothed) loss is ≤ ``floor + eps``.

    Measured from the data floor, not from zero: chorales that share openings make zero loss
    unreachable. A run that never gets there gets +inf, not NaN, so that fits can treat it as
    right-censored instead of dropping it. ``clock`` is the coordinate that measures time:
    ``"step"`` (SGD steps) or ``"time"`` (epochs). A sequence of ``eps`` gives an ``eps`` dim.
    """
    eps_values = np.asarray(eps, dtype=np.float64)
    dims = ("eps",) if eps_values.ndim else ()
    threshold = xr.DataArray(eps_values, dims=dims, coords={"eps": (dims, eps_values)})
    reached = loss <= floor + threshold
    tau = loss[clock].astype(np.float64).where(reached).min("time").fillna(np.inf)
    return tau.rename("tau").assign_attrs(units=EPOCHS if clock == "time" else STEPS, eps=eps)


def snap_to_grid(values: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Snap waiting times to the nearest checkpoint step in log; sorted, without duplicates.

    Two-time quantities need θ at τ_w itself, so τ_w must be a checkpoint. Nearest in log
    because the grid is log-spaced. A value beyond the last checkpoint has no future and is dropped.
    """
    grid = np.asarray(grid, dtype=np.int64)
    positive = grid[grid > 0]
    snapped = []
    for value in values:
        if value <= 0:
            raise ParamsError(f"params.yaml: observables.tau_w: {value} is not positive; use >= 1")
        if value > grid[-1]:
            log.warning("tau_w %s is beyond the last checkpoint step %s: dropped", value, grid[-1])
            continue
        nearest = int(positive[np.argmin(np.abs(np.log(positive) - np.log(value)))])
        if nearest != value:
            log.warning("tau_w %s snapped to the nearest checkpoint step %s", value, nearest)
        snapped.append(nearest)
    unique = np.unique(np.asarray(snapped, dtype=np.int64))
    if unique.size < len(snapped):
        log.warning("tau_w: %d values snapped onto the same checkpoint", len(snapped) - unique.size)
    return unique


def _run_id(trajectory: xr.Dataset) -> str:
    """``d{depth}_w{width}_s{seed}`` of a one-run Dataset (for messages)."""
    values = [trajectory[d].values.ravel().tolist() for d in RUN_DIMS]
    return "d{}_w{}_s{}".format(*(v[0] if len(v) == 1 else v for v in values))


def _check_trajectory(trajectory: xr.Dataset) -> None:
    """Raise a ``DataError`` naming all that a trajectory lacks (dims, variables, attributes)."""
    missing_dims = [d for d in (*RUN_DIMS, "time", "param") if d not in trajectory.dims]
    where = "trajectory" if missing_dims else f"trajectory {_run_id(trajectory)}"
    missing = [f"dimension '{d}'" for d in missing_dims]
    missing += [f"dimension '{d}' of length 1" for d in RUN_DIMS if trajectory.sizes.get(d, 1) != 1]
    missing += [f"variable '{v}'" for v in (*TRAJECTORY_VARS, "step", "group") if v not in trajectory]
    missing += [f"attribute '{a}'" for a in TRAJECTORY_ATTRS if a not in trajectory.attrs]
    if trajectory.attrs.get("status", "completed") not in ("completed", "diverged"):
        missing.append(f"valid status ({trajectory.attrs['status']!r}; expected completed or diverged)")
    if missing:
        raise DataError(f"{where}: no {', no '.join(missing)}; re-create it with rule train_pack")


def _divergence(trajectory: xr.Dataset) -> int:
    """Return the run's divergence step (-1: none) by :func:`divergence_step`."""
    nan_step = int(trajectory.attrs["diverged_step"]) if trajectory.attrs["status"] == "diverged" else -1
    if trajectory.attrs["status"] == "diverged" and nan_step < 0:
        nan_step = int(trajectory["step"].values[-1])  # stopped on NaN, step unknown: the last checkpoint
    loss = trajectory["loss"].transpose(..., "time").values.reshape(-1)
    return int(divergence_step(loss, trajectory["step"].values, np.asarray(nan_step)))


def _alive(trajectory: xr.Dataset, diverged_step: int) -> xr.DataArray:
    """Checkpoints before the divergence (all finite-loss ones for a run that did not diverge)."""
    alive = trajectory["loss"].notnull()
    if diverged_step >= 0:
        alive = alive & (trajectory["step"] < diverged_step)
    return alive


def _learning_times(
    trajectory: xr.Dataset, alive: xr.DataArray, diverged: bool, config: ObservablesConfig
) -> dict[str, xr.DataArray]:
    """``tau`` (SGD steps) and ``tau_epoch``; NaN instead of +inf for a diverged run."""
    smooth = smoothed_loss(trajectory["loss"].where(alive), config.smoothing_decades)
    floor = float(trajectory.attrs["data_floor"])
    out = {name: learning_time(smooth, floor, config.eps, clock) for name, clock in TAU_CLOCKS.items()}
    if diverged:
        out = {name: tau.where(np.isfinite(tau)) for name, tau in out.items()}
    return out


def function_parameters(trajectory: xr.Dataset) -> xr.DataArray:
    """θ (..., time, param) in float64 as the parameters of the function the net computes, each once.

    A layer's two biases enter only as their sum (:func:`bachglass.model.merged_biases`): that sum
    is one parameter, so Δ, Q, C and N count it once, not twice. The ``group`` labels follow. A
    trajectory of no model's cell (synthetic test data) is taken as it stands.
    """
    theta = trajectory["theta"]
    if trajectory.attrs["cell"] not in model.CELLS:
        return theta.transpose(..., "param").astype(np.float64)
    width, depth = int(trajectory["width"].item()), int(trajectory["depth"].item())
    n_io = int((trajectory["group"].values == "readout").sum()) // (width + 1)  # readout: n_io·(w + 1)
    specs = model.param_specs(trajectory.attrs["cell"], depth, width, (n_io,))
    if sum(spec.size for spec in specs) != theta.sizes["param"]:
        raise DataError(
            f"trajectory {_run_id(trajectory)}: theta does not hold a {trajectory.attrs['cell']} net"
        )
    keep, source, target = model.merged_biases(trajectory.attrs["cell"], specs)
    theta = theta.transpose(..., "param").astype(np.float64)
    merged = theta.isel(param=keep).copy()
    merged.values[..., target] += theta.values[..., source]
    return merged


def _two_time(
    trajectory: xr.Dataset,
    theta: xr.DataArray,
    alive: xr.DataArray,
    diverged: bool,
    tau_w: np.ndarray,
    config: ObservablesConfig,
) -> dict[str, xr.DataArray]:
    """Two-time quantities since each τ_w, their common-lag-grid versions and τ_e, τ_90.

    θ is masked from a divergence on, so everything after it is NaN; a relaxation time the run
    had not reached by then is NaN (invalid), not +inf (censored), as for the learning times.
    """
    step = trajectory["step"].values
    theta = theta.where(alive)
    pair = two_time_observables(theta, tau_w, config.overlap_f, groups=theta["group"])
    lags = step[(step > 0) & (step <= step[-1] - tau_w[0])]
    out = {name: pair[name] for name in pair.data_vars}
    out["theta_sq_mean"] = np.square(theta).mean("param")
    at_tau_w = out["theta_sq_mean"].isel(time=np.searchsorted(step, tau_w)).rename(time="tau_w")
    out["msd_normalised"] = (
        pair["msd"] / at_tau_w.drop_vars(["time", "step"], errors="ignore").values[..., None]
    )
    out |= {f"{v}_lag": on_lag_grid(out[v], lags, log_values=log) for v, log in LAG_INTERP.items()}
    for name, fraction in RELAXATION.items():
        tau = relaxation_time(pair["overlap"], fraction)
        out[name] = tau.where(np.isfinite(tau)) if diverged else tau
    return out


def _with_probes(ds: xr.Dataset, probes: xr.Dataset, run: str) -> xr.Dataset:
    """Merge the probes (accuracy, sharpness, ...) measured on the same run and checkpoints, as is."""
    clash = sorted(set(probes.data_vars) & set(ds.data_vars))
    if clash:
        raise DataError(f"probes of {run}: {', '.join(clash)} already observables; rename them in probes")
    differ = [d for d in (*RUN_DIMS, "time") if d in probes.dims and not ds[d].equals(probes[d])]
    if "step" in probes.coords and not ds["step"].equals(probes["step"]):
        differ.append("step")
    if differ:
        sizes = f"{probes.sizes.get('time', 0)} checkpoints, the trajectory {ds.sizes['time']}"
        raise DataError(
            f"probes of {run}: {', '.join(differ)} differ from the trajectory's (probes: {sizes}); "
            "re-run the probes on this trajectory"
        )
    return xr.merge([ds, probes], join="exact", compat="override", combine_attrs="override")


def run_observables(
    trajectory: xr.Dataset,
    config: ObservablesConfig,
    provenance: dict[str, Any],
    probes: xr.Dataset | None = None,
) -> xr.Dataset:
    """All observables of one run (the ``observables.nc`` layout), with its ``probes`` merged in.

    A diverged run is not a censored one: its loss and θ are masked from the divergence on, its
    learning and relaxation times that it had not reached are NaN (invalid), not +inf (censored),
    and ``diverged`` flags it. Times reached before the divergence are kept. ``probes`` (variables
    on the run's dims and checkpoints, measured elsewhere) must share the run's time grid exactly.
    """
    _check_trajectory(trajectory)
    diverged_step = _divergence(trajectory)
    attrs, step, alive = trajectory.attrs, trajectory["step"], _alive(trajectory, diverged_step)
    tau_w = snap_to_grid(config.tau_w, step.values)
    if tau_w.size == 0:
        raise ParamsError(f"params.yaml: observables.tau_w: all beyond step {int(step[-1])}")
    theta = function_parameters(trajectory)
    labels, counts = np.unique(theta["group"].values, return_counts=True)
    run = {d: trajectory[d].values for d in RUN_DIMS}
    ds = xr.Dataset(
        {
            **{
                v: trajectory[v]
                for v in ("loss", "heldout_loss", "clip_fraction", "grad_norm_max")
                if v in trajectory
            },
            **_learning_times(trajectory, alive, diverged_step >= 0, config),
            **_two_time(trajectory, theta, alive, diverged_step >= 0, tau_w, config),
            "n_parameters_group": xr.DataArray(counts, {"group": labels}, "group").expand_dims(run),
            "n_parameters": xr.DataArray(int(attrs["n_parameters"])).expand_dims(run),
            "diverged": xr.DataArray(diverged_step >= 0).expand_dims(run),
            "diverged_step": xr.DataArray(diverged_step).expand_dims(run),
        }
    )
    epochs = trajectory["time"].values[np.searchsorted(step.values, tau_w)]
    ds = ds.assign_coords(tau_w_epoch=("tau_w", epochs))
    if probes is not None:
        ds = _with_probes(ds, probes, _run_id(trajectory))
    ds.attrs = {**provenance, **{a: attrs[a] for a in TRAJECTORY_ATTRS}, **training_attrs(attrs)}
    ds = _with_cf_attrs(ds)
    for name in ("overlap", "overlap_group", "overlap_eps", "overlap_lag"):
        ds[name].attrs["overlap_f"] = config.overlap_f  # eps = std(theta(tau_w)) / overlap_f
    return ds


def _with_cf_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Give every variable and coordinate its ``long_name`` and ``units``."""
    labels.label(ds)
    for name, var in ds.variables.items():
        if name in ATTRS:
            var.attrs = {"long_name": ATTRS[name][0], "units": ATTRS[name][1]}
    return ds


def combine_runs(datasets: Sequence[xr.Dataset], provenance: dict[str, Any]) -> xr.Dataset:
    """Tile observables (one run's, or a seed pack's) into the study along (depth, width, seed).

    New-style combine keywords keep ``loss`` on (depth, width, seed, time): with the old defaults
    xarray broadcast the ragged ``group`` dim (layer1..layer{d}, readout) into every variable. Only
    group variables are padded (NaN; 0 parameters). The runs must form the full grid product.
    """
    if not datasets:
        raise DataError("study: no runs to combine; train the grid first")
    for ds in datasets:
        if any(d not in ds.dims for d in RUN_DIMS) or "data_floor" not in ds.attrs:
            raise DataError(f"study: {dict(ds.sizes)} are not a run's observables; re-create them")
    blocks = [itertools.product(*(ds[d].values.tolist() for d in RUN_DIMS)) for ds in datasets]
    runs = [tuple(run) for block in blocks for run in block]
    ids = ["d{}_w{}_s{}".format(*r) for r in runs]
    if len(set(runs)) < len(runs):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"study: runs {', '.join(dup)} given twice; pass each run once")
    grid = itertools.product(*(sorted({r[i] for r in runs}) for i in range(3)))
    missing = ["d{}_w{}_s{}".format(*r) for r in grid if r not in set(runs)]
    if missing:
        raise DataError(f"study: missing runs {', '.join(missing)}; run their observables first")
    floors = {float(ds.attrs["data_floor"]) for ds in datasets}
    steps = {tuple(ds["step"].values.tolist()) for ds in datasets}
    if len(floors) > 1 or len(steps) > 1:
        raise DataError("study: runs differ in data_floor or checkpoint grid; re-run the grid")
    study = xr.combine_by_coords(
        list(datasets),
        join="outer",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        combine_attrs="drop_conflicts",
        fill_value={"n_parameters_group": 0},
    )
    # training settings shared by every run (a mixed study keeps only what all runs share)
    shared = {
        a: value
        for a, value in training_attrs(datasets[0].attrs).items()
        if all(np.array_equal(ds.attrs.get(a), value) for ds in datasets)
    }
    study.attrs = {**shared, **provenance, "data_floor": floors.pop()}
    return study

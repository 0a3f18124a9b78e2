"""Observables of training runs (learning times, two-time MSD), as labelled arrays over the grid.

A run's ``trajectory.nc`` becomes its ``observables.nc``; :func:`combine_runs` tiles those into
``study.nc`` along (depth, width, seed). Time is counted in SGD steps (the ``step`` coordinate) and
in epochs (the ``time`` coordinate); the checkpoint grid is the same for every run of a study.
"""

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from bachglass.errors import DataError, ParamsError

log = logging.getLogger(__name__)

RUN_DIMS = ("depth", "width", "seed")
LAG_COORD = "time_since_tau_w"  # t' - tau_w, (tau_w, time); `lag` itself is msd_lag's dimension
TRAJECTORY_VARS = ("loss", "heldout_loss", "clip_fraction", "theta")
TRAJECTORY_ATTRS = ("n_parameters", "data_floor", "status", "diverged_step")
# how the run was trained, carried to the study
TRAINING_ATTRS = (
    "cell",
    "lr",
    "batch_size",
    "clip_norm",
    "steps",
    "checkpoints_per_decade",
    "dtype",
    "device",
)
STEPS, EPOCHS, NATS = "SGD steps", "epoch", "nat per note"
TAU_CLOCKS = {"tau": "step", "tau_epoch": "time"}  # variable: coordinate that measures its time
# name: (long_name, units) for every variable and coordinate we write
ATTRS = {
    "loss": ("training cross-entropy", NATS),
    "heldout_loss": ("held-out cross-entropy", NATS),
    "clip_fraction": ("fraction of SGD steps with clipped gradient norm", "1"),
    "tau": ("learning time: first checkpoint with smoothed loss <= data floor + eps", STEPS),
    "tau_epoch": ("learning time: first checkpoint with smoothed loss <= data floor + eps", EPOCHS),
    "msd": ("mean-square displacement of all parameters since tau_w", "1"),
    "msd_lag": ("mean-square displacement since tau_w on the common lag grid", "1"),
    "msd_group": ("mean-square displacement since tau_w within a parameter group", "1"),
    "n_parameters": ("number of trainable parameters", "1"),
    "n_parameters_group": ("number of trainable parameters in the group", "1"),
    "diverged": ("the run stopped on a non-finite loss", "1"),
    "diverged_step": ("SGD step of the first non-finite loss; -1: did not diverge", STEPS),
    "time": ("training time", EPOCHS),
    "step": ("training time", STEPS),
    "eps": ("learning-time threshold above the data floor", NATS),
    "tau_w": ("waiting time (snapped to the checkpoint grid)", STEPS),
    "tau_w_epoch": ("waiting time", EPOCHS),
    "lag": ("lag since tau_w", STEPS),
    LAG_COORD: ("lag t' - tau_w", STEPS),
    "group": ("parameter group", "1"),
    "depth": ("RNN layers", "1"),
    "width": ("hidden units per layer", "1"),
    "seed": ("initialisation and batch-order seed", "1"),
}


@dataclass(frozen=True)
class ObservablesConfig:
    """The ``observables`` section of params.yaml."""

    eps: Sequence[float]  # nats/note above the data floor
    smoothing_decades: float  # running-median window in log10(step)
    tau_w: Sequence[int]  # SGD steps


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


def msd(theta: xr.DataArray, tau_w_steps: Sequence[int], groups: xr.DataArray | None = None) -> xr.DataArray:
    """Two-time mean-square displacement Δ(τ_w, t') = mean_i (θ_i(t') - θ_i(τ_w))².

    Absolute-time convention (paper-spec 1.7f, v2): dims (..., tau_w, time), NaN for t' < τ_w,
    coordinate ``time_since_tau_w`` = t' - τ_w in steps. Computed in float64: the early
    differences of float32 snapshots are tiny. With ``groups`` (a label per param) the mean is
    taken within each group, which gives a ``group`` dim (sorted labels).
    """
    step = theta["step"]
    theta = theta.astype(np.float64)
    if groups is not None:
        theta = theta.assign_coords(group=("param", np.asarray(groups)))
    parts = []
    for tau_w in tau_w_steps:
        k = np.flatnonzero(step.values == tau_w)
        if k.size != 1:
            raise ValueError(f"tau_w {tau_w} is not a checkpoint step; snap_to_grid it first")
        sq = (theta - theta.isel(time=int(k[0]), drop=True)) ** 2
        delta = sq.mean("param") if groups is None else sq.groupby("group").mean("param")
        parts.append(delta.where(step >= tau_w))
    tau_w = np.asarray(tau_w_steps, dtype=np.int64)
    out = xr.concat(parts, dim="tau_w", coords="minimal", compat="override", join="exact")
    lag = step.values[None, :] - tau_w[:, None]  # (tau_w, time)
    out = out.assign_coords(tau_w=tau_w, **{LAG_COORD: (("tau_w", "time"), lag)})
    lead = [d for d in theta.dims if d not in ("time", "param")]
    order = [*lead, "group", "tau_w", "time"] if groups is not None else [*lead, "tau_w", "time"]
    return out.transpose(*order).rename("msd" if groups is None else "msd_group")


def _loglog_interp(x: np.ndarray, y: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """Linear interpolation of log y vs log x along y's last axis; NaN outside [x0, x-1].

    Written as y_i^(1-f) y_(i+1)^f so that Δ = 0 (a frozen net) interpolates to 0, not NaN.
    """
    out = np.full((*y.shape[:-1], xi.size), np.nan)
    if x.size == 0:
        return out
    inside = (xi >= x[0]) & (xi <= x[-1])
    if x.size == 1:
        out[..., inside] = y[..., :1]
        return out
    i = np.clip(np.searchsorted(x, xi[inside], side="right") - 1, 0, x.size - 2)
    f = (np.log(xi[inside]) - np.log(x[i])) / (np.log(x[i + 1]) - np.log(x[i]))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[..., inside] = y[..., i] ** (1 - f) * y[..., i + 1] ** f
    return out


def msd_on_lag_grid(msd: xr.DataArray, lags: Sequence[int]) -> xr.DataArray:
    """Δ(τ_w, τ) on a common log-spaced grid of lags τ (v1 convention), interpolated in log-log.

    A common grid lets Δ be compared and averaged across τ_w and runs (aging collapse vs τ/τ_w).
    Lag 0 (Δ = 0, no logarithm) is excluded; lags outside a τ_w's measured range are NaN.
    """
    lags = np.asarray(lags, dtype=np.int64)
    lead = [d for d in msd.dims if d not in ("tau_w", "time")]
    m = msd.transpose(*lead, "tau_w", "time")
    lag2d = m[LAG_COORD].transpose("tau_w", "time").values
    out = np.full((*m.shape[:-1], lags.size), np.nan)
    for j in range(m.sizes["tau_w"]):
        keep = lag2d[j] > 0
        out[..., j, :] = _loglog_interp(lag2d[j, keep], m.values[..., j, keep], lags)
    coords = {k: c for k, c in m.coords.items() if "time" not in c.dims}
    return xr.DataArray(out, dims=(*lead, "tau_w", "lag"), coords={**coords, "lag": lags})


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
        raise DataError(f"{where}: no {', no '.join(missing)}; re-create it with rule train_run")


def _alive(trajectory: xr.Dataset) -> xr.DataArray:
    """Checkpoints before the divergence (all finite-loss ones for a completed run)."""
    alive = trajectory["loss"].notnull()
    if trajectory.attrs["status"] == "diverged" and trajectory.attrs["diverged_step"] >= 0:
        alive = alive & (trajectory["step"] < trajectory.attrs["diverged_step"])
    return alive


def _learning_times(
    trajectory: xr.Dataset, alive: xr.DataArray, config: ObservablesConfig
) -> dict[str, xr.DataArray]:
    """``tau`` (SGD steps) and ``tau_epoch``; NaN instead of +inf for a diverged run."""
    smooth = smoothed_loss(trajectory["loss"].where(alive), config.smoothing_decades)
    floor = float(trajectory.attrs["data_floor"])
    out = {name: learning_time(smooth, floor, config.eps, clock) for name, clock in TAU_CLOCKS.items()}
    if trajectory.attrs["status"] == "diverged":
        out = {name: tau.where(np.isfinite(tau)) for name, tau in out.items()}
    return out


def run_observables(
    trajectory: xr.Dataset, config: ObservablesConfig, provenance: dict[str, Any]
) -> xr.Dataset:
    """All observables of one run (the ``observables.nc`` layout).

    A diverged run is not a censored one: its loss and θ are masked from the divergence on, its
    learning times for thresholds it had not reached are NaN (invalid), not +inf (censored), and
    ``diverged`` flags it. Thresholds reached before the divergence keep their learning time.
    """
    _check_trajectory(trajectory)
    attrs, step, alive = trajectory.attrs, trajectory["step"], _alive(trajectory)
    tau_w = snap_to_grid(config.tau_w, step.values)
    if tau_w.size == 0:
        raise ParamsError(f"params.yaml: observables.tau_w: all beyond step {int(step[-1])}")
    theta = trajectory["theta"].where(alive)
    total = msd(theta, tau_w)
    lags = step.values[(step.values > 0) & (step.values <= step.values[-1] - tau_w[0])]
    labels, counts = np.unique(trajectory["group"].values, return_counts=True)
    run = {d: trajectory[d].values for d in RUN_DIMS}
    ds = xr.Dataset(
        {
            **{v: trajectory[v] for v in ("loss", "heldout_loss", "clip_fraction")},
            **_learning_times(trajectory, alive, config),
            "msd": total,
            "msd_lag": msd_on_lag_grid(total, lags),
            "msd_group": msd(theta, tau_w, groups=trajectory["group"]),
            "n_parameters_group": xr.DataArray(counts, {"group": labels}, "group").expand_dims(run),
            "n_parameters": xr.DataArray(int(attrs["n_parameters"])).expand_dims(run),
            "diverged": xr.DataArray(attrs["status"] == "diverged").expand_dims(run),
            "diverged_step": xr.DataArray(
                int(attrs["diverged_step"]) if attrs["status"] == "diverged" else -1
            ).expand_dims(run),
        }
    )
    epochs = trajectory["time"].values[np.searchsorted(step.values, tau_w)]
    ds = ds.assign_coords(tau_w_epoch=("tau_w", epochs))
    carried = (*TRAJECTORY_ATTRS, *(a for a in TRAINING_ATTRS if a in attrs))
    ds.attrs = {**provenance, **{a: attrs[a] for a in carried}}
    return _with_cf_attrs(ds)


def _with_cf_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Give every variable and coordinate its ``long_name`` and ``units``."""
    for name, var in ds.variables.items():
        if name in ATTRS:
            var.attrs = {"long_name": ATTRS[name][0], "units": ATTRS[name][1]}
    return ds


def combine_runs(datasets: Sequence[xr.Dataset], provenance: dict[str, Any]) -> xr.Dataset:
    """Tile per-run observables into the study along (depth, width, seed).

    New-style combine keywords keep ``loss`` on (depth, width, seed, time): with the old defaults
    xarray broadcast the ragged ``group`` dim (layer1..layer{d}, readout) into every variable. Only
    group variables are padded (NaN; 0 parameters). The runs must form the full grid product.
    """
    if not datasets:
        raise DataError("study: no runs to combine; train the grid first")
    for ds in datasets:
        if any(ds.sizes.get(d) != 1 for d in RUN_DIMS) or "data_floor" not in ds.attrs:
            raise DataError(f"study: {dict(ds.sizes)} is not one run's observables; re-create it")
    runs = [tuple(int(ds[d].item()) for d in RUN_DIMS) for ds in datasets]
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
        a: datasets[0].attrs[a]
        for a in TRAINING_ATTRS
        if a in datasets[0].attrs
        and all(np.array_equal(ds.attrs.get(a), datasets[0].attrs[a]) for ds in datasets)
    }
    study.attrs = {**shared, **provenance, "data_floor": floors.pop()}
    return study

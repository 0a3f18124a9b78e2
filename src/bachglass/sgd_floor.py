"""The SGD noise floor L_SGD(η, B), measured, and the restart test of check 7.

With a constant step η and minibatches of B chorales, the training loss of a net that can fit its
data does not go to the data floor: minibatch noise keeps it at a floor L_SGD(η, B) above it
(docs/science.md §1.7 g). The floor runs train the widest nets, unclipped, at several (η, B) and measure
the late plateau as the asymptote L_∞ of a power-law fit L_∞ + B t^−α over the late window
(:func:`bachglass.loss_fits.fit_power_law`), per seed. Its excess over the data floor is fitted as
L_SGD ∝ (η/B)^κ in log-log, with a seed-bootstrap interval.

The restart test: the runs of the first setting are continued from step ``restart_step`` at η/2,
η/4, ... (same B, each its own minibatch order). If the floor is set by SGD noise it drops with η,
and the time at which the loss comes within ``floor_factor`` of it (where aging is said to break
down) moves with it.

A floor run that diverged (NaN loss, or its loss back above the initial loss of the net, by
:func:`bachglass.divergence.divergence_step`) has no floor: it is left out (``*_diverged``) and
the medians run over the other seeds. The runs are trained by :mod:`bachglass.floor_runs`.
"""

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from bachglass import labels
from bachglass.divergence import divergence_step
from bachglass.errors import DataError
from bachglass.fits import json_number
from bachglass.io import setting_id
from bachglass.loss_fits import fit_power_law

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloorConfig:
    """The ``sgd_floor`` section of params.yaml (see the comments there)."""

    depth: int
    width: int
    seed: list[int]
    settings: list[dict]  # [{lr, batch_size}, ...]; the first is the restarts' parent
    steps: int
    window_start: int  # SGD steps: the plateau is the L_∞ of a power-law fit over [window_start, end]
    # (for a restart: steps since the restart)
    restart_step: int
    restart_factors: list[float]
    restart_steps: int


def diverged(runs: xr.Dataset, initial: np.ndarray | None = None) -> xr.DataArray:
    """Per seed: the run diverged (NaN loss, or a loss above ``initial``, the net's loss at step 0).

    ``initial`` defaults to the run's own first checkpoint; a restart passes its parent's (its own
    start is the parent's late loss, which minibatch noise alone may exceed).
    """
    loss = runs["loss"].transpose("seed", ...).values.reshape(runs.sizes["seed"], -1)
    step = runs["step"].values
    bad = ~np.isfinite(loss)
    nan_step = np.where(bad.any(1), step[bad.argmax(1)], -1)
    start = loss[:, :1] if initial is None else np.asarray(initial, float).reshape(-1, 1)
    first = divergence_step(np.concatenate([start, loss], 1), np.concatenate([step[:1], step]), nan_step)
    return xr.DataArray(first >= 0, coords={"seed": runs["seed"].values}, dims="seed")


def _without(runs: xr.Dataset, flags: xr.DataArray) -> xr.Dataset:
    """Blank the loss of the diverged runs (all NaN): they have no floor and no floor time."""
    return runs.assign(loss=runs["loss"].where(~flags))


def _warn_diverged(runs: Sequence[xr.Dataset], flags: Sequence[xr.DataArray]) -> None:
    """Name the floor runs left out as diverged (the log of fit_study)."""
    for r, f in zip(runs, flags, strict=True):
        if f.any():
            what = (
                f"restart x{r.attrs['restart_factor']:g}" if "restart_factor" in r.attrs else "floor setting"
            )
            seeds = ", ".join(str(int(v)) for v in f["seed"].values[f.values])
            log.warning(
                "sgd_floor: %s lr %g, B %d: seed %s diverged; left out of the floor",
                what,
                float(r.attrs["lr"]),
                int(r.attrs["batch_size"]),
                seeds,
            )


def _bootstrap_medians(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Seed-bootstrap medians (n_boot, setting), resampling the seeds of each setting that have a floor."""
    boot = np.full((n_boot, values.shape[0]), np.nan)
    for k, row in enumerate(values):
        valid = row[np.isfinite(row)]
        if valid.size:
            boot[:, k] = np.median(valid[rng.integers(0, valid.size, size=(n_boot, valid.size))], axis=1)
    return boot


def floor_of(runs: xr.Dataset, window_start: int, floor: float) -> xr.DataArray:
    """L_∞ per seed: the plateau of the late window of each run's loss (NaN for a diverged run)."""
    step = runs["step"].values
    values = [
        fit_power_law(step, runs["loss"].sel(seed=s).values.ravel(), window_start, floor=floor)[0]
        for s in runs["seed"].values
    ]
    return xr.DataArray(values, coords={"seed": runs["seed"].values}, dims="seed")


def floor_time(runs: xr.Dataset, level: float) -> xr.DataArray:
    """First step at which each run's loss is within ``level`` (nats/note, per seed or scalar); +inf never."""
    loss = runs["loss"].transpose("seed", ...)
    below = loss <= level
    first = below.argmax("time")
    step = runs["step"].values
    times = np.where(below.any("time").values, step[first.values.ravel()], np.inf)
    out = xr.DataArray(times.reshape(first.shape), coords=first.coords, dims=first.dims)
    return out.where(loss.notnull().any("time"))  # a run without a loss (diverged): NaN, not never


def kappa_fit(ratio: np.ndarray, excess: np.ndarray) -> float:
    """Slope κ of log excess against log (η/B), over the settings with a positive excess."""
    keep = np.isfinite(excess) & (excess > 0)
    if len(np.unique(ratio[keep])) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ratio[keep]), np.log(excess[keep]), 1)[0])


def analyse(
    settings: Sequence[xr.Dataset],
    restarts: Sequence[xr.Dataset],
    config: FloorConfig,
    n_boot: int,
    ci: float,
    seed: int,
    floor_factor: float,
) -> xr.Dataset:
    """Measure the floor per (η, B) with its seed-bootstrap CI, κ with its CI, and the restart test.

    Variables (dims ``setting`` for the floor runs, ``restart`` for the restarts):
    ``sgd_floor_run`` (setting, floor_seed) L_∞ per run; ``sgd_floor_measured`` and its ``_lo``/``_hi``
    bounds (setting); ``sgd_floor_excess`` (over the data floor); ``sgd_floor_kappa`` with
    ``_lo``/``_hi``; ``restart_floor`` (restart), ``restart_floor_run`` (restart, floor_seed: per run)
    and ``restart_floor_ratio`` (over the parent's);
    ``floor_time`` (setting / restart, floor_seed): first step with loss ≤ floor_factor × the floor;
    ``sgd_floor_run_diverged``, ``restart_diverged``: the runs left out (logged). Medians and the
    bootstrap run over the seeds with a floor.
    """
    if not settings:
        raise DataError("sgd_floor: no floor runs; list sgd_floor.settings")
    data_floor = float(settings[0].attrs["data_floor"])
    lrs = np.array([float(s.attrs["lr"]) for s in settings])
    batches = np.array([int(s.attrs["batch_size"]) for s in settings])
    parent = settings[0]  # as trained: its initial loss judges the restarts
    flags = [diverged(s) for s in settings]
    _warn_diverged(settings, flags)
    settings = [_without(s, f) for s, f in zip(settings, flags, strict=True)]
    per_run = xr.concat([floor_of(s, config.window_start, data_floor) for s in settings], dim="setting")
    seeds = per_run["seed"].values
    values = per_run.values  # (setting, seed); NaN: diverged, or no fit
    boot = _bootstrap_medians(values, n_boot, np.random.default_rng(seed))  # (boot, setting)
    with warnings.catch_warnings():  # a setting whose every seed diverged has no floor: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        floor = np.nanmedian(values, axis=1)
        lo, hi = np.nanquantile(boot, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    ratio = lrs / batches
    kappa = kappa_fit(ratio, floor - data_floor)
    boot_kappa = np.array([kappa_fit(ratio, b - data_floor) for b in boot])
    n_fitted = int(np.isfinite(boot_kappa).sum())
    k_lo, k_hi = np.nanquantile(boot_kappa, [(1 - ci) / 2, (1 + ci) / 2]) if n_fitted else (np.nan, np.nan)
    ids = [setting_id(a, b) for a, b in zip(lrs, batches, strict=True)]
    setting = {
        "setting": ("setting", ids, {"long_name": "floor setting (learning rate, batch size)", "units": ""})
    }
    coords = setting | {
        "lr": ("setting", lrs, labels.attrs("lr")),
        "batch_size": ("setting", batches, labels.attrs("batch_size")),
        "lr_over_batch": ("setting", ratio, {"long_name": "learning rate over batch size η/B", "units": "1"}),
    }

    def var(
        values: Any, long_name: str, dims: tuple = ("setting",), units: str = "nat per note"
    ) -> xr.DataArray:
        return xr.DataArray(values, dims=dims, attrs={"long_name": long_name, "units": units})

    out = xr.Dataset(
        {
            "sgd_floor_run": var(values, "late-time plateau L_inf of each floor run", ("setting", "seed")),
            "sgd_floor_measured": var(floor, "SGD floor: median over seeds of the plateau L_inf"),
            "sgd_floor_measured_lo": var(
                lo, f"lower end of the {ci:.0%} seed-bootstrap interval of the floor"
            ),
            "sgd_floor_measured_hi": var(
                hi, f"upper end of the {ci:.0%} seed-bootstrap interval of the floor"
            ),
            "sgd_floor_excess": var(floor - data_floor, "SGD floor above the data floor"),
            "sgd_floor_run_diverged": var(
                xr.concat(flags, "setting").values,
                "the run diverged (NaN, or above its initial loss): no floor",
                ("setting", "seed"),
                "1",
            ),
            "sgd_floor_kappa": var(kappa, "exponent kappa of L_SGD - data floor ∝ (η/B)^kappa", (), "1"),
            "sgd_floor_kappa_lo": var(k_lo, f"lower end of the {ci:.0%} interval of kappa", (), "1"),
            "sgd_floor_kappa_hi": var(k_hi, f"upper end of the {ci:.0%} interval of kappa", (), "1"),
            "sgd_floor_kappa_replicas": var(n_fitted, "bootstrap replicas with a kappa fit", (), "1"),
            "floor_time": var(
                xr.concat(
                    [floor_time(s, floor_factor * f) for s, f in zip(settings, floor, strict=True)], "setting"
                ).values,
                f"first step with loss <= {floor_factor:g} x the floor (+inf: never; NaN: diverged)",
                ("setting", "seed"),
                "SGD steps",
            ),
        },
        coords=coords | {"seed": seeds},
        attrs={
            "floor_depth": config.depth,
            "floor_width": config.width,
            "floor_window_start": config.window_start,
            "data_floor": data_floor,
        },
    )
    if restarts:
        test = _restart_test(restarts, parent, floor[0], config, data_floor, floor_factor)
        out = out.merge(test).assign_attrs(restart_step=test.attrs["restart_step"])
    out = out.rename(seed="floor_seed")  # not the grid's seeds: its own dim in fits.nc
    out["floor_seed"].attrs = {"long_name": "seed of a floor run", "units": "1"}
    return out


def _restart_test(
    restarts: Sequence[xr.Dataset],
    parent: xr.Dataset,
    parent_floor: float,
    config: FloorConfig,
    data_floor: float,
    floor_factor: float,
) -> xr.Dataset:
    """Floor of each restart (η·f) against its parent's, and when each comes within floor_factor of it."""
    factors = np.array([float(r.attrs["lr"]) / float(parent.attrs["lr"]) for r in restarts])
    initial = parent["loss"].isel(time=0)  # the net's loss at initialisation, per seed
    flags = [diverged(r, initial.sel(seed=r["seed"]).values.ravel()) for r in restarts]
    _warn_diverged(restarts, flags)
    restarts = [_without(r, f) for r, f in zip(restarts, flags, strict=True)]
    per_seed = np.array([floor_of(r, config.window_start, data_floor).values for r in restarts])
    with warnings.catch_warnings():  # a restart whose every seed diverged has no floor: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        floors = np.nanmedian(per_seed, axis=1)
    times = np.array(
        [
            floor_time(r, floor_factor * f).values + int(r.attrs["restart_step"])
            for r, f in zip(restarts, floors, strict=True)
        ]
    )
    coords = {
        "restart": ("restart", factors, {"long_name": "learning-rate factor f of a restart", "units": "1"})
    }
    return xr.Dataset(
        {
            "restart_floor": (
                "restart",
                floors,
                {"long_name": "plateau L_inf after a restart at lr x factor", "units": "nat per note"},
            ),
            "restart_floor_run": (
                ("restart", "seed"),
                per_seed,
                {"long_name": "plateau L_inf of each restarted run (NaN: diverged)", "units": "nat per note"},
            ),
            "restart_floor_ratio": (
                "restart",
                floors / parent_floor,
                {"long_name": "restart floor over the parent's", "units": "1"},
            ),
            "restart_diverged": (
                ("restart", "seed"),
                xr.concat(flags, "restart").values,
                {"long_name": "the restart diverged (NaN, or above the net's initial loss)", "units": "1"},
            ),
            "restart_floor_time": (
                ("restart", "seed"),
                times,
                {
                    "long_name": f"first step (from the parent's start) with loss <= {floor_factor:g} x "
                    "the restart's floor",
                    "units": "SGD steps",
                },
            ),
        },
        coords=coords,
        attrs={"restart_step": int(restarts[0].attrs["restart_step"])},
    )


def at_setting(floor: xr.Dataset | None, lr: Any, batch_size: Any) -> float | None:
    """Return the measured floor at (``lr``, ``batch_size``), the study's own; None where not measured."""
    if floor is None or lr is None or batch_size is None:
        return None
    match = (np.isclose(floor["lr"].values, float(lr))) & (floor["batch_size"].values == int(batch_size))
    return float(floor["sgd_floor_measured"].values[match][0]) if match.any() else None


def metrics(floor: xr.Dataset | None) -> dict:
    """Headline numbers for ``dvc metrics``: the floor per setting, κ and its interval, the restart ratios."""
    if floor is None:
        return {}

    out = {
        "floor": {
            str(k): json_number(floor["sgd_floor_measured"].sel(setting=k)) for k in floor["setting"].values
        },
        "kappa": json_number(floor["sgd_floor_kappa"]),
        "kappa_lo": json_number(floor["sgd_floor_kappa_lo"]),
        "kappa_hi": json_number(floor["sgd_floor_kappa_hi"]),
    }
    if "restart_floor_ratio" in floor:
        out["restart_floor_ratio"] = {
            f"x{float(f):g}": json_number(floor["restart_floor_ratio"].sel(restart=f))
            for f in floor["restart"].values
        }
    return {"sgd_floor": out}

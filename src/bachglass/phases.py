"""Generalisation phases of each (depth, width): comprehension, grokking, memorisation, confusion.

The rule of Liu et al. (2022; docs/science.md Part 2 d), on next-note accuracies: t_train is the first
step at which the training accuracy reaches ``train_accuracy``, t_test the first at which the
held-out accuracy reaches ``heldout_fraction`` x the best final held-out accuracy of the study
(held-out Bach never reaches an absolute 0.9, so the threshold is relative). Then

- comprehension: both reached, t_test - t_train <= ``grokking_gap`` (held-out first counts too);
- grokking: both reached, t_test - t_train > ``grokking_gap``;
- memorisation: train reached, held-out not;
- confusion: train not reached, whether held-out is or not. Liu et al. define confusion as neither
  reached; held-out without train does not occur in their setup, and a net that does not fit its
  training set has neither memorised it nor understood it, so it is confusion here too (logged).

A diverged run (NaN accuracy from some step on, or ``diverged`` set: NaN, or knocked back above its
initial loss at ``diverged_step``) is left out of the seed mean; on its own only its accuracies
before the divergence count: it is ``undetermined`` when it did not reach a threshold before
diverging (it might have later), and classified as usual when it reached both. Without held-out
chorales every phase is ``undetermined``.
"""

import logging
from dataclasses import dataclass

import numpy as np
import xarray as xr

from bachglass.errors import DataError
from bachglass.fits import json_number

log = logging.getLogger(__name__)

COMPREHENSION, GROKKING, MEMORISATION, CONFUSION, UNDETERMINED = 0, 1, 2, 3, -1
FLAG_VALUES = [UNDETERMINED, COMPREHENSION, GROKKING, MEMORISATION, CONFUSION]  # increasing (searchsorted)
FLAG_MEANINGS = "undetermined comprehension grokking memorisation confusion"
RUN_DIMS = ("depth", "width", "seed", "time")
PHASE_VARS = ("generalisation_phase", "run_generalisation_phase")
STEPS = "SGD steps"


@dataclass(frozen=True)
class PhasesConfig:
    """The ``phases`` section of params.yaml, key for key (see the comments there)."""

    train_accuracy: float
    heldout_fraction: float
    grokking_gap: int  # SGD steps


def first_step(accuracy: xr.DataArray, level: float | xr.DataArray) -> xr.DataArray:
    """First SGD step at which ``accuracy`` >= ``level``; +inf when never (NaN never counts)."""
    reached = accuracy >= level
    t = accuracy["step"].astype(np.float64).where(reached).min("time").fillna(np.inf)
    return t.transpose(*(d for d in accuracy.dims if d != "time"))


def classify(t_train: xr.DataArray, t_test: xr.DataArray, grokking_gap: int) -> xr.DataArray:
    """Phase codes from the two times (+inf: not reached); see the module docstring for the rule."""
    train, test = np.isfinite(t_train), np.isfinite(t_test)
    gap = t_test - t_train
    phase = xr.where(
        train & test,
        xr.where(gap <= grokking_gap, COMPREHENSION, GROKKING),
        xr.where(train, MEMORISATION, CONFUSION),
    )
    return phase.astype(np.int8)


def _accuracies(study: xr.Dataset, source: str) -> tuple[xr.DataArray, xr.DataArray]:
    """Return the two accuracy variables as (depth, width, seed, time), or raise a ``DataError``."""
    redo = f"re-create it with the accuracy probes: snakemake {source} -f"
    out = []
    for name in ("accuracy", "heldout_accuracy"):
        if name not in study.data_vars:
            raise DataError(f"{source}: no variable '{name}'; {redo}")
        if set(study[name].dims) != set(RUN_DIMS):
            raise DataError(f"{source}: {name} has dims {study[name].dims}, not {RUN_DIMS}; {redo}")
        out.append(study[name].transpose(*RUN_DIMS))
    if "step" not in out[0].coords:
        raise DataError(f"{source}: no coordinate 'step' on time; {redo}")
    return out[0], out[1]


def _diverged(study: xr.Dataset, *accuracies: xr.DataArray) -> xr.DataArray:
    """Flag the runs whose accuracy is NaN at some checkpoint, or that the study marks ``diverged``."""
    diverged = xr.concat([acc.isnull().any("time") for acc in accuracies], "kind").any("kind")
    if "diverged" in study:
        diverged = diverged | study["diverged"].astype(bool)
    return diverged.transpose("depth", "width", "seed")


def heldout_threshold(heldout_mean: xr.DataArray, fraction: float) -> tuple[float, float]:
    """(threshold, best final accuracy): ``fraction`` x the best last-checkpoint seed-mean accuracy.

    The best is the max over (depth, width) of the seed-mean held-out accuracy at the last checkpoint;
    NaN when no (depth, width) has a valid run.
    """
    final = heldout_mean.isel(time=-1)
    best = float(final.max()) if final.notnull().any() else np.nan
    return fraction * best, best


def _run_phase(t_train: xr.DataArray, t_test: xr.DataArray, diverged: xr.DataArray, gap: int) -> xr.DataArray:
    """Per-run phases; a diverged run that missed a threshold before diverging is undetermined."""
    missed = ~(np.isfinite(t_train) & np.isfinite(t_test))
    return classify(t_train, t_test, gap).where(~(diverged & missed), UNDETERMINED).astype(np.int8)


def generalisation_phases(
    study: xr.Dataset, config: PhasesConfig, source: str = "results/study.nc"
) -> xr.Dataset:
    """Phase of each (depth, width) on its seed-mean curves, and of each run (``run_*`` variables).

    The seed mean runs over the seeds that did not diverge (``accuracy_n_seeds``); a (depth, width)
    with none has NaN times and is undetermined. Without held-out chorales (held-out accuracy NaN
    everywhere) t_test is NaN and every phase undetermined (logged). ``source`` names the study in
    error messages. The names do not clash with those of :func:`bachglass.fits.fit_study`, so both
    merge into ``fits.nc``.
    """
    train, heldout = _accuracies(study, source)
    if "diverged_step" in study:  # a run knocked back keeps its accuracies; they count until then
        after = (study["diverged_step"] >= 0) & (study["step"] >= study["diverged_step"])
        train, heldout = train.where(~after), heldout.where(~after)
    measured = heldout.notnull().any()  # 0-d; False without held-out chorales
    if not measured:
        log.warning(
            "%s: heldout_accuracy is NaN everywhere (no held-out chorales?): phases undetermined", source
        )
    diverged = _diverged(study, train, heldout) if measured else _diverged(study, train)
    n_seeds = (~diverged).sum("seed")
    ok = (n_seeds > 0) & measured
    mean = [acc.where(~diverged).mean("seed") for acc in (train, heldout)]
    threshold, best = heldout_threshold(mean[1], config.heldout_fraction)
    t_train = first_step(mean[0], config.train_accuracy).where(n_seeds > 0)
    t_test = first_step(mean[1], threshold).where(ok)
    run_t_train = first_step(train, config.train_accuracy)
    run_t_test = first_step(heldout, threshold).where(measured)
    run_phase = _run_phase(run_t_train, run_t_test, diverged, config.grokking_gap)
    ds = xr.Dataset(
        {
            "t_train": t_train,
            "t_test": t_test,
            "generalisation_phase": classify(t_train, t_test, config.grokking_gap)
            .where(ok, UNDETERMINED)
            .astype(np.int8),
            "accuracy_n_seeds": n_seeds.astype(np.int64),
            "run_t_train": run_t_train,
            "run_t_test": run_t_test,
            "run_generalisation_phase": run_phase.where(measured, UNDETERMINED).astype(np.int8),
            "run_diverged": diverged,
            "heldout_threshold": xr.DataArray(threshold),
            "best_heldout_accuracy": xr.DataArray(best),
        }
    )
    _log_test_before_train(ds)
    return _with_attrs(ds, config)


def _log_test_before_train(ds: xr.Dataset) -> None:
    """Log the (depth, width) that reach the held-out threshold but never the training one (confusion)."""
    odd = np.isfinite(ds["t_test"]) & np.isinf(ds["t_train"])
    if odd.any():
        pairs = odd.stack(dw=("depth", "width"))
        names = [f"d{int(d)}_w{int(w)}" for d, w in pairs["dw"].values[pairs.values]]
        log.info("held-out threshold reached without the training one (confusion): %s", ", ".join(names))


ATTRS = {  # name: (long_name, units)
    "t_train": ("first step with seed-mean training accuracy >= train_accuracy", STEPS),
    "t_test": ("first step with seed-mean held-out accuracy >= heldout_threshold", STEPS),
    "generalisation_phase": ("generalisation phase of the seed-mean curves (Liu et al. 2022)", "1"),
    "accuracy_n_seeds": ("seeds in the seed-mean accuracy (runs that did not diverge)", "1"),
    "run_t_train": ("first step with training accuracy >= train_accuracy", STEPS),
    "run_t_test": ("first step with held-out accuracy >= heldout_threshold", STEPS),
    "run_generalisation_phase": ("generalisation phase of each run (Liu et al. 2022)", "1"),
    "run_diverged": ("run left out of the seed mean: NaN accuracy or diverged", "1"),
    "heldout_threshold": ("heldout_fraction x best_heldout_accuracy", "1"),
    "best_heldout_accuracy": ("max over (depth, width) of the final seed-mean held-out accuracy", "1"),
}


def _with_attrs(ds: xr.Dataset, config: PhasesConfig) -> xr.Dataset:
    """CF attributes: long_name and units everywhere, flags and the rule's settings on the phases.

    The settings go on the phase variables too: merged into ``fits.nc`` the dataset attrs are the fits'.
    """
    settings = {
        "train_accuracy": config.train_accuracy,
        "heldout_fraction": config.heldout_fraction,
        "grokking_gap": config.grokking_gap,
    }
    for name, (long_name, units) in ATTRS.items():
        ds[name].attrs = {"long_name": long_name, "units": units}
    for name in PHASE_VARS:
        ds[name].attrs |= {"flag_values": np.array(FLAG_VALUES, np.int8), "flag_meanings": FLAG_MEANINGS}
        ds[name].attrs |= settings
    ds.attrs = settings | {"not_reached": "t = +inf: threshold never reached within the run"}
    return ds


def metrics(phases: xr.Dataset) -> dict:
    """Headline numbers for ``dvc metrics``: the threshold, and per depth the widths of each phase.

    One top-level key, ``generalisation_phases``, so that it merges with :func:`bachglass.fits.metrics`.
    """
    out: dict = {k: json_number(phases[k]) for k in ("heldout_threshold", "best_heldout_accuracy")}
    phase = phases["generalisation_phase"]
    for d in phase["depth"].values:
        row = phase.sel(depth=d)
        out[f"d{int(d)}"] = {
            name: [int(w) for w in row["width"].values[row.values == code]]
            for code, name in zip(FLAG_VALUES, FLAG_MEANINGS.split(), strict=True)
        }
    return {"generalisation_phases": out}

"""Long names and units of the quantities that several output files hold: the one place they are written.

A variable or coordinate that several steps write (the loss in a trajectory, in the observables and in
the stability scan; the run coordinates everywhere) takes its CF ``long_name`` and ``units`` from
:data:`LABELS`; a quantity that one module alone computes keeps its label beside its definition there.
``tests/test_shape.py`` checks that no name is labelled in two places, and ``tests/test_workflow.py``
that every file of a study labels each name alike.
"""

from typing import Any

import xarray as xr

STEPS, EPOCHS, NATS = "SGD steps", "epoch", "nat per note"

LABELS = {  # name: (long_name, units)
    "depth": ("RNN layers", "1"),
    "width": ("hidden units per layer", "1"),
    "seed": ("initialisation and batch-order seed", "1"),
    "time": ("training time", EPOCHS),
    "step": ("training time", STEPS),
    "group": ("parameter group", "1"),
    "loss": ("training cross-entropy (full training set)", NATS),
    "heldout_loss": ("held-out cross-entropy", NATS),
    "clip_fraction": ("fraction of the steps since the previous checkpoint that were clipped", "1"),
    "grad_norm_max": ("largest minibatch gradient norm (before any clip) since the previous checkpoint", "1"),
    "theta": ("parameter snapshot, flattened in model.param_specs order", "1"),
    "sharpness": (
        "top eigenvalue of the training loss's Hessian in theta (power iteration; NaN: not measured)",
        NATS,
    ),
    "sharpness_residual": (
        "relative residual ||H v - lambda v|| / |lambda| of the sharpness (NaN: not measured)",
        "1",
    ),
    "status": ("how the run ended: completed or diverged", ""),  # a string: no unit
    "diverged_step": (
        "SGD step at which the run diverged, -1: none (trainer: first non-finite loss; "
        "after extraction also a training loss back above its initial value)",
        STEPS,
    ),
    "ensemble_size": ("runs trained with it as one batched model (round-off only)", "1"),
    "n_parameters": ("number of trainable parameters", "1"),
    "temperature": ("Langevin temperature T", "nat per note"),
    "lr": ("SGD learning rate η", "1"),
    "batch_size": ("chorales per SGD step", "1"),
}


def attrs(name: str) -> dict[str, Any]:
    """Return the CF attributes of ``name``: ``{"long_name": ..., "units": ...}``."""
    long_name, units = LABELS[name]
    return {"long_name": long_name, "units": units}


def label(ds: xr.Dataset) -> xr.Dataset:
    """Give every variable and coordinate of ``ds`` that :data:`LABELS` names its attributes, in place."""
    for name, var in ds.variables.items():
        if name in LABELS:
            var.attrs |= attrs(name)
    return ds

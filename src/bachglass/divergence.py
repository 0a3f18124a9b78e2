"""When a run diverged: the one criterion of the study, the stability scan and the SGD-floor runs.

A module of its own (numpy only), so that the steps which apply it (the scan, the extraction, the
floor analysis) depend on this criterion and not on each other's code.
"""

import numpy as np


def divergence_step(loss: np.ndarray, step: np.ndarray, nan_step: np.ndarray) -> np.ndarray:
    """First step at which a run diverged, -1 where it did not (the study's one criterion).

    A run diverged when its loss became NaN (``nan_step`` >= 0, from the trainer) or when its full
    training-set loss at a checkpoint went back above its value at the first checkpoint (step 0):
    a net knocked back by a gradient spike. ``loss`` is (..., time) on the checkpoint ``step`` grid,
    ``nan_step`` the trainer's step per run (...). The stability scan and the study use it both.
    """
    never = np.iinfo(np.int64).max
    with np.errstate(invalid="ignore"):
        above = np.where(loss > loss[..., :1], step, never).min(-1)
    first = np.minimum(above, np.where(nan_step >= 0, nan_step, never))
    return np.where(first < never, first, -1)

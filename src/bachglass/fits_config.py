"""The ``fits`` section of params.yaml as the fitting modules read it (fits, loss_fits, critical)."""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FitsConfig:
    """The ``fits`` section of params.yaml, key for key (see the comments there)."""

    window_start: Sequence[int]  # SGD steps; the first window is reported, the others give sensitivity
    tail_factor: float  # a run's tail starts at tail_factor x its learning time at the largest eps
    tail_min_decades: float  # ... and spans at least this many decades, else the run has no tail
    floor_factor: float
    max_width_ratio: float
    min_widths: int
    extrapolation_eps: int
    aging_tau_w_min: int
    mu_max: float
    n_boot: int
    ci: float
    seed: int

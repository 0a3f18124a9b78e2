"""Synthetic studies with known truth, at a real study's design, for calibrating the checks.

Each generator returns the part of ``fits.nc`` one check judges, computed by the pipeline's own
fit code from synthetic inputs: learning times τ (checks 3-5), loss curves (check 1, and check 2's
phases from their plateaus) and Δ(τ_w, τ) (checks 6, 7). :class:`Design` is what a synthetic study
shares with the real one (read from params.yaml); :class:`Truth` is what it puts in.
:mod:`bachglass.calibration` runs the checks on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from bachglass.aging import collapse
from bachglass.critical import critical
from bachglass.fits import OVER, UNDER, FitsConfig, classify, crossing_time
from bachglass.loss_fits import power_laws, tail_fits
from bachglass.observables import learning_time, smoothed_loss
from bachglass.params import seeds_of
from bachglass.sgd_floor import FloorConfig, analyse
from bachglass.trajectory import checkpoint_steps

L0 = 3.2  # nats/note at initialisation (mean ln vocab size)


@dataclass(frozen=True)
class Design:
    """What a synthetic study shares with the real one: grid, budget, thresholds, floors, fits."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    seeds: int
    steps: int
    per_decade: int
    eps: tuple[float, ...]
    smoothing_decades: float  # of the loss before thresholds and fits
    data_floor: float  # nats/note (the training set's)
    floor_ref: float  # max(data floor, SGD floor measured at the study's eta, B)
    fits: FitsConfig
    aging_widths: tuple[int, ...]
    aging_seeds: int
    aging_steps: int
    aging_tau_w: tuple[int, ...]
    floor: FloorConfig  # the SGD-floor runs and their restarts (check 7's restart test)

    @classmethod
    def from_params(cls, params: dict, data_floor: float, floor_ref: float) -> Design:
        """Read the design of params.yaml (grid, train, observables, aging, fits) with the given floors."""
        aging = params["aging"]
        return cls(
            depths=tuple(params["grid"]["depth"]),
            widths=tuple(params["grid"]["width"]),
            seeds=len(seeds_of(params["grid"]["seed"])),
            steps=int(params["train"]["steps"]),
            per_decade=int(params["train"]["checkpoints_per_decade"]),
            eps=tuple(params["observables"]["eps"]),
            smoothing_decades=float(params["observables"]["smoothing_decades"]),
            data_floor=data_floor,
            floor_ref=floor_ref,
            fits=FitsConfig(**params["fits"]),
            aging_widths=tuple(aging["width"]) or tuple(params["grid"]["width"]),
            aging_seeds=len(seeds_of(aging["seed"])) or len(seeds_of(params["grid"]["seed"])),
            aging_steps=int(aging["steps"] or params["train"]["steps"]),
            aging_tau_w=tuple(aging["tau_w"] or params["observables"]["tau_w"]),
            floor=FloorConfig(**params["sgd_floor"]),
        )


@dataclass(frozen=True)
class Truth:
    """The synthetic study's truth. Defaults: the default study's measured scale (docs/calibration.md).

    Learning times: τ(d, w, ε) = A g^(nu-1) (w - w_c(d, ε))^-nu x e^(scatter z_run + jitter z_eps),
    w_c(d, ε) = w_c*(d) - shift ε, w_c*(d) falling linearly by ``depth_drop`` from the first to the
    last depth; +inf where w <= w_c or τ beyond the budget. Loss curves: L = L_inf(w) + (L0 - L_inf)
    (1 + t/τ_d)^-alpha (a plateau, a drop at τ_d, then a power-law tail), or an exponential approach
    when ``tail`` is "exponential". Aging: Δ = D (τ/τ_w^mu)^0.5, frozen from t* on when ``freeze``.
    """

    w_c_star: float = 13.0  # at the first depth: w_c(eps 0.3) = 10, as measured at d = 2 (10.1)
    depth_drop: float = 2.0  # w_c*(first depth) - w_c*(last depth)
    shift: float = 10.0  # w_c(eps) = w_c* - shift eps: w_c rises by 2 widths from eps 0.3 to 0.1
    nu: float = 1.0
    amplitude: float = 1.8e5  # SGD steps: tau = A/(w - w_c), as fitted at d = 2, eps 0.3
    gap_ref: float = 4.0  # other nu keep tau at w - w_c = 4 (where the grid has reached runs)
    scatter: float = 0.15  # sd of ln tau of one run (pooled seed scatter of the default study)
    jitter: float = 0.05  # sd of ln tau between the thresholds of one run
    alpha_range: tuple[float, float] = (0.6, 1.4)  # tail exponent from the narrowest to the widest net
    alpha_depth: float = 0.1  # ... plus this per depth
    alpha_scatter: float = 0.05  # sd of alpha between seeds
    tail: str = "power"  # power | exponential
    drop_scale: float = 2.8e4  # tau_d = drop_scale / (w - 4) x e^(scatter z): w = 32 drops at ~1e3
    under_height: float = 1.0  # L_inf = floor_ref + under_height (w_c* - w)/w_c* below w_c*
    loss_noise: float = 0.01  # sd of ln L per checkpoint (before the pipeline's smoothing)
    mu: float = 1.0  # aging: Delta is a function of tau/tau_w^mu
    freeze: bool = True  # over-parametrized nets: Delta stops growing once t > t*
    aging_noise: float = 0.1  # sd of ln Delta: of a seed's curve at one tau_w, and of each point
    floor_kappa: float = 1.0  # L_SGD - data floor ∝ (eta/B)^kappa, = floor_ref - data floor at the study's
    floor_alpha: float = 1.5  # floor runs: L = L_SGD + (L0 - L_SGD) (1 + eta t / floor_scale)^-alpha
    floor_scale: float = 125.0  # ... eta x steps: at eta 0.05, L = 0.33 at 10^4 steps (measured 0.28)


def _w_c_star(design: Design, truth: Truth) -> np.ndarray:
    frac = np.linspace(0.0, 1.0, len(design.depths)) if len(design.depths) > 1 else np.zeros(1)
    return truth.w_c_star - truth.depth_drop * frac


def _snap(tau: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Snap τ to the first checkpoint at or after it (as the pipeline reads a crossing); +inf past the end."""
    i = np.searchsorted(grid, np.where(np.isfinite(tau), tau, np.inf), side="left")
    out = grid[np.minimum(i, grid.size - 1)].astype(np.float64)
    return np.where(i < grid.size, out, np.inf)


def tau_study(design: Design, truth: Truth, rng: np.random.Generator) -> xr.Dataset:
    """Generate a synthetic study.nc of learning times, dims depth, width, seed, eps."""
    grid = checkpoint_steps(design.steps, design.per_decade)
    w = np.asarray(design.widths, dtype=np.float64)[None, :, None, None]
    eps = np.asarray(design.eps)[None, None, None, :]
    w_c = _w_c_star(design, truth)[:, None, None, None] - truth.shift * eps
    shape = (len(design.depths), len(design.widths), design.seeds, 1)
    run = truth.scatter * rng.normal(size=shape)
    jitter = truth.jitter * rng.normal(size=(*shape[:3], len(design.eps)))
    gap = w - w_c
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = truth.amplitude * truth.gap_ref ** (truth.nu - 1) * np.where(gap > 0, gap, np.nan) ** -truth.nu
    tau = np.where(gap > 0, tau * np.exp(run + jitter), np.inf)
    tau = _snap(tau, grid[grid > 0])
    return xr.Dataset(
        {
            "tau": (("depth", "width", "seed", "eps"), tau),
            "diverged": (("depth", "width", "seed"), np.zeros(shape[:3], dtype=bool)),
        },
        coords={
            "depth": list(design.depths),
            "width": list(design.widths),
            "seed": np.arange(design.seeds),
            "eps": list(design.eps),
            "step": ("time", grid),
        },
        attrs={"checkpoints_per_decade": design.per_decade},
    )


def _eps_valid(design: Design) -> xr.DataArray:
    eps = np.asarray(design.eps)
    return xr.DataArray(
        design.data_floor + eps >= design.fits.floor_factor * design.floor_ref, coords={"eps": eps}
    )


def critical_fits(design: Design, truth: Truth, rng: np.random.Generator) -> xr.Dataset:
    """fits.nc's critical part of one synthetic study, with the ideal phase split around w_c*."""
    study = tau_study(design, truth, rng)
    out = critical(study, _eps_valid(design), design.fits)
    widths = np.asarray(design.widths, dtype=np.float64)
    star = _w_c_star(design, truth)
    under = [widths[widths < s].max() if (widths < s).any() else np.nan for s in star]
    over = [widths[widths > s].min() if (widths > s).any() else np.nan for s in star]
    out["w_under_max"], out["w_over_min"] = ("depth", under), ("depth", over)
    return out.assign_attrs(ci=design.fits.ci)


def loss_study(design: Design, truth: Truth, rng: np.random.Generator) -> xr.Dataset:
    """Synthetic loss curves (depth, width, seed, time) and their learning times, as in study.nc."""
    grid = checkpoint_steps(design.steps, design.per_decade)
    t = grid.astype(np.float64)[None, None, None, :]
    widths = np.asarray(design.widths, dtype=np.float64)
    shape = (len(design.depths), widths.size, design.seeds, 1)
    star = _w_c_star(design, truth)[:, None, None, None]
    w = widths[None, :, None, None]
    l_inf = design.floor_ref + truth.under_height * np.clip(star - w, 0, None) / star
    drop = truth.drop_scale / (w - 4.0) * np.exp(truth.scatter * rng.normal(size=shape))
    lo, hi = truth.alpha_range
    depth = truth.alpha_depth * np.arange(len(design.depths))[:, None, None, None]
    alpha = lo + (hi - lo) * (w - widths.min()) / np.ptp(widths) + depth
    alpha = alpha + truth.alpha_scatter * rng.normal(size=shape)
    if truth.tail == "power":
        loss = l_inf + (L0 - l_inf) * (1 + t / drop) ** -alpha
    else:  # same time scale of the approach, exponential instead of a power law
        loss = l_inf + (L0 - l_inf) * np.exp(-t / (3 * drop))
    loss = loss * np.exp(truth.loss_noise * rng.normal(size=loss.shape))
    coords = {"depth": list(design.depths), "width": list(design.widths), "seed": np.arange(design.seeds)}
    da = xr.DataArray(loss, dims=("depth", "width", "seed", "time"), coords=coords | {"step": ("time", grid)})
    return xr.Dataset({"loss": da}, attrs={"data_floor": design.data_floor})


def tail_fits_of(design: Design, truth: Truth, rng: np.random.Generator) -> xr.Dataset:
    """Fit the check-1 variables of fits.nc for one synthetic study (the pipeline's smoothing and fits)."""
    study = loss_study(design, truth, rng)
    smooth = smoothed_loss(study["loss"], design.smoothing_decades)
    tau_drop = learning_time(smooth, design.data_floor, max(design.eps))  # as observables.nc has it
    out = tail_fits(smooth, tau_drop, design.fits, design.data_floor)
    windows = power_laws(smooth, design.fits.window_start, design.fits.ci, design.data_floor)  # legacy
    spread = windows["alpha"].max("window") - windows["alpha"].min("window")
    legacy = windows.isel(window=0, drop=True)[["fit_rms", "alpha", "alpha_err"]]
    return xr.merge([out, legacy]).assign(alpha_window_spread=spread, diverged=xr.zeros_like(out["has_tail"]))


def phase_fits_of(design: Design, truth: Truth, rng: np.random.Generator) -> xr.Dataset:
    """Classify each (depth, width) of a synthetic study by the pipeline's rules, new and legacy (check 2)."""
    study = loss_study(design, truth, rng)
    smooth = smoothed_loss(study["loss"], design.smoothing_decades)
    windows = power_laws(smooth, design.fits.window_start, design.fits.ci, design.data_floor)
    floor_ref = xr.DataArray(
        np.full(len(design.depths), design.floor_ref), coords={"depth": list(design.depths)}
    )
    t_star = crossing_time(smooth, design.fits.floor_factor * floor_ref)
    return xr.Dataset(
        {
            "phase": classify(windows, floor_ref, design.fits.floor_factor, t_star),
            "phase_legacy": classify(windows, floor_ref, design.fits.floor_factor),
        }
    )


def _floor_level(design: Design, truth: Truth, lr: float, batch_size: int) -> float:
    """L_SGD at (lr, B): the data floor plus an excess ∝ (η/B)^κ, equal to floor_ref at the first setting."""
    first = design.floor.settings[0]
    ratio = (lr / batch_size) / (first["lr"] / first["batch_size"])
    return design.data_floor + (design.floor_ref - design.data_floor) * ratio**truth.floor_kappa


def _floor_runs(loss: np.ndarray, step: np.ndarray, **attrs: float) -> xr.Dataset:
    return xr.Dataset(
        {"loss": (("seed", "time"), loss)},
        coords={"seed": np.arange(loss.shape[0]), "step": ("time", step)},
        attrs=attrs,
    )


def floor_fits(design: Design, truth: Truth, rng: np.random.Generator) -> xr.Dataset:
    """Fit synthetic floor runs and restarts by :func:`bachglass.sgd_floor.analyse` (check 7, restarts).

    Each run relaxes to its (η, B)'s floor along L = L_SGD + (L0 - L_SGD)(1 + η t/s)^-α, s scattered
    between seeds as τ is. A restart at η f from step t_r continues the same curve in η t with the
    floor of η f: L = L_SGD(ηf) + (L(t_r) - L_SGD(ηf)) g(t'), g the curve's decay from η t_r on at
    the rate η f. ``floor_kappa`` 0 is the negation: a floor that does not move with η. No run is
    knocked back (the real study's knocked-back seed is a finding of its own, not modelled here).
    """
    c = design.floor
    n = len(c.seed)
    scale = truth.floor_scale * np.exp(truth.scatter * rng.normal(size=(n, 1)))
    grid = checkpoint_steps(c.steps, design.per_decade).astype(np.float64)

    def noisy(curve: np.ndarray, start: bool = True) -> np.ndarray:
        out = curve * np.exp(truth.loss_noise * rng.normal(size=curve.shape))
        if start:  # real nets fall from their first step: the initial loss tops the early noise
            out[:, 0] = L0 * np.exp(5 * truth.loss_noise)
        return out

    settings = []
    for setting in c.settings:
        lr, batch = float(setting["lr"]), int(setting["batch_size"])
        level = _floor_level(design, truth, lr, batch)
        loss = level + (L0 - level) * (1 + lr * grid[None, :] / scale) ** -truth.floor_alpha
        settings.append(_floor_runs(noisy(loss), grid, lr=lr, batch_size=batch, data_floor=design.data_floor))
    first, restarts = c.settings[0], []
    lr, batch = float(first["lr"]), int(first["batch_size"])
    t_r = float(grid[np.abs(np.log(np.maximum(grid, 1)) - np.log(c.restart_step)).argmin()])
    parent = _floor_level(design, truth, lr, batch)
    at_restart = parent + (L0 - parent) * (1 + lr * t_r / scale) ** -truth.floor_alpha
    after = checkpoint_steps(c.restart_steps, design.per_decade).astype(np.float64)
    for f in c.restart_factors:
        level = _floor_level(design, truth, lr * f, batch)
        decay = (
            (1 + (lr * t_r + lr * f * after[None, :]) / scale) / (1 + lr * t_r / scale)
        ) ** -truth.floor_alpha
        loss = level + (at_restart - level) * decay
        restarts.append(
            _floor_runs(
                noisy(loss, start=False),
                after,
                lr=lr * f,
                batch_size=batch,
                restart_step=int(t_r),
                restart_factor=f,
            )
        )
    fits = design.fits
    return analyse(settings, restarts, c, fits.n_boot, fits.ci, fits.seed, fits.floor_factor)


def aging_fits(design: Design, truth: Truth, rng: np.random.Generator, phase: int) -> xr.Dataset:
    """Collapse metrics of synthetic Δ(τ_w, τ) for the aging subset's widths, all of one phase."""
    grid = checkpoint_steps(design.aging_steps, design.per_decade).astype(np.float64)
    lag = grid[grid > 0]
    tau_w = np.asarray(design.aging_tau_w, dtype=np.float64)
    n_w = len(design.aging_widths)
    x = lag[None, :] / tau_w[:, None] ** truth.mu
    delta = 1e-3 * x**0.5
    t_star = min(2.0 * tau_w.max(), float(design.aging_steps))  # over nets reach the floor here: late
    if phase == OVER and truth.freeze:  # enough that every tau <= tau_w lies before it
        frozen = np.minimum(lag[None, :], t_star - tau_w[:, None]) / tau_w[:, None] ** truth.mu
        delta = 1e-3 * frozen**0.5  # nothing moves once the loss sits at the floor
    delta = np.where(tau_w[:, None] + lag[None, :] <= design.aging_steps, delta, np.nan)
    size = (1, n_w, design.aging_seeds, tau_w.size)  # each seed's curve offset as a whole, and per point
    offset = truth.aging_noise * rng.normal(size=(*size, 1))
    noise = np.exp(offset + truth.aging_noise * rng.normal(size=(*size, lag.size)))
    msd = xr.DataArray(
        delta[None, None, None] * noise,
        dims=("depth", "width", "seed", "tau_w", "lag"),
        coords={
            "depth": [design.depths[0]],
            "width": list(design.aging_widths),
            "seed": np.arange(design.aging_seeds),
            "tau_w": tau_w.astype(np.int64),
            "lag": lag,
        },
    )
    diverged = xr.zeros_like(msd.isel(tau_w=0, lag=0, drop=True), dtype=bool)
    c = design.fits
    out = collapse(msd, diverged, c.aging_tau_w_min, c.mu_max, c.ci)
    out["phase"] = xr.full_like(out["mu"], phase, dtype=np.int8)
    t = np.inf if phase == UNDER else t_star
    out["t_star"] = xr.full_like(diverged, t, dtype=np.float64)
    return out.assign_attrs(steps=design.aging_steps)

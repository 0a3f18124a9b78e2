"""Calibration of the science checks on synthetic studies with known truth, at the study's design.

A criterion is only as good as its power at the study's own design. Here every check is run, by
the pipeline's own fit and check code, on synthetic studies generated with the study's grid
(depths, widths, seeds), checkpoint grid, budget (censoring), ε set, floors and seed scatter:
once where the paper's claim holds exactly, and once where it is broken in the way that matters.
A good criterion passes >= 90 % of the first and <= 10 % of the second. The legacy criteria
(:mod:`bachglass.legacy_checks`) are calibrated beside the current ones.

``python -m bachglass.calibration --studies 100`` writes the table of docs/calibration.md; the
tests run it at a small size. The truths (:class:`Truth`) are plain numbers, stated below with
where they come from; they are the synthetic studies' inputs, never fitted to a verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from bachglass import checks, legacy_checks
from bachglass.aging import collapse
from bachglass.critical import critical
from bachglass.fits import OVER, UNDER, FitsConfig, power_laws, smoothed_loss, tail_fits
from bachglass.observables import learning_time
from bachglass.params import load_params
from bachglass.train import checkpoint_steps

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
    data_floor: float  # nats/note (the training set's)
    floor_ref: float  # max(data floor, SGD floor measured at the study's eta, B)
    fits: FitsConfig
    aging_widths: tuple[int, ...]
    aging_seeds: int
    aging_steps: int
    aging_tau_w: tuple[int, ...]

    @classmethod
    def from_params(cls, params: dict, data_floor: float, floor_ref: float) -> Design:
        """Read the design of params.yaml (grid, train, observables, aging, fits) with the given floors."""
        aging = params["aging"]
        return cls(
            depths=tuple(params["grid"]["depth"]),
            widths=tuple(params["grid"]["width"]),
            seeds=len(params["grid"]["seed"]),
            steps=int(params["train"]["steps"]),
            per_decade=int(params["train"]["checkpoints_per_decade"]),
            eps=tuple(params["observables"]["eps"]),
            data_floor=data_floor,
            floor_ref=floor_ref,
            fits=FitsConfig(**params["fits"]),
            aging_widths=tuple(aging["width"]) or tuple(params["grid"]["width"]),
            aging_seeds=len(aging["seed"]) or len(params["grid"]["seed"]),
            aging_steps=int(aging["steps"] or params["train"]["steps"]),
            aging_tau_w=tuple(aging["tau_w"] or params["observables"]["tau_w"]),
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


def _w_c_star(design: Design, truth: Truth) -> np.ndarray:
    frac = np.linspace(0.0, 1.0, len(design.depths)) if len(design.depths) > 1 else np.zeros(1)
    return truth.w_c_star - truth.depth_drop * frac


def _snap(tau: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Snap τ to the first checkpoint at or after it (as the pipeline reads a crossing); +inf past the end."""
    i = np.searchsorted(grid, np.where(np.isfinite(tau), tau, np.inf), side="left")
    out = grid[np.minimum(i, grid.size - 1)].astype(np.float64)
    return np.where(i < grid.size, out, np.inf)


def tau_study(design: Design, truth: Truth, rng: np.random.Generator) -> xr.Dataset:
    """Generate a synthetic study.nc of learning times and parameter counts (depth, width, seed, eps)."""
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
    widths = np.asarray(design.widths)
    n_params = np.array([[4 * w * w + 60 * w * d + 100 for w in widths] for d in design.depths])  # N ~ w^2
    return xr.Dataset(
        {
            "tau": (("depth", "width", "seed", "eps"), tau),
            "diverged": (("depth", "width", "seed"), np.zeros(shape[:3], dtype=bool)),
            "n_parameters": (("depth", "width"), n_params),
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
    out = critical(study, _eps_valid(design), design.fits, n_scored_notes=1500)
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
    smooth = smoothed_loss(study["loss"], 0.1)
    tau_drop = learning_time(smooth, design.data_floor, max(design.eps))  # as observables.nc has it
    out = tail_fits(smooth, tau_drop, design.fits, design.data_floor)
    windows = power_laws(smooth, design.fits.window_start, design.fits.ci, design.data_floor)  # legacy
    spread = windows["alpha"].max("window") - windows["alpha"].min("window")
    legacy = windows.isel(window=0, drop=True)[["fit_rms", "alpha", "alpha_err"]]
    return xr.merge([out, legacy]).assign(alpha_window_spread=spread, diverged=xr.zeros_like(out["has_tail"]))


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


@dataclass(frozen=True)
class Scenario:
    """A synthetic study in which a check's claim holds (``claim``) or is broken (its negation)."""

    check: int
    name: str
    claim: bool
    truth: Truth
    make: Callable[[Design, Truth, np.random.Generator], xr.Dataset]
    judge: Callable[[xr.Dataset], checks.Check]
    legacy: Callable[[xr.Dataset], checks.Check]


def _aging(phase: int) -> Callable[[Design, Truth, np.random.Generator], xr.Dataset]:
    return lambda design, truth, rng: aging_fits(design, truth, rng, phase)


SCENARIOS = (
    Scenario(
        1,
        "power-law tails, alpha varies",
        True,
        Truth(),
        tail_fits_of,
        checks.power_law_tails,
        legacy_checks.power_law_tails,
    ),
    Scenario(
        1,
        "alpha the same for every net",
        False,
        Truth(alpha_range=(1.0, 1.0), alpha_depth=0.0),
        tail_fits_of,
        checks.power_law_tails,
        legacy_checks.power_law_tails,
    ),
    Scenario(
        1,
        "exponential tails",
        False,
        Truth(tail="exponential"),
        tail_fits_of,
        checks.power_law_tails,
        legacy_checks.power_law_tails,
    ),
    Scenario(
        3,
        "tau = A/(w - w_c)",
        True,
        Truth(),
        critical_fits,
        checks.critical_slowing_down,
        legacy_checks.critical_slowing_down,
    ),
    Scenario(
        3,
        "nu = 2",
        False,
        Truth(nu=2.0),
        critical_fits,
        checks.critical_slowing_down,
        legacy_checks.critical_slowing_down,
    ),
    Scenario(
        4,
        "w_c shifts with eps",
        True,
        Truth(),
        critical_fits,
        checks.loss_dependent_w_c,
        legacy_checks.loss_dependent_w_c,
    ),
    Scenario(
        4,
        "no shift with eps",
        False,
        Truth(shift=0.0),
        critical_fits,
        checks.loss_dependent_w_c,
        legacy_checks.loss_dependent_w_c,
    ),
    Scenario(
        5,
        "w_c* falls by 2 widths",
        True,
        Truth(),
        critical_fits,
        checks.depth_dependence,
        legacy_checks.depth_dependence,
    ),
    Scenario(
        5,
        "w_c* falls by 4 widths",
        True,
        Truth(depth_drop=4.0),
        critical_fits,
        checks.depth_dependence,
        legacy_checks.depth_dependence,
    ),
    Scenario(
        5,
        "no depth effect",
        False,
        Truth(depth_drop=0.0),
        critical_fits,
        checks.depth_dependence,
        legacy_checks.depth_dependence,
    ),
    Scenario(
        6, "simple aging, mu = 1", True, Truth(), _aging(UNDER), checks.aging_under, legacy_checks.aging_under
    ),
    Scenario(
        6,
        "no aging, mu = 0",
        False,
        Truth(mu=0.0),
        _aging(UNDER),
        checks.aging_under,
        legacy_checks.aging_under,
    ),
    Scenario(
        7, "collapse breaks at t*", True, Truth(), _aging(OVER), checks.aging_over, legacy_checks.aging_over
    ),
    Scenario(
        7,
        "collapse holds throughout",
        False,
        Truth(freeze=False),
        _aging(OVER),
        checks.aging_over,
        legacy_checks.aging_over,
    ),
)


def calibrate(
    design: Design, studies: int, seed: int = 0, scenarios: Sequence[Scenario] = SCENARIOS
) -> list[dict]:
    """Pass rates of the current and legacy criteria over ``studies`` synthetic studies per scenario."""
    rows = []
    for sc in scenarios:  # each scenario its own stream, the same whichever others are run
        rng = np.random.default_rng([seed, SCENARIOS.index(sc) if sc in SCENARIOS else len(SCENARIOS)])
        new = old = 0
        for _ in range(studies):
            fits = sc.make(design, sc.truth, rng)
            new += sc.judge(fits).passed
            old += sc.legacy(fits).passed
        rows.append(
            {
                "check": sc.check,
                "scenario": sc.name,
                "claim": sc.claim,
                "new": new / studies,
                "old": old / studies,
                "studies": studies,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per scenario the pass rate of the current and the legacy criterion, and the target."""
    out = [
        "| check | synthetic truth | claim holds? | target | pass rate | pass rate, old criterion |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = ">= 90 %" if r["claim"] else "<= 10 %"
        ok = r["new"] >= 0.9 if r["claim"] else r["new"] <= 0.1
        out.append(
            f"| {r['check']} | {r['scenario']} | {'yes' if r['claim'] else 'no'} | {target} | "
            f"{r['new']:.0%}{'' if ok else ' (misses)'} | {r['old']:.0%} |"
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None, scenarios: Sequence[Scenario] = SCENARIOS) -> None:
    """Calibrate every check at the design of a params file and print (or write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--studies", type=int, default=100, help="synthetic studies per scenario")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap replicas (default: params)")
    parser.add_argument(
        "--data-floor", type=float, default=0.0037, help="nats/note (the default training set's)"
    )
    parser.add_argument("--floor-ref", type=float, default=0.043, help="SGD floor at the study's (eta, B)")
    parser.add_argument("--steps", type=int, default=None, help="budget (default: params' train.steps)")
    parser.add_argument("--checks", type=int, nargs="*", default=None, help="only these check numbers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    design = Design.from_params(load_params(args.params), args.data_floor, args.floor_ref)
    if args.steps:
        design = dataclasses.replace(design, steps=args.steps)
    if args.n_boot:
        design = dataclasses.replace(design, fits=dataclasses.replace(design.fits, n_boot=args.n_boot))
    if args.checks:
        scenarios = [s for s in scenarios if s.check in args.checks]
    text = table(calibrate(design, args.studies, args.seed, scenarios))
    if args.out:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

"""The paper's qualitative claims (docs/science.md §6, checks 1-7), judged on ``fits.nc``.

Each check states its criterion before any data is seen (the constants below) and returns the
numbers it was judged on. It is a report, not a test: FAIL is a finding about the study (too
short, too few seeds, or a claim that does not hold here), and no threshold may be moved to turn
it into PASS. The criteria are deliberately plain so that a reader can redo them from fits.nc.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr

from bachglass.fits import OVER, UNDER, aging_view

POWER_LAW_RMS = 0.05  # ln-units: the power law follows the late loss to within ~5 %
POWER_LAW_SHARE = 0.75  # ... in at least 3/4 of the (non-diverged) runs
ALPHA_SPREAD = 3.0  # alpha "depends on d and w": its range exceeds 3x the typical alpha uncertainty
R2_MIN = 0.95  # 1/tau vs w "approximately linear"
NU_BOUNDS = (0.5, 2.0)  # nu ~ 1: its interval contains 1 and lies inside these bounds (informative)
MAJORITY = 2 / 3  # a claim about a class of nets holds for at least 2/3 of them
FITS_VARIABLES = ("fit_rms", "alpha", "phase", "w_c", "nu", "w_c_star", "mu", "S_long", "t_star")
BREAKDOWN = 2.0  # collapse "fails at long times": spread at tau > tau_w at least twice that at tau <= tau_w


@dataclass(frozen=True)
class Check:
    """One row of the table: the paper's claim, our criterion, what was measured, the verdict."""

    number: int
    claim: str
    criterion: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        """PASS or FAIL."""
        return "PASS" if self.passed else "FAIL"


def _depths(fits: xr.Dataset) -> list[int]:
    return [int(d) for d in fits["depth"].values]


def _smallest_fitted_eps(fits: xr.Dataset, depth: int) -> float | None:
    """Return the smallest threshold with a critical fit at this depth (None if none)."""
    w_c = fits["w_c"].sel(depth=depth)
    eps = w_c["eps"].values[np.isfinite(w_c.values)]
    return float(eps.min()) if eps.size else None


def power_law_tails(fits: xr.Dataset) -> Check:
    """Check 1: late L(t) - L_inf is a power law in t, with an alpha that depends on d and w."""
    rms = fits["fit_rms"].where(~fits["diverged"]).values.ravel()
    rms = rms[np.isfinite(rms)]
    share = float(np.mean(rms <= POWER_LAW_RMS)) if rms.size else 0.0
    alpha = fits["alpha"].where(~fits["diverged"]).mean("seed")
    noise = np.nanmedian(np.maximum(fits["alpha_err"], fits["alpha_window_spread"] / 2).values)
    spread = float(alpha.max() - alpha.min())
    passed = share >= POWER_LAW_SHARE and spread > ALPHA_SPREAD * noise
    measured = (
        f"{share:.0%} of {rms.size} runs within rms {POWER_LAW_RMS}; alpha {float(alpha.min()):.2f}-"
        f"{float(alpha.max()):.2f} (range {spread:.2f}, typical uncertainty {noise:.2f})"
    )
    criterion = (
        f">= {POWER_LAW_SHARE:.0%} of runs fit with ln-rms <= {POWER_LAW_RMS}; alpha range > "
        f"{ALPHA_SPREAD:g}x its typical uncertainty"
    )
    return Check(1, "power-law tails, alpha depends on d and w", criterion, measured, passed)


def two_phases(fits: xr.Dataset) -> Check:
    """Check 2: at each depth, narrow nets plateau above the floors and wide ones do not."""
    parts, passed = [], True
    for d in _depths(fits):
        phase = fits["phase"].sel(depth=d)
        widths = phase["width"].values
        under, over = widths[phase.values == UNDER], widths[phase.values == OVER]
        ok = under.size > 0 and over.size > 0 and under.max() < over.min()
        passed &= bool(ok)
        u = f"<= {under.max()}" if under.size else "none"
        o = f">= {over.min()}" if over.size else "none"
        parts.append(f"d{d}: under {u}, over {o}, undetermined {widths[phase.values < 0].tolist()}")
    criterion = "each depth has under- and over-parametrized widths (L_inf vs floors), all under < all over"
    return Check(2, "two phases (L_inf > 0 below, -> floor above)", criterion, "; ".join(parts), passed)


def critical_slowing_down(fits: xr.Dataset) -> Check:
    """Check 3: 1/tau linear in w at the smallest fitted eps, and a free exponent nu ~ 1."""
    parts, passed = [], True
    lo_b, hi_b = NU_BOUNDS
    for d in _depths(fits):
        eps = _smallest_fitted_eps(fits, d)
        if eps is None:
            parts.append(f"d{d}: no fit")
            passed = False
            continue
        r = fits.sel(depth=d, eps=eps)
        nu, lo, hi, r2 = (float(r[v]) for v in ("nu", "nu_lo", "nu_hi", "r2"))
        ok = r2 >= R2_MIN and lo <= 1 <= hi and lo >= lo_b and hi <= hi_b
        passed &= ok
        parts.append(f"d{d} eps {eps:g}: R2 {r2:.3f}, nu {nu:.2f} [{lo:.2f}, {hi:.2f}]")
    criterion = f"every depth: R2 >= {R2_MIN}; nu interval contains 1 and lies in [{lo_b}, {hi_b}]"
    return Check(3, "critical slowing down, tau ~ 1/(w - w_c)", criterion, "; ".join(parts), passed)


def loss_dependent_w_c(fits: xr.Dataset) -> Check:
    """Check 4: w_c grows as eps falls, w_c* is finite, and it sits where L_inf changes phase."""
    parts, passed = [], True
    q = [(1 - fits.attrs["ci"]) / 2, (1 + fits.attrs["ci"]) / 2]
    for d in _depths(fits):
        w_c = fits["w_c"].sel(depth=d)
        fitted = w_c["eps"].values[np.isfinite(w_c.values)]
        star = fits.sel(depth=d)
        s, s_lo, s_hi = (float(star[v]) for v in ("w_c_star", "w_c_star_lo", "w_c_star_hi"))
        if fitted.size < 2 or not np.isfinite(s):
            parts.append(f"d{d}: w_c at {fitted.size} eps, no w_c*")
            passed = False
            continue
        boot = fits["w_c_boot"].sel(depth=d)
        shift = boot.sel(eps=fitted.min()) - boot.sel(eps=fitted.max())
        shift_lo, shift_hi = np.nanquantile(shift.values, q)
        low, high = float(star["w_under_max"]), float(star["w_over_min"])
        agree = (np.isnan(low) or s_hi >= low) and (np.isnan(high) or s_lo <= high)
        ok = shift_lo > 0 and agree and np.isfinite(low) and np.isfinite(high)
        passed &= bool(ok)
        parts.append(
            f"d{d}: w_c {float(w_c.sel(eps=fitted.max())):.1f} -> {float(w_c.sel(eps=fitted.min())):.1f} "
            f"(shift CI [{shift_lo:.1f}, {shift_hi:.1f}]), w_c* {s:.1f} [{s_lo:.1f}, {s_hi:.1f}] "
            f"vs phase change in [{low:g}, {high:g}]"
        )
    criterion = (
        "every depth: w_c(smallest eps) - w_c(largest eps) CI > 0; "
        "w_c* CI overlaps [widest under, narrowest over]"
    )
    return Check(
        4, "loss-dependent w_c, w_c* = interpolation transition", criterion, "; ".join(parts), passed
    )


def depth_dependence(fits: xr.Dataset) -> Check:
    """Check 5: w_c* decreases with depth (shallowest minus deepest has a CI above 0)."""
    star = fits["w_c_star"].values
    depths = _depths(fits)
    q = [(1 - fits.attrs["ci"]) / 2, (1 + fits.attrs["ci"]) / 2]
    drop = fits["w_c_star_boot"].sel(depth=depths[0]) - fits["w_c_star_boot"].sel(depth=depths[-1])
    lo, hi = np.nanquantile(drop.values, q) if np.isfinite(drop.values).any() else (np.nan, np.nan)
    monotone = bool(np.all(np.diff(star) <= 0)) and np.all(np.isfinite(star))
    passed = bool(monotone and lo > 0) and len(depths) > 1
    values = ", ".join(f"d{d} {v:.1f}" for d, v in zip(depths, star, strict=True))
    measured = f"w_c*: {values}; w_c*(d{depths[0]}) - w_c*(d{depths[-1]}) CI [{lo:.1f}, {hi:.1f}]"
    criterion = "w_c* non-increasing in d and the first-minus-last-depth CI > 0"
    return Check(5, "w_c decreases with depth", criterion, measured, passed)


AGING_VARS = ("mu", "mu_lo", "mu_hi", "S_simple", "S_mu", "S_short", "S_long", "phase", "t_star")
NORMALISED = ("mu", "mu_lo", "mu_hi")  # also reported for Delta / (|theta(tau_w)|^2 / N), not judged


def aging_table(fits: xr.Dataset) -> tuple[xr.Dataset, str]:
    """Pick the aging metrics to judge: the aging subset's longer runs if any, else the grid's."""
    view = aging_view(fits)
    table, source = (
        (view, f"aging subset, {int(view['steps'])} steps")
        if view is not None
        else (fits, f"grid, {fits.attrs.get('steps', '?')} steps")
    )
    names = [*AGING_VARS, *(f"{v}_norm" for v in NORMALISED if f"{v}_norm" in table)]
    return table[names], source


def _class_rows(table: xr.Dataset, phase: int) -> xr.Dataset:
    """Aging metrics of the (depth, width) of one phase, stacked on a ``net`` dim."""
    table = table.assign(t_star=table["t_star"].median("seed"))
    stacked = table.stack(net=("depth", "width"))
    keep = (stacked["phase"] == phase).values & np.isfinite(stacked["mu"].values)
    return stacked.isel(net=np.flatnonzero(keep))


def aging_under(fits: xr.Dataset) -> Check:
    """Check 6: below the transition Delta collapses in tau/tau_w (simple aging, mu = 1)."""
    table, source = aging_table(fits)
    nets = _class_rows(table, UNDER)
    simple = (nets["mu_lo"] <= 1) & (nets["mu_hi"] >= 1)
    n = nets.sizes["net"]
    share = float(simple.mean()) if n else 0.0
    passed = n > 0 and share >= MAJORITY
    measured = (
        f"{source}: {int(simple.sum())}/{n} under-parametrized nets with 1 in the mu interval; mu "
        f"{_range(nets['mu'])}, spread at mu=1 {_range(nets['S_simple'])} vs at best mu "
        f"{_range(nets['S_mu'])} dec"
    )
    if "mu_norm" in nets:  # reported beside it, not judged: the weights' growth divided out
        with_one = int(((nets["mu_lo_norm"] <= 1) & (nets["mu_hi_norm"] >= 1)).sum())
        measured += (
            f"; Delta/(|theta|^2/N): mu {_range(nets['mu_norm'])}, 1 in the interval for {with_one}/{n}"
        )
    criterion = f">= {MAJORITY:.0%} of under-parametrized (d, w) have 1 inside their mu interval"
    return Check(6, "aging below w_c: Delta = F(tau/tau_w)", criterion, measured, passed)


def aging_over(fits: xr.Dataset) -> Check:
    """Check 7: above the transition the tau/tau_w collapse holds at short tau, fails at long tau."""
    table, source = aging_table(fits)
    nets = _class_rows(table, OVER)
    nets = nets.isel(net=np.flatnonzero(np.isfinite(nets["t_star"].values)))
    fails = nets["S_long"] > BREAKDOWN * nets["S_short"]
    n = nets.sizes["net"]
    share = float(fails.mean()) if n else 0.0
    passed = n > 0 and share >= MAJORITY
    measured = (
        f"{source}: {int(fails.sum())}/{n} over-parametrized nets that reach the floor break down; spread "
        f"tau<=tau_w {_range(nets['S_short'])}, tau>tau_w {_range(nets['S_long'])} dec"
    )
    criterion = (
        f">= {MAJORITY:.0%} of over nets reaching 2x floor: spread(tau>tau_w) > "
        f"{BREAKDOWN:g}x spread(tau<=tau_w)"
    )
    return Check(7, "aging above w_c: collapse only at short tau", criterion, measured, passed)


def restart_test(fits: xr.Dataset) -> Check:
    """Check 7, the restart test: continued at a smaller eta, the floor drops and is reached later."""
    criterion = (
        "restarts at eta x f (f < 1): every floor below the parent's, lower for smaller f, and the "
        "median time to reach 2x its floor later than the parent's"
    )
    claim = "aging breaks at the SGD floor: a smaller eta lowers it and delays the break"
    if "restart_floor" not in fits:
        return Check(7, claim, criterion, "not run (no sgd_floor restarts)", False)
    factors = fits["restart"].values
    order = np.argsort(factors)[::-1]  # f = 0.5, 0.25, ...
    floors = fits["restart_floor"].values[order]
    parent = float(fits["sgd_floor_measured"].values[0])
    with warnings.catch_warnings():  # every seed diverged: NaN, judged as not shown
        warnings.simplefilter("ignore", RuntimeWarning)
        parent_time = float(np.nanmedian(fits["floor_time"].values[0]))
        times = np.nanmedian(fits["restart_floor_time"].values[order], axis=-1)
    lower = bool(np.all(floors < parent) and np.all(np.diff(floors) < 0))
    later = bool(np.all(times > parent_time))

    def number(value: float, fmt: str) -> str:
        return "none (diverged)" if np.isnan(value) else "never" if np.isinf(value) else format(value, fmt)

    measured = (
        f"floor {number(parent, '.4g')} at eta, then "
        + ", ".join(f"{number(v, '.4g')} at x{f:g}" for f, v in zip(factors[order], floors, strict=True))
        + f"; 2x-floor reached at step {number(parent_time, '.3g')}, then "
        + ", ".join(number(t, ".3g") for t in times)
    )
    return Check(7, claim, criterion, measured, lower and later)


def _range(values: xr.DataArray) -> str:
    """'min-max' of finite values, or 'n/a'."""
    v = values.values[np.isfinite(values.values)]
    return f"{v.min():.2f}-{v.max():.2f}" if v.size else "n/a"


CHECKS: tuple[Callable[[xr.Dataset], Check], ...] = (
    power_law_tails,
    two_phases,
    critical_slowing_down,
    loss_dependent_w_c,
    depth_dependence,
    aging_under,
    aging_over,
    restart_test,
)


def run_checks(fits: xr.Dataset) -> list[Check]:
    """All checks of docs/science.md §6 (1-7, check 7 in two parts), in order."""
    return [check(fits) for check in CHECKS]


def table(checks: list[Check], excluded: str = "none") -> str:
    """Format the checks as a Markdown table: claim, criterion, measured numbers, PASS/FAIL.

    ``excluded`` (fits.nc's ``excluded_runs``) names the diverged runs that no fit used.
    """
    rows = ["| # | claim (paper) | criterion | measured | result |", "|---|---|---|---|---|"]
    rows += [f"| {c.number} | {c.claim} | {c.criterion} | {c.measured} | **{c.verdict}** |" for c in checks]
    if excluded != "none":
        rows += ["", f"Left out of every fit (diverged): {excluded}."]
    return "\n".join(rows) + "\n"

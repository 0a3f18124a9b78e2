"""The first criteria of the paper's claims (before calibration), kept to print beside the new ones.

These are the criteria of the first studies, judged on the legacy variables of ``fits.nc`` (the
fixed power-law window, unweighted R², each depth's own extrapolation, bootstrap intervals over
the replicas with a fit). The calibration harness (:mod:`bachglass.calibration`) showed that some
cannot pass under exact truth and some cannot fail; :mod:`bachglass.checks` holds the criteria
fixed by that calibration. Nothing here is to be tuned: it is the record of what was judged before.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import xarray as xr

from bachglass.checks import (
    Check,
    aging_over,
    aging_under,
    depths,
    smallest_fitted_eps,
)
from bachglass.checks import restart_test as _restart_test
from bachglass.checks import two_phases as _two_phases
from bachglass.fits import OVER, UNDER

POWER_LAW_RMS = 0.05  # ln-units: the power law follows the late loss to within ~5 %
POWER_LAW_SHARE = 0.75  # ... in at least 3/4 of the (non-diverged) runs
ALPHA_SPREAD = 3.0  # alpha "depends on d and w": its range exceeds 3x the typical alpha uncertainty
R2_MIN = 0.95  # 1/tau vs w "approximately linear"
NU_BOUNDS = (0.5, 2.0)  # nu ~ 1: its interval contains 1 and lies inside these bounds (informative)


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
    """Check 2 on the phases of :func:`legacy_view`: L_inf alone, an unfinished net can be "over"."""
    criterion = "each depth has under- and over-parametrized widths (L_inf vs floors), all under < all over"
    return dataclasses.replace(_two_phases(fits), criterion=criterion)


def restart_test(fits: xr.Dataset) -> Check:
    """Check 7's restart test comparing the restart floors even where a fit sits on its bound."""
    return _restart_test(fits, measured_floors=False)


def critical_slowing_down(fits: xr.Dataset) -> Check:
    """Check 3: 1/tau linear in w at the smallest fitted eps, and a free exponent nu ~ 1."""
    parts, passed = [], True
    lo_b, hi_b = NU_BOUNDS
    for d in depths(fits):
        eps = smallest_fitted_eps(fits, d)
        if eps is None:
            parts.append(f"d{d}: no fit")
            passed = False
            continue
        r = fits.sel(depth=d, eps=eps)
        nu, lo, hi, r2 = (float(r[v]) for v in ("nu", "nu_lo", "nu_hi", "r2_plain"))
        ok = r2 >= R2_MIN and lo <= 1 <= hi and lo >= lo_b and hi <= hi_b
        passed &= ok
        parts.append(f"d{d} eps {eps:g}: R2 {r2:.3f}, nu {nu:.2f} [{lo:.2f}, {hi:.2f}]")
    criterion = f"every depth: R2 >= {R2_MIN}; nu interval contains 1 and lies in [{lo_b}, {hi_b}]"
    return Check(3, "critical slowing down, tau ~ 1/(w - w_c)", criterion, "; ".join(parts), passed)


def loss_dependent_w_c(fits: xr.Dataset) -> Check:
    """Check 4: w_c grows as eps falls, w_c* is finite, and it sits where L_inf changes phase."""
    parts, passed = [], True
    q = [(1 - fits.attrs["ci"]) / 2, (1 + fits.attrs["ci"]) / 2]
    for d in depths(fits):
        w_c = fits["w_c"].sel(depth=d)
        fitted = w_c["eps"].values[np.isfinite(w_c.values)]
        star = fits.sel(depth=d)
        s, s_lo, s_hi = (
            float(star[v]) for v in ("w_c_star_legacy", "w_c_star_legacy_lo", "w_c_star_legacy_hi")
        )
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
    star = fits["w_c_star_legacy"].values
    ds = depths(fits)
    q = [(1 - fits.attrs["ci"]) / 2, (1 + fits.attrs["ci"]) / 2]
    boot = fits["w_c_star_legacy_boot"]
    drop = boot.sel(depth=ds[0]) - boot.sel(depth=ds[-1])
    lo, hi = np.nanquantile(drop.values, q) if np.isfinite(drop.values).any() else (np.nan, np.nan)
    monotone = bool(np.all(np.diff(star) <= 0)) and np.all(np.isfinite(star))
    passed = bool(monotone and lo > 0) and len(ds) > 1
    values = ", ".join(f"d{d} {v:.1f}" for d, v in zip(ds, star, strict=True))
    measured = f"w_c*: {values}; w_c*(d{ds[0]}) - w_c*(d{ds[-1]}) CI [{lo:.1f}, {hi:.1f}]"
    criterion = "w_c* non-increasing in d and the first-minus-last-depth CI > 0"
    return Check(5, "w_c decreases with depth", criterion, measured, passed)


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


def legacy_view(fits: xr.Dataset) -> xr.Dataset:
    """``fits`` with the first studies' phases (L_inf alone) where a check reads the phase.

    The phase split (widest under, narrowest over) of check 4 and the classes of checks 6, 7
    follow; fits without ``phase_legacy`` are returned as they are.
    """
    if "phase_legacy" not in fits:
        return fits
    phase = fits["phase_legacy"]
    widths = fits["width"].astype(np.float64)
    view = fits.assign(
        phase=phase,
        w_under_max=widths.where(phase == UNDER).max("width"),
        w_over_min=widths.where(phase == OVER).min("width"),
    )
    if "aging_phase_legacy" in fits:
        view["aging_phase"] = fits["aging_phase_legacy"]
    return view


def run_checks(fits: xr.Dataset) -> list[Check]:
    """Every check under the legacy criteria, in the order of :func:`bachglass.checks.run_checks`."""
    view = legacy_view(fits)
    return [check(view) for check in CHECKS]

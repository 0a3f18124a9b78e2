"""Print the numbers that README.md and docs/ quote about a computed study, read off its results.

The prose in README.md ("What it finds"), docs/science.md ("What the default study shows") and
docs/stability.md (the SGD floor table) quotes measured numbers. When a study is recomputed (another
machine, another environment, a code change that moves a number) they are re-read with this script,
and the docs keep the old values beside the new ones where they moved:

    python experiments/headline_numbers.py results

Definitions follow the checker and the docs: a power-law fit "at the data floor" has L_inf within
0.1 % of it; a run is "knocked back" when its last loss is more than twice its lowest; diverged runs
are those `extract_observables` flags (NaN, or back above the initial loss).
"""

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

KNOCKED_BACK = 2.0  # last loss / lowest loss
AT_FLOOR = 1e-3  # relative distance of L_inf from the data floor


def span(values: np.ndarray, fmt: str = ".2f") -> str:
    """Format the range of the finite values (one value if they agree)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    lo, hi = values.min(), values.max()
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def runs(ds: xr.Dataset, name: str) -> None:
    """Divergences, knock-backs and gradient peaks of one combined study file."""
    loss = ds.loss
    ratio = loss.isel(time=-1) / loss.min("time")
    diverged = ds.diverged.values.astype(bool)
    print(f"{name}: {ratio.size} runs, {diverged.sum()} diverged", end="")
    for idx in zip(*np.nonzero(diverged), strict=True):
        sel = dict(zip(ds.diverged.dims, idx, strict=True))
        step = ds.diverged_step.isel(sel).item()
        print(f"; {label(ds, sel)} at step {step:.0f}", end="")
    print()
    back = (ratio > KNOCKED_BACK) & ~ds.diverged
    for idx in zip(*np.nonzero(back.values), strict=True):
        sel = dict(zip(back.dims, idx, strict=True))
        print(f"  knocked back: {label(ds, sel)} ended x{ratio.isel(sel).item():.1f} its lowest loss")
    print(f"  knocked back (last > {KNOCKED_BACK:g} x lowest, not diverged): {int(back.sum())}")
    for depth in ds.depth.values:
        peak = ds.grad_norm_max.sel(depth=depth).max().item()
        print(f"  largest gradient norm at d = {depth}: {peak:.4g}")
    if "sharpness_residual" in ds:
        residual = ds.sharpness_residual.values[np.isfinite(ds.sharpness_residual.values)]
        tolerance = ds.sharpness.attrs["power_tolerance"]
        print(
            f"  sharpness: {int((residual <= tolerance).sum())} of {residual.size} values converged to "
            f"{tolerance:g} within {ds.sharpness.attrs['power_iterations']} products; residual median "
            f"{np.median(residual):.2g}, max {residual.max():.2g}"
        )


def reached(ds: xr.Dataset) -> None:
    """Print which widths reached each threshold eps in every seed (and in some)."""
    done = np.isfinite(ds.tau)
    for depth in ds.depth.values:
        for eps in ds.eps.values:
            n = done.sel(depth=depth, eps=eps).sum("seed")
            every = ds.width.values[(n == ds.seed.size).values].tolist()
            some = ds.width.values[((n > 0) & (n < ds.seed.size)).values].tolist()
            print(f"  eps {eps:g} reached at d = {depth} by widths {every} (some seeds: {some})")


def label(ds: xr.Dataset, sel: dict) -> str:
    """Name a run by its coordinates, e.g. 'depth 2, width 10, seed 1'."""
    return ", ".join(f"{dim} {ds[dim].values[i]}" for dim, i in sel.items())


def fits(f: xr.Dataset) -> None:
    """Floor fits, phases, critical fits and aging exponents of fits.nc."""
    floor = float(f.attrs["data_floor"])  # > 0: the loss of a perfect memoriser of the training set
    at_floor = np.abs(f.L_inf / floor - 1) <= AT_FLOOR
    kept = ~f.diverged
    print(f"data floor {floor:.4g}; floor reference {span(f.floor_ref.values, '.4g')}")
    print(f"power-law L_inf at the data floor in {int((at_floor & kept).sum())} of {int(kept.sum())} runs")
    print(f"  fit ln-rms <= 0.05 in {int(((f.fit_rms <= 0.05) & kept).sum())} of {int(kept.sum())}")
    for rule in ("phase", "phase_legacy"):
        for depth in f.depth.values:
            phase = f[rule].sel(depth=depth)
            cls = {v: f.width.values[phase.values == v].tolist() for v in (1, 0, -1)}
            print(f"  {rule} d = {depth}: under {cls[1]}, over {cls[0]}, undetermined {cls[-1]}")
    for depth in f.depth.values:
        for eps in f.eps.values:
            g = f.sel(depth=depth, eps=eps)
            if np.isfinite(g.w_c):
                print(
                    f"critical fit d = {depth}, eps = {eps:g}: w_c {g.w_c.item():.2f} "
                    f"[{g.w_c_lo.item():.2f}, {g.w_c_hi.item():.2f}], R2 {g.r2.item():.3f} "
                    f"(unweighted {g.r2_plain.item():.3f}), nu {g.nu.item():.2f} "
                    f"[{g.nu_lo.item():.2f}, {g.nu_hi.item():.2f}], {g.n_widths.item()} widths"
                )
        print(f"  w_c* d = {depth}: {f.w_c_star.sel(depth=depth).item():.3g}")
    if "aging_mu" in f:
        norm = span(f.aging_mu_norm.values) if "aging_mu_norm" in f else "n/a"
        print(
            f"aging subset: mu {span(f.aging_mu.values)}, of Delta/(|theta|^2/N) {norm}; "
            f"phases {f.aging_phase.values.ravel().tolist()} "
            f"(first rule {f.aging_phase_legacy.values.ravel().tolist()})"
        )
    if "excluded_runs" in f.attrs:
        print(f"  left out of every fit: {f.attrs['excluded_runs']}")


def ends(run: xr.Dataset) -> str:
    """Each seed's last loss with its lowest in brackets."""
    last, low = run.loss.isel(time=-1).values, run.loss.min("time").values
    return ", ".join(f"{a:.2g} ({b:.2g})" for a, b in zip(last, low, strict=True))


def floor(f: xr.Dataset, results: Path) -> None:
    """Print the SGD floor runs, kappa and the restarts."""
    if "setting" not in f.dims:
        return
    print("SGD floor (eta, B): floor [seeds] | last (lowest) loss per seed")
    for setting in f.setting.values:
        g = f.sel(setting=setting)
        seeds = ", ".join(f"{v:.2g}" for v in g.sgd_floor_run.values)
        with xr.open_dataset(results / "sgd_floor" / f"{setting}.nc") as run:
            last = ends(run)
        print(
            f"  ({g.lr.item():g}, {g.batch_size.item()}) eta/B {g.lr_over_batch.item():g}: "
            f"{g.sgd_floor_measured.item():.2g} [{seeds}] | {last}"
        )
    if "sgd_floor_kappa" in f:
        print(
            f"  kappa {f.sgd_floor_kappa.item():.2f} "
            f"[{f.sgd_floor_kappa_lo.item():.2f}, {f.sgd_floor_kappa_hi.item():.2f}]"
        )
    for factor in f.restart.values if "restart" in f.dims else []:
        g = f.sel(restart=factor)
        with xr.open_dataset(results / "sgd_floor" / f"restart_x{factor:g}.nc") as run:
            last = ends(run)
        print(
            f"  restart x{factor:g}: floor {g.restart_floor.item():.2g} "
            f"(ratio to parent {g.restart_floor_ratio.item():.2f}), last (lowest) loss {last}"
        )


def main() -> None:
    """Print every headline number of one results folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results/ folder of a computed study")
    results = parser.parse_args().results
    for name in ("study.nc", "aging.nc"):
        if (results / name).exists():  # a study without an aging subset has no aging.nc
            with xr.open_dataset(results / name) as ds:
                runs(ds, name)
                if name == "study.nc":
                    reached(ds)
    with xr.open_dataset(results / "fits.nc") as f:
        fits(f)
        floor(f, results)


if __name__ == "__main__":
    main()

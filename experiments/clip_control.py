"""Does per-net gradient clipping move w_c and nu? Train one depth's width ladder at several clip norms.

For the clipped-GD variant (configs/clipped_gd.yaml; the default study is plain SGD, unclipped), the
control varies the clip norm around that study's instead: if w_c(ε) and nu stay put while the
clipped fraction of steps changes several-fold, clipping does not set them. Uses the pipeline's
own params.yaml (train, observables, fits) and results/data/encoded.nc; each run is cached.

    python experiments/clip_control.py --depth 2 --clip 0.5 1.0 2.0 --jobs 2
"""

import argparse
import dataclasses
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import yaml

from bachglass import fits, io, observables, sgd, train
from bachglass.params import seeds_of

OUT = Path("results/experiments/clip_control")


def run_one(job: tuple[dict, int, int, int, float]) -> Path:
    """Train (depth, width, seed) at one clip norm; keep loss and clip fraction (no θ)."""
    params, depth, width, seed, clip = job
    path = OUT / f"clip{clip:g}" / f"d{depth}_w{width}_s{seed}.nc"
    if not path.exists():
        torch.set_num_threads(1)
        config = sgd.TrainConfig(**{**params["train"], "clip_norm": clip, "device": "cpu"})
        encoded = io.read_netcdf("results/data/encoded.nc", required=train.ENCODED_VARIABLES)
        run = train.train_run(encoded, depth, width, seed, config, None, progress=False)
        io.write_netcdf(run.drop_vars("theta"), path)
    return path


def learning_times(paths: list[Path], params: dict) -> xr.Dataset:
    """τ(ε) (+inf never, NaN diverged) and the overall clipped fraction of each run, on the grid."""
    runs = [io.read_netcdf(p).drop_dims("param", errors="ignore") for p in paths]  # no θ needed
    runs = xr.combine_by_coords(runs, combine_attrs="drop_conflicts")
    alive = runs["loss"].notnull()
    smooth = observables.smoothed_loss(runs["loss"].where(alive), params["observables"]["smoothing_decades"])
    tau = observables.learning_time(smooth, float(runs.attrs["data_floor"]), params["observables"]["eps"])
    tau = tau.where(smooth.isel(time=-1).notnull())  # a run that ended non-finite has no learning time
    clipped = fits.clipped_fraction(runs["clip_fraction"])
    return xr.Dataset({"tau": tau, "clip_fraction_total": clipped}, attrs=runs.attrs).assign_coords(
        step=runs["step"]
    )


def main() -> None:
    """Train the ladder at each clip norm (in parallel), fit w_c and nu, print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--clip", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="default: params.yaml grid")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: params.yaml grid")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    widths, seeds = args.widths or params["grid"]["width"], args.seeds or seeds_of(params["grid"]["seed"])
    jobs = [(params, args.depth, w, s, c) for c in args.clip for w in widths for s in seeds]
    with Pool(args.jobs) as pool:
        paths = pool.map(run_one, jobs, chunksize=1)
    config = fits.FitsConfig(**params["fits"])
    results = []
    for c in args.clip:
        study = learning_times([p for p, j in zip(paths, jobs, strict=True) if j[4] == c], params)
        eps_valid = xr.ones_like(study["tau"].isel(width=0, seed=0, drop=True), dtype=bool)
        crit = fits.critical(study, eps_valid, dataclasses.replace(config, n_boot=200))
        crit = crit.drop_vars([v for v in crit if v.endswith("_boot")])
        results.append(xr.merge([crit, study["clip_fraction_total"]]).expand_dims(clip_norm=[c]))
    table = xr.concat(results, "clip_norm")
    io.write_netcdf(table.drop_vars("boot", errors="ignore"), OUT.with_suffix(".nc"))
    for c in args.clip:
        t = table.sel(clip_norm=c, depth=args.depth)
        frac = t["clip_fraction_total"].values
        print(f"clip {c:g}: clipped fraction per run {np.nanmin(frac):.3f}-{np.nanmax(frac):.3f}")
        for e in t["eps"].values:
            r = t.sel(eps=e)
            print(
                f"  eps {e:g}: w_c {float(r.w_c):.2f} [{float(r.w_c_lo):.2f}, {float(r.w_c_hi):.2f}]"
                f"  nu {float(r.nu):.2f} [{float(r.nu_lo):.2f}, {float(r.nu_hi):.2f}]  R2 {float(r.r2):.3f}"
            )


if __name__ == "__main__":
    main()

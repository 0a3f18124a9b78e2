"""Stability scan outside the pipeline, for grids larger than the pipeline's (a many-core node).

Runs :func:`bachglass.stability.scan_cell` for every (depth, width, B) on a process pool and writes
``<out>/d{d}_w{w}_B{B}.<key>.nc`` (key: a hash of what it was scanned with, so a rerun with other
settings never reuses a cell), the combined ``<out>/stability.nc`` and a summary table
``<out>/stability.md``. The cells the default study's choice of η and B rests on came from

    python experiments/stability_scan.py --depth 1 2 --width 8 16 32 --batch 1 2 4 \
        --lr 0.2 0.1 0.05 0.025 0.0125 --seed 0 1 --steps 50000 --jobs 16 --out results/experiments/stability

(the pipeline's rule ``scan_stability`` reruns a subset of it inside every study). The comparison of
recurrent-weight initialisations (docs/stability.md) is the same script with ``--init pytorch orthogonal``.
"""

import argparse
import logging
import time
from dataclasses import asdict
from multiprocessing import Pool
from pathlib import Path

import torch
import yaml

from bachglass import io, model, stability, train


def run_one(job: tuple[Path, dict, stability.ScanConfig, int, int, int]) -> Path:
    """Scan one (depth, width, B) on one core; cached by file, named by everything it was scanned with."""
    out, params, config, depth, width, batch = job
    scanned = asdict(config) | {"depth": depth, "width": width, "batch_size": batch, "train": params["train"]}
    key = io.params_sha256(scanned)[:12]
    path = out / f"d{depth}_w{width}_B{batch}.{key}.nc"
    if not path.exists():
        torch.set_num_threads(1)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        encoded = io.read_netcdf(params["encoded"], required=train.ENCODED_VARIABLES)
        start = time.perf_counter()
        cell, dtype = params["train"]["cell"], params["train"]["dtype"]
        ds = stability.scan_cell(encoded, depth, width, batch, config, cell, dtype, "cpu")
        ds.attrs["seconds"] = time.perf_counter() - start
        io.write_netcdf(ds, path)
    return path


def main() -> None:
    """Scan the grid in parallel, then combine and print the per-cell summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--width", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.025, 0.0125])
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--init", nargs="+", default=["pytorch"], choices=model.INITS)
    parser.add_argument("--steps", type=int, default=50000)
    parser.add_argument("--safety-norm", type=float, default=10.0)
    parser.add_argument("--encoded", default="results/data/encoded.nc")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/experiments/stability"))
    args = parser.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["encoded"] = args.encoded
    config = stability.ScanConfig(
        depth=args.depth,
        width=args.width,
        seed=args.seed,
        init=args.init,
        lr=args.lr,
        batch_size=args.batch,
        steps=args.steps,
        safety_norm=args.safety_norm,
        checkpoints_per_decade=25,
        sharpness_per_decade=3,
        power_iterations=100,
        power_tolerance=1e-3,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (args.out, params, config, d, w, b)
        for d in sorted(args.depth, reverse=True)  # the slowest first
        for w in sorted(args.width, reverse=True)
        for b in args.batch
    ]
    with Pool(args.jobs) as pool:
        paths = pool.map(run_one, jobs, chunksize=1)
    scan = stability.combine([io.read_netcdf(p) for p in paths])
    io.write_netcdf(scan, args.out / "stability.nc")
    text = stability.table(scan)
    io.write_text(text, args.out / "stability.md")
    print(text)


if __name__ == "__main__":
    main()

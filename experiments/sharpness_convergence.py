"""Measure how fast the sharpness's power iteration converges on the study's own snapshots.

For the probes.power_iterations / probes.power_tolerance defaults: on the default study's trajectories
(results/runs/, from `snakemake`), run power iteration at every sharpness checkpoint of the chosen runs
for up to --max products with no early stop, and record after each product the Rayleigh quotient λ_k
and the relative residual r_k = ‖Hv − λ_k v‖/|λ_k|. Reports, per tolerance: the share of checkpoints
that reach it within 20, 50, 100 and --max products, the median products needed, and the relative
error of λ at that stop against λ at --max products; and the residual after 20 products (the old
fixed count). The probes' own Hessian (first probes.sharpness_chorales training chorales, float64).

    python experiments/sharpness_convergence.py --runs d2_w6_s0-2 d2_w12_s0-2 d2_w32_s0-2 --max 400
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bachglass import io, model, probes, trajectory

TOLERANCES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
BUDGETS = (20, 50, 100)


def history(path: Path, params: dict, max_products: int, encoded) -> tuple[np.ndarray, np.ndarray, float]:
    """λ_k and r_k (checkpoint, k) of every run in the pack ``path`` at its sharpness checkpoints."""
    config = params["probes"]
    values, residuals, seconds = [], [], 0.0
    for run in trajectory.runs(io.read_netcdf(path)):
        net = probes._check(run, encoded)
        layout = model.HeadLayout(net.vocab_sizes)
        steps = run["step"].values
        chosen = np.isin(steps, probes.sharpness_steps(steps, config["sharpness_per_decade"]))
        theta = probes._snapshots(run)[torch.as_tensor(chosen)]
        theta = theta[torch.isfinite(theta).all(1)]
        first = (encoded["split"].values == "train").nonzero()[0][: config["sharpness_chorales"]]
        batch = model.encode_batch(
            encoded["tokens"].values[first],
            encoded["mask"].values[first],
            layout,
            probes.F64,
            torch.device("cpu"),
        )
        start = time.perf_counter()
        hvp = probes.hessian_product(net, theta, batch)
        v = probes.start_vector(theta.shape[1]).expand_as(theta)
        lam, res = [], []
        for _ in range(max_products):
            hv = hvp(v).detach()
            value = (v * hv).sum(-1)
            lam.append(value)
            res.append(torch.linalg.vector_norm(hv - value.unsqueeze(-1) * v, dim=-1) / value.abs())
            v = hv / torch.linalg.vector_norm(hv, dim=-1, keepdim=True)
        seconds += time.perf_counter() - start
        values.append(torch.stack(lam, 1).numpy())
        residuals.append(torch.stack(res, 1).numpy())
    return np.concatenate(values), np.concatenate(residuals), seconds


def report(values: np.ndarray, residuals: np.ndarray, max_products: int) -> str:
    """Return the Markdown table of the module docstring."""
    reference = values[:, -1]
    error_20 = np.abs(values[:, 19] / reference - 1)
    lines = [
        f"{len(values)} checkpoints; {np.mean(reference < 0) * 100:.0f} % with a negative top-magnitude "
        f"eigenvalue at {max_products} products",
        f"residual after 20 products: median {np.median(residuals[:, 19]):.3g}, "
        f"90th percentile {np.percentile(residuals[:, 19], 90):.3g}, max {residuals[:, 19].max():.3g}; "
        f"relative error of λ_20 vs λ_{max_products}: median "
        f"{np.median(error_20):.3g}, max {error_20.max():.3g}",
        "",
        "| tolerance | "
        + " | ".join(f"reached in {b}" for b in (*BUDGETS, max_products))
        + " | median products "
        "| λ error at stop: median | max |",
        "|---" * (len(BUDGETS) + 5) + "|",
    ]
    for tol in TOLERANCES:
        below = residuals <= tol
        reached = below.any(1)
        first = np.where(reached, below.argmax(1), max_products - 1)  # index of the stopping product
        at_stop = values[np.arange(len(values)), first]
        error = np.abs(at_stop / reference - 1)
        shares = [f"{np.mean(below[:, :b].any(1)) * 100:.0f} %" for b in (*BUDGETS, max_products)]
        lines.append(
            f"| {tol:g} | "
            + " | ".join(shares)
            + f" | {np.median(first + 1):.0f} | {np.median(error):.2g} | "
            f"{error.max():.2g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse the arguments, measure, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="results/runs/<name> packs to probe")
    parser.add_argument("--max", type=int, default=400, help="products per checkpoint (the reference)")
    parser.add_argument("--out", type=Path, default=Path("results/experiments/sharpness_convergence.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = yaml.safe_load(Path("params.yaml").read_text())
    encoded = io.read_netcdf("results/data/encoded.nc")
    parts = [
        history(Path("results/runs") / name / "trajectory.nc", params, args.max, encoded)
        for name in args.runs
    ]
    values = np.concatenate([p[0] for p in parts])
    residuals = np.concatenate([p[1] for p in parts])
    text = f"runs: {', '.join(args.runs)}; {sum(p[2] for p in parts):.0f} s for {args.max} products\n\n"
    text += report(values, residuals, args.max)
    io.write_text(text, args.out)
    print(text)


if __name__ == "__main__":
    main()

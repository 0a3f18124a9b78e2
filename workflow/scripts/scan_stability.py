"""Scan one (depth, width, batch size) of the stability grid, unclipped (rule scan_stability)."""

from typing import TYPE_CHECKING

import torch

from bachglass import io, stability, train
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Train every (init, lr, seed) of the cell as one batched model and write its scan."""
    torch.set_num_threads(snakemake.threads)
    scan = stability.scan_cell(
        io.read_netcdf(snakemake.input.encoded, required=train.ENCODED_VARIABLES),
        depth=int(snakemake.wildcards.depth),
        width=int(snakemake.wildcards.width),
        batch_size=int(snakemake.wildcards.batch),
        config=stability.ScanConfig(**snakemake.params.stability),
        **snakemake.params.train,  # cell, dtype, device
    )
    io.write_netcdf(scan, snakemake.output.scan)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

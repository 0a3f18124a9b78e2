"""Combine the stability scan's cells into results/stability.nc and its table (rule combine_stability)."""

from typing import TYPE_CHECKING

from bachglass import io, stability
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Read every cell, tile them along (depth, width, batch_size), write the dataset and the table."""
    scan = stability.combine([io.read_netcdf(path) for path in snakemake.input.scans])
    scan.attrs |= io.provenance(snakemake.params.grid, __file__)
    io.write_netcdf(scan, snakemake.output.scan)
    io.write_text(stability.table(scan), snakemake.output.table)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

"""Combine the Langevin sweep's observables into results/langevin.nc (rule combine_langevin)."""

from typing import TYPE_CHECKING

from bachglass import io, langevin
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Read all Langevin runs' observables and write them along (temperature, depth, width, seed)."""
    runs = [io.read_netcdf(path) for path in snakemake.input.observables]
    grid = snakemake.params.grid
    sweep = langevin.combine_sweep(runs, provenance=io.provenance(grid, __file__))
    io.write_netcdf(sweep, snakemake.output.study)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

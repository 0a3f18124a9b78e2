"""Combine every run's observables into results/study.nc (rule combine_study)."""

from typing import TYPE_CHECKING

from bachglass import io, observables
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Read all runs' observables and write them as one dataset along (depth, width, seed)."""
    runs = [io.read_netcdf(path) for path in snakemake.input.observables]
    study = observables.combine_runs(runs, provenance=io.provenance(snakemake.params.grid, __file__))
    io.write_netcdf(study, snakemake.output.study)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

"""Extract one run's observables from its trajectory (rule extract_observables)."""

from typing import TYPE_CHECKING

from bachglass import io, observables
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map Snakemake's input/params/output onto one library call."""
    params = snakemake.params.observables
    result = observables.run_observables(
        io.read_netcdf(snakemake.input.trajectory, required=observables.TRAJECTORY_VARS),
        observables.ObservablesConfig(**params),
        provenance=io.provenance(params, ["observables"]),
    )
    io.write_netcdf(result, snakemake.output.observables)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

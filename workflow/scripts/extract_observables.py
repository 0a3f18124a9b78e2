"""Extract one run's observables from its trajectory and the chorales (rule extract_observables)."""

from typing import TYPE_CHECKING

import torch

from bachglass import io, observables, probes
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map Snakemake's input/params/output onto the two library calls: probes, then observables."""
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params.observables
    trajectory = io.read_netcdf(snakemake.input.trajectory, required=observables.TRAJECTORY_VARS)
    encoded = io.read_netcdf(snakemake.input.encoded, required=probes.ENCODED_VARIABLES)
    measured = probes.probe_run(trajectory, encoded, probes.ProbesConfig(**snakemake.params.probes))
    result = observables.run_observables(
        trajectory,
        observables.ObservablesConfig(**params),
        provenance=io.provenance(
            {**params, "probes": snakemake.params.probes},
            ["observables", "divergence", "two_time", "probes", "model"],
        ),
        probes=measured,
    )
    io.write_netcdf(result, snakemake.output.observables)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

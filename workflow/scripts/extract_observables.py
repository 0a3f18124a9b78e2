"""Extract the observables of one seed pack's runs from its trajectories (rules extract_*observables)."""

from typing import TYPE_CHECKING

import torch

from bachglass import io, observables, probes, trajectory
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Per run of the pack: probes, then observables; written as one file along ``seed``."""
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params.observables
    packed = io.read_netcdf(snakemake.input.trajectory, required=observables.TRAJECTORY_VARS)
    encoded = io.read_netcdf(snakemake.input.encoded, required=probes.ENCODED_VARIABLES)
    provenance = io.provenance({**params, "probes": snakemake.params.probes}, __file__)
    config, probes_config = (
        observables.ObservablesConfig(**params),
        probes.ProbesConfig(**snakemake.params.probes),
    )
    runs = [
        observables.run_observables(
            run, config, provenance, probes=probes.probe_run(run, encoded, probes_config)
        )
        for run in trajectory.runs(packed)
    ]
    io.write_netcdf(observables.combine_runs(runs, provenance), snakemake.output.observables)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

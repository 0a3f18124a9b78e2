"""Fit power laws, critical widths and the aging collapse; classify phases (rule fit_study)."""

from typing import TYPE_CHECKING

from bachglass import fits, io, phases
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map study.nc and the fits/phases params onto the library calls; write fits.nc and metrics.json."""
    study = io.read_netcdf(snakemake.input.study, required=fits.STUDY_VARIABLES)
    aging = [io.read_netcdf(path, required=fits.STUDY_VARIABLES) for path in snakemake.input.aging]
    config = fits.FitsConfig(**snakemake.params.fits)
    smoothing = snakemake.params.observables["smoothing_decades"]
    result = fits.fit_study(study, config, smoothing, aging=aging[0] if aging else None)
    labelled = phases.generalisation_phases(study, phases.PhasesConfig(**snakemake.params.phases))
    result = result.merge(labelled, combine_attrs="override")
    params = {"fits": snakemake.params.fits, "phases": snakemake.params.phases}
    result.attrs |= io.provenance(params, (*fits.MODULES, "phases"))
    io.write_netcdf(result, snakemake.output.fits)
    io.write_json(fits.metrics(result) | phases.metrics(labelled), snakemake.output.metrics)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

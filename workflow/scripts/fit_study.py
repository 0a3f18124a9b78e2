"""Fit power laws, critical widths, the aging collapse, Langevin τ_e(T); classify phases (rule fit_study)."""

from typing import TYPE_CHECKING

from bachglass import fits, io, langevin, phases, sgd_floor
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map study.nc and the fits/phases params onto the library calls; write fits.nc and metrics.json."""
    study = io.read_netcdf(snakemake.input.study, required=fits.STUDY_VARIABLES)
    aging = [io.read_netcdf(path, required=fits.STUDY_VARIABLES) for path in snakemake.input.aging]
    config = fits.FitsConfig(**snakemake.params.fits)
    smoothing = snakemake.params.observables["smoothing_decades"]
    floor = None
    if snakemake.input.floor:
        floor = sgd_floor.analyse(
            [io.read_netcdf(path, required=["loss"]) for path in snakemake.input.floor],
            [io.read_netcdf(path, required=["loss"]) for path in snakemake.input.restarts],
            sgd_floor.FloorConfig(**snakemake.params.sgd_floor),
            config.n_boot,
            config.ci,
            config.seed,
            config.floor_factor,
        )
    own = sgd_floor.at_setting(floor, study.attrs.get("lr"), study.attrs.get("batch_size"))
    notes = int(io.read_netcdf(snakemake.input.encoded).attrs["scored_notes"])  # P
    result = fits.fit_study(
        study, config, smoothing, aging=aging[0] if aging else None, measured_floor=own, n_scored_notes=notes
    )
    labelled = phases.generalisation_phases(study, phases.PhasesConfig(**snakemake.params.phases))
    result = result.merge(labelled, combine_attrs="override")
    if floor is not None:
        result = result.merge(floor, combine_attrs="override").assign_attrs(**floor.attrs)
    if snakemake.input.langevin:
        sweep = io.read_netcdf(snakemake.input.langevin[0], required=["tau_e"])
        result = result.merge(langevin.relaxation_fits(sweep), combine_attrs="override")
    params = {k: snakemake.params[k] for k in ("fits", "phases", "sgd_floor")}
    result.attrs |= io.provenance(params, __file__)
    metrics = fits.metrics(result) | phases.metrics(labelled) | sgd_floor.metrics(floor)
    io.write_netcdf(result, snakemake.output.fits)
    io.write_json(metrics, snakemake.output.metrics)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

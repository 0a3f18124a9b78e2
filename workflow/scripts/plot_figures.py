"""Draw the figure set from the combined study and its fits (rule plot_figures)."""

from pathlib import Path
from typing import TYPE_CHECKING

from bachglass import figures, io
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Render each figure of `figures.FIGURES` and save it in every requested format."""
    study = io.read_netcdf(snakemake.input.study)
    fits = io.read_netcdf(snakemake.input.fits)
    aging = io.read_netcdf(snakemake.input.aging[0]) if snakemake.input.aging else None
    langevin = io.read_netcdf(snakemake.input.langevin[0]) if snakemake.input.langevin else None
    scan = io.read_netcdf(snakemake.input.stability[0]) if snakemake.input.stability else None
    params = snakemake.params.figures
    outdir = Path(snakemake.output.figures[0]).parent
    for name, fig in figures.draw_all(study, fits, aging, langevin, scan):
        io.save_figure(fig, outdir / name, params["formats"], params["dpi"])


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

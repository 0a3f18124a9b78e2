"""Judge the paper's qualitative claims on fits.nc and print the table (rule check_science)."""

import sys
from typing import TYPE_CHECKING

from bachglass import checks, checks_table, io, legacy_checks
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Write the PASS/FAIL table of docs/science.md §6 checks 1-7 and print it."""
    fits = io.read_netcdf(snakemake.input.fits, required=checks.FITS_VARIABLES)
    excluded = str(fits.attrs.get("excluded_runs", "none"))
    text = checks_table.table(checks.run_checks(fits), excluded, legacy=legacy_checks.run_checks(fits))
    io.write_text(text, snakemake.output.table)
    sys.stdout.write(text)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

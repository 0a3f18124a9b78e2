"""Propose new widths where the w_c* interval is widest (rule propose_widths).

`python -m bachglass.adaptive --apply` appends them to params.yaml's grid.width; the next
`snakemake` or `dvc repro` then trains the new widths only.
"""

from typing import TYPE_CHECKING

from bachglass import adaptive
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map fits.nc and the grid/adaptive params onto one library call; write the proposals."""
    adaptive.propose_from_files(
        snakemake.input.fits,
        widths=snakemake.params.grid["width"],
        n_widths=snakemake.params.adaptive["n_widths"],
        out_path=snakemake.output.proposals,
    )


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

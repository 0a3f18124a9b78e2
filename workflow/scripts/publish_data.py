"""Move the data steps' staged outputs into place (rule publish_data), now that both have succeeded."""

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Rename each staged file onto its output (atomic: same file system)."""
    for staged, final in zip(snakemake.input.staged, snakemake.output, strict=True):
        Path(final).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        logging.getLogger("bachglass").info("%s -> %s", staged, final)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])

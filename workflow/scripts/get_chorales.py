"""Acquire the chorales and write them with a manifest (rule get_chorales)."""

from pathlib import Path
from typing import TYPE_CHECKING

from bachglass import chorales, io
from bachglass.errors import run_step

if TYPE_CHECKING:
    from snakemake.script import snakemake


def main() -> None:
    """Map the `data` params onto one acquisition call; write the chorales and the manifest."""
    out = Path(snakemake.output.chorales)
    kept, skipped = chorales.acquire(snakemake.params.data, download_dir=Path(snakemake.params.download_dir))
    io.write_json({"source": snakemake.params.data["source"], "chorales": kept}, out)
    io.write_tsv(chorales.manifest_rows(kept, skipped), snakemake.output.manifest, chorales.MANIFEST_COLUMNS)


if __name__ == "__main__":
    run_step(main, log=snakemake.log[0])
